//! Tax and shipping as plug-ins: traits the merchant's configuration picks an
//! implementation of, and the built-in ones.
//!
//! Order of work in [`price`](crate::price): discounts first, then shipping is quoted
//! on the discounted goods, then tax is assessed on the discounted lines and shipping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::breakdown::{LineBreakdown, RateTax};
use crate::cart::Cart;
use crate::money::{allocate, content_order, Money, Rounding};

/// A provider could not answer (no rate for the country, wrong currency, …).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// What a shipping provider sees.
#[derive(Clone, Copy, Debug)]
pub struct ShippingQuery<'a> {
    pub cart: &'a Cart,
    /// Σ line nets: the goods after discounts (tax included when prices include tax).
    pub goods_total: Money,
}

/// Quotes shipping before shipping discounts. Must answer in the cart's currency,
/// never negative, and be a pure function of the query.
pub trait ShippingProvider: Send + Sync {
    fn quote(&self, query: &ShippingQuery<'_>) -> Result<Money, ProviderError>;
}

/// What a tax provider sees: the lines after discounts and the shipping charged.
#[derive(Clone, Copy, Debug)]
pub struct TaxQuery<'a> {
    pub cart: &'a Cart,
    /// The priced lines, in the cart's order: tax is assessed on each `net`. Their
    /// `tax` fields are not yet filled in.
    pub lines: &'a [LineBreakdown],
    /// Shipping after shipping discounts.
    pub shipping: Money,
}

/// A tax provider's answer. `price` refuses one that does not add up: one entry per
/// line, nothing negative, `Σ lines + shipping = Σ rates[].amount`, and with
/// inclusive prices no line's tax above its net.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaxAssessment {
    pub inclusive: bool,
    pub lines: Vec<Money>,
    pub shipping: Money,
    pub rates: Vec<RateTax>,
}

/// Assesses tax on discounted lines and shipping. Must be a pure function of the query.
pub trait TaxProvider: Send + Sync {
    fn assess(&self, query: &TaxQuery<'_>) -> Result<TaxAssessment, ProviderError>;
}

/// The highest rate a [`RateTable`] takes: 100 %.
pub const MAX_RATE_BPS: u32 = 10_000;

/// Tax by a rate per ship-to country.
///
/// The tax is computed once per rate on the sum it applies to (lines, plus shipping
/// when `shipping_taxable`), rounded half to even, then allocated to the lines and
/// shipping by largest remainder — so line taxes add up to the rate's tax exactly
/// and no per-line rounding drifts. Exclusive prices: `tax = taxable × rate`.
/// Inclusive prices: `tax = taxable × rate / (1 + rate)`, contained in the prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTable {
    /// Basis points per ship-to country (ISO 3166-1 alpha-2): `{"DE": 1900}` is 19 %.
    /// At most [`MAX_RATE_BPS`].
    #[serde(default)]
    pub rates: BTreeMap<String, u32>,
    /// The rate for carts with no country or a country not in `rates`; without one
    /// such carts are refused.
    #[serde(default)]
    pub default_rate: Option<u32>,
    /// Prices (unit prices and shipping) include tax.
    pub inclusive: bool,
    /// Shipping is taxed at the goods' rate.
    #[serde(default)]
    pub shipping_taxable: bool,
}

impl RateTable {
    /// One rate whatever the country.
    pub fn single(rate_bps: u32, inclusive: bool) -> Self {
        RateTable {
            rates: BTreeMap::new(),
            default_rate: Some(rate_bps),
            inclusive,
            shipping_taxable: false,
        }
    }

    /// No tax at all.
    pub fn none() -> Self {
        Self::single(0, false)
    }

    fn rate_for(&self, country: Option<&str>) -> Result<u32, ProviderError> {
        let found = country.and_then(|code| {
            self.rates.get(code).copied().or_else(|| {
                self.rates
                    .iter()
                    .find(|(known, _)| known.eq_ignore_ascii_case(code))
                    .map(|(_, &rate)| rate)
            })
        });
        found.or(self.default_rate).ok_or_else(|| {
            ProviderError(match country {
                Some(code) => format!("no tax rate for country {code:?}"),
                None => "no ship-to country and no default tax rate".to_owned(),
            })
        })
    }
}

impl TaxProvider for RateTable {
    fn assess(&self, query: &TaxQuery<'_>) -> Result<TaxAssessment, ProviderError> {
        let currency = query.cart.currency;
        let rate = self.rate_for(query.cart.country.as_deref())?;
        if rate > MAX_RATE_BPS {
            return Err(ProviderError(format!(
                "tax rate {rate} basis points is above 100 %"
            )));
        }
        let shipping_weight = if self.shipping_taxable {
            query.shipping.amount
        } else {
            0
        };
        // Lines, then shipping as the last weight; the tax is allocated over them in place.
        let mut shares: Vec<Money> = Vec::with_capacity(query.lines.len() + 1);
        shares.extend(query.lines.iter().map(|line| line.net));
        shares.push(Money::new(shipping_weight, currency));
        let taxable: i128 = shares.iter().map(|m| i128::from(m.amount)).sum();
        let numerator = taxable * i128::from(rate);
        let tax = if self.inclusive {
            Rounding::HalfEven.div(numerator, 10_000 + i128::from(rate))
        } else {
            Rounding::HalfEven.div(numerator, 10_000)
        };
        // rate ≤ 100 %, so tax ≤ taxable: both fit an i64 when taxable does.
        let overflow = || ProviderError("taxable amount out of range".to_owned());
        let tax = i64::try_from(tax).map_err(|_| overflow())?;
        let taxable = i64::try_from(taxable).map_err(|_| overflow())?;
        // Ties by line content; shipping (index n) last.
        let lines = &query.cart.lines;
        allocate(tax, &mut shares, |a, b| content_order(lines, a, b));
        let shipping = shares.pop().unwrap_or(Money::zero(currency));
        Ok(TaxAssessment {
            inclusive: self.inclusive,
            lines: shares,
            shipping,
            rates: vec![RateTax {
                rate_bps: rate,
                taxable: Money::new(taxable, currency),
                amount: Money::new(tax, currency),
            }],
        })
    }
}

/// The same shipping charge for every cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatRate {
    pub amount: Money,
}

impl ShippingProvider for FlatRate {
    fn quote(&self, query: &ShippingQuery<'_>) -> Result<Money, ProviderError> {
        in_cart_currency(self.amount, query)
    }
}

/// A flat charge, free once the discounted goods reach `threshold`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeOverThreshold {
    pub amount: Money,
    pub threshold: Money,
}

impl ShippingProvider for FreeOverThreshold {
    fn quote(&self, query: &ShippingQuery<'_>) -> Result<Money, ProviderError> {
        let threshold = in_cart_currency(self.threshold, query)?;
        if query.goods_total.amount < threshold.amount {
            in_cart_currency(self.amount, query)
        } else {
            Ok(Money::zero(query.cart.currency))
        }
    }
}

fn in_cart_currency(money: Money, query: &ShippingQuery<'_>) -> Result<Money, ProviderError> {
    if money.currency == query.cart.currency {
        Ok(money)
    } else {
        Err(ProviderError(format!(
            "shipping is configured in {}, the cart is in {}",
            money.currency, query.cart.currency
        )))
    }
}
