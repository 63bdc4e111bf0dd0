//! Money, currencies, rounding and allocation: the integer arithmetic every price uses.
//!
//! Nothing here uses floating point. Products of two amounts are taken in `i128`, so
//! they cannot overflow; results that must fit an `i64` are converted with a check.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency code: three upper-case ASCII letters, e.g. `EUR`.
///
/// The crate checks the shape only; which codes a merchant may use is the service's
/// decision (its catalog keeps the list of active codes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");
    pub const USD: Currency = Currency(*b"USD");
    pub const GBP: Currency = Currency(*b"GBP");
    pub const JPY: Currency = Currency(*b"JPY");

    /// Three upper-case ASCII letters.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(MoneyError::InvalidCurrency(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only `parse` builds a Currency, and it admits ASCII letters only.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// An amount in integer minor units (cents) of a currency. JSON: `{"amount": 1999, "currency": "EUR"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    pub const fn new(amount: i64, currency: Currency) -> Self {
        Money { amount, currency }
    }

    pub const fn zero(currency: Currency) -> Self {
        Money {
            amount: 0,
            currency,
        }
    }

    /// `self + other`; an error for different currencies or on overflow, never a wrap.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.amount
            .checked_add(other.amount)
            .map(|amount| Money::new(amount, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// `self - other`; an error for different currencies or on overflow, never a wrap.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.amount
            .checked_sub(other.amount)
            .map(|amount| Money::new(amount, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// `self × factor` (a quantity); an error on overflow.
    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        self.amount
            .checked_mul(factor)
            .map(|amount| Money::new(amount, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// `percent` of this amount, rounded as `rounding` says.
    pub fn percent(self, percent: Percent, rounding: Rounding) -> Result<Money, MoneyError> {
        let scaled = rounding.div(
            i128::from(self.amount) * i128::from(percent.bps()),
            i128::from(Percent::FULL_BPS),
        );
        i64::try_from(scaled)
            .map(|amount| Money::new(amount, self.currency))
            .map_err(|_| MoneyError::Overflow)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amounts in {left} and {right} cannot be combined")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount out of range")]
    Overflow,
    #[error(
        "{0:?} is not a currency code: expected three upper-case letters (ISO 4217), e.g. EUR"
    )]
    InvalidCurrency(String),
}

/// A percentage in basis points: `Percent::from_bps(1250)` is 12.5 %. 0 to 100 % only.
///
/// In the rule DSL a percentage is a JSON number from 0 to 100 with at most two
/// decimals (`10`, `12.5`, `33.33`); it is read from its decimal text, never through
/// floating-point arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Percent(u16);

impl Percent {
    /// 100 % in basis points.
    pub const FULL_BPS: u16 = 10_000;
    pub const ZERO: Percent = Percent(0);
    pub const HUNDRED: Percent = Percent(Self::FULL_BPS);

    /// `None` above 10,000 basis points (100 %).
    pub const fn from_bps(bps: u16) -> Option<Percent> {
        if bps <= Self::FULL_BPS {
            Some(Percent(bps))
        } else {
            None
        }
    }

    pub const fn bps(self) -> u16 {
        self.0
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(100) {
            serializer.serialize_u16(self.0 / 100)
        } else {
            // Output only: a quotient of two small integers is the double nearest to
            // the two-decimal value, whose shortest text is that value, so reading it
            // back gives the same basis points.
            serializer.serialize_f64(f64::from(self.0) / 100.0)
        }
    }
}

/// How a quotient that falls between two minor units is rounded. Amounts here are
/// never negative, so "up" means away from zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Half to even (banker's rounding): 2.5 → 2, 3.5 → 4. No bias over many lines.
    HalfEven,
    /// Half up: 2.5 → 3. What a customer computes by hand.
    HalfUp,
}

impl Rounding {
    /// `num / den` rounded to an integer. `den` must be positive.
    pub fn div(self, num: i128, den: i128) -> i128 {
        debug_assert!(den > 0);
        // Percentages divide by 10,000: a constant divisor compiles to a multiplication.
        if den == i128::from(Percent::FULL_BPS) {
            if let Ok(num) = u64::try_from(num) {
                let (quotient, remainder) = (num / 10_000, num % 10_000);
                return self.round(i128::from(quotient), i128::from(remainder) * 2 - 10_000);
            }
        }
        // 64-bit division is several times faster; amounts nearly always fit.
        if let (Ok(num), Ok(den)) = (u64::try_from(num), u64::try_from(den)) {
            let quotient = num / den;
            let remainder = num % den;
            // 2 × remainder − den, without overflow: remainder < den.
            let excess = i128::from(remainder) * 2 - i128::from(den);
            return self.round(i128::from(quotient), excess);
        }
        if num < 0 {
            return -self.div(-num, den);
        }
        let quotient = num / den;
        self.round(quotient, (num % den) * 2 - den)
    }

    /// `quotient` or `quotient + 1`, from the sign of `2 × remainder − den`.
    fn round(self, quotient: i128, excess: i128) -> i128 {
        match excess.cmp(&0) {
            Ordering::Less => quotient,
            Ordering::Greater => quotient + 1,
            Ordering::Equal => match self {
                Rounding::HalfEven if quotient % 2 == 0 => quotient,
                Rounding::HalfEven | Rounding::HalfUp => quotient + 1,
            },
        }
    }
}

/// Something holding an amount of minor units that [`allocate`] can split into.
pub(crate) trait Amount {
    fn amount(&self) -> i64;
    fn set_amount(&mut self, amount: i64);
}

impl Amount for i64 {
    fn amount(&self) -> i64 {
        *self
    }
    fn set_amount(&mut self, amount: i64) {
        *self = amount;
    }
}

impl Amount for Money {
    fn amount(&self) -> i64 {
        self.amount
    }
    fn set_amount(&mut self, amount: i64) {
        self.amount = amount;
    }
}

/// Lines up to this many are allocated without touching the heap.
const STACK_LINES: usize = 16;

/// Splits `total` minor units over `values` in proportion to them, in whole minor
/// units, so the shares sum to `total` exactly (largest-remainder method). On entry
/// `values` holds the weights, on return the shares.
///
/// Each share starts as `floor(total × weight / Σ weights)`; the units left over go
/// one each to the shares with the largest remainders, equal remainders in the order
/// `tie` gives (lower first). Requires `0 ≤ total ≤ Σ weights` and weights `≥ 0`;
/// then every share is at most its weight.
pub(crate) fn allocate<T: Amount>(
    total: i64,
    values: &mut [T],
    tie: impl Fn(usize, usize) -> Ordering,
) {
    let sum: i128 = values.iter().map(|v| i128::from(v.amount())).sum();
    if total <= 0 || sum <= 0 {
        values.iter_mut().for_each(|v| v.set_amount(0));
        return;
    }
    let mut stack = [0u64; STACK_LINES];
    let mut heap = Vec::new();
    let remainders: &mut [u64] = if values.len() <= STACK_LINES {
        &mut stack[..values.len()]
    } else {
        heap.resize(values.len(), 0);
        &mut heap
    };
    let total_wide = i128::from(total);
    let mut given: i128 = 0;
    for (value, slot) in values.iter_mut().zip(remainders.iter_mut()) {
        let exact = total_wide * i128::from(value.amount());
        // 64-bit division when it fits: several times faster, and nearly always the case.
        let (floor, remainder) = match (u64::try_from(exact), u64::try_from(sum)) {
            (Ok(exact), Ok(sum)) => (i128::from(exact / sum), u128::from(exact % sum)),
            _ => (exact / sum, (exact % sum).unsigned_abs()),
        };
        // floor ≤ weight because total ≤ sum.
        value.set_amount(i64::try_from(floor).unwrap_or(i64::MAX));
        given += floor;
        // A remainder is below Σ weights, so below 2^64 unless the weights add up to
        // 2^64 or more (never for real prices); then it saturates, which can only
        // change who gets a leftover unit, never the sum.
        *slot = u64::try_from(remainder).unwrap_or(u64::MAX);
    }
    // Fewer units are left than there are non-zero remainders (each remainder < 1 unit),
    // so a zero remainder never gets one.
    let left = usize::try_from(total_wide - given).unwrap_or(0);
    if left == 0 {
        return;
    }
    // A share gets a unit when fewer than `left` shares come before it: those with a
    // larger remainder, then those with an equal one that `tie` puts first. Counting
    // (no sort) keeps this branch-free for the short lists carts make.
    let remainders = &*remainders;
    for (index, &remainder) in remainders.iter().enumerate() {
        if remainder == 0 {
            continue;
        }
        let larger = remainders.iter().filter(|&&r| r > remainder).count();
        if larger >= left {
            continue;
        }
        let equal = remainders.iter().filter(|&&r| r == remainder).count();
        let ahead = if larger + equal <= left {
            larger
        } else {
            let equal_first = (0..remainders.len())
                .filter(|&other| {
                    other != index
                        && remainders[other] == remainder
                        && tie(other, index) == Ordering::Less
                })
                .count();
            larger + equal_first
        };
        if ahead < left {
            if let Some(value) = values.get_mut(index) {
                value.set_amount(value.amount() + 1);
            }
        }
    }
}

/// A fixed order of lines by content — unit price, quantity, SKU, then position in
/// the cart — for ties: lines that tie in it are identical, so which of them gets a
/// leftover unit cannot change the breakdown as a set of lines.
pub(crate) fn content_order(lines: &[crate::cart::Line], a: usize, b: usize) -> Ordering {
    match (lines.get(a), lines.get(b)) {
        (Some(x), Some(y)) => x
            .unit_price
            .cmp(&y.unit_price)
            .then(x.quantity.cmp(&y.quantity))
            .then_with(|| x.sku.cmp(&y.sku))
            .then(a.cmp(&b)),
        // Past the lines (e.g. shipping in a tax allocation): last.
        _ => a.cmp(&b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        assert_eq!(Currency::parse("EUR"), Ok(Currency::EUR));
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arithmetic_refuses_overflow_and_mixed_currencies() {
        let max = Money::new(i64::MAX, Currency::EUR);
        assert_eq!(
            max.checked_add(Money::new(1, Currency::EUR)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(max.checked_mul(2), Err(MoneyError::Overflow));
        assert!(matches!(
            Money::new(1, Currency::EUR).checked_add(Money::new(1, Currency::USD)),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert_eq!(
            Money::new(5, Currency::EUR).checked_sub(Money::new(7, Currency::EUR)),
            Ok(Money::new(-2, Currency::EUR))
        );
    }

    #[test]
    fn rounding_modes_differ_only_on_exact_halves() {
        let cases = [
            (25, 10, 2, 3),
            (35, 10, 4, 4),
            (24, 10, 2, 2),
            (26, 10, 3, 3),
            (-25, 10, -2, -3),
            (
                i128::from(i64::MAX - 1) * 4 + 2,
                4,
                i128::from(i64::MAX - 1),
                i128::from(i64::MAX),
            ),
        ];
        for (num, den, even, up) in cases {
            assert_eq!(Rounding::HalfEven.div(num, den), even, "{num}/{den}");
            assert_eq!(Rounding::HalfUp.div(num, den), up, "{num}/{den}");
        }
    }

    #[test]
    fn largest_remainder_gives_leftover_cents_to_the_largest_remainders() {
        let first = |a: usize, b: usize| a.cmp(&b);
        let last = |a: usize, b: usize| b.cmp(&a);
        let mut values = [333, 333, 333];
        allocate(100, &mut values, first);
        assert_eq!(values, [34, 33, 33]);
        let mut values = [333, 333, 333];
        allocate(100, &mut values, last);
        assert_eq!(values, [33, 33, 34]);
        let mut values = [1, 2, 7];
        allocate(10, &mut values, first);
        assert_eq!(values, [1, 2, 7]);
        let mut values = [0, 3, 3];
        allocate(5, &mut values, last);
        assert_eq!(values, [0, 2, 3]);
        let mut values = [i64::MAX / 2, i64::MAX / 2];
        allocate(3, &mut values, first);
        assert_eq!(values, [2, 1]);
    }

    #[test]
    fn long_carts_allocate_exactly_too() {
        // More lines than fit on the stack: the heap path.
        let weights: Vec<i64> = (1..=40).map(|i| i * 37 % 101 + 1).collect();
        let sum: i64 = weights.iter().sum();
        for total in [0, 1, 39, 40, 41, sum / 3, sum - 1, sum] {
            let mut values = weights.clone();
            allocate(total, &mut values, |a, b| a.cmp(&b));
            assert_eq!(values.iter().sum::<i64>(), total);
            for (share, weight) in values.iter().zip(&weights) {
                // Within one unit of total × weight / sum.
                assert!((share * sum - total * weight).abs() < sum, "{share}");
                assert!(share <= weight);
            }
        }
    }

    #[test]
    fn percent_serializes_as_the_number_it_was_written_as() {
        let p = |bps| serde_json::to_string(&Percent::from_bps(bps)).unwrap_or_default();
        assert_eq!(p(1000), "10");
        assert_eq!(p(1250), "12.5");
        assert_eq!(p(3333), "33.33");
        assert_eq!(p(1), "0.01");
    }
}
