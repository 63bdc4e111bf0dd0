//! What a checkout asks for, parsed at the edge.

use serde::Deserialize;
use utoipa::ToSchema;

use super::store::FulfillmentStatus;
use crate::catalog::Money;
use crate::inventory::{parse_lines, ItemBody, Line};
use crate::payments::SandboxMethod;
use crate::validation::{self, FieldErrors, Invalid};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    pub customer: CustomerBody,
    pub items: Vec<ItemBody>,
    /// A payment-method token; the sandbox's are listed in API.md (`pm_card_ok`, …).
    pub payment_method: String,
    pub promo_code: Option<String>,
    /// Ship-to country (ISO 3166-1 alpha-2, e.g. `DE`): the tax rate follows it.
    pub ship_to_country: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewCheckout {
    pub email: String,
    pub lines: Vec<Line>,
    pub payment_method: String,
    pub promo_code: Option<String>,
    pub country: Option<String>,
}

/// A ship-to country: two letters (ISO 3166-1 alpha-2), kept upper-case.
pub fn parse_country(raw: &str) -> Result<String, String> {
    let code = raw.trim().to_ascii_uppercase();
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code)
    } else {
        Err("must be a two-letter country code (ISO 3166-1 alpha-2), e.g. DE".into())
    }
}

/// A promo code as typed: 1 to 64 characters.
pub fn parse_promo(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 64 {
        return Err("must be 1-64 characters".into());
    }
    Ok(raw.to_owned())
}

impl NewCheckout {
    pub fn parse(body: &CheckoutBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let email = errors.check("customer.email", validation::email(&body.customer.email));
        let lines = parse_lines(&body.items, &mut errors);
        let method = errors
            .check("payment_method", SandboxMethod::parse(&body.payment_method))
            .map(|_| body.payment_method.clone());
        let promo = match &body.promo_code {
            None => Some(None),
            Some(p) => errors.check("promo_code", parse_promo(p)).map(Some),
        };
        let country = match &body.ship_to_country {
            None => Some(None),
            Some(c) => errors.check("ship_to_country", parse_country(c)).map(Some),
        };
        let parsed = email.zip(lines).zip(method).zip(promo).zip(country).map(
            |((((email, lines), payment_method), promo_code), country)| NewCheckout {
                email,
                lines,
                payment_method,
                promo_code,
                country,
            },
        );
        errors.finish(parsed)
    }
}

/// A refund: of units (`lines`), or of an amount (`amount` and `reason`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// The units to return: each SKU once, 1 to 10,000 units.
    pub lines: Option<Vec<ItemBody>>,
    /// An amount to pay back, in the order's currency, at most what is left
    /// of what the order was paid.
    pub amount: Option<Money>,
    /// Why the amount is refunded (1 to 500 characters); with `amount` only.
    pub reason: Option<String>,
}

/// What a refund returns, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRequest {
    /// Units of the order: what was paid for them, discount share included.
    Lines(Vec<Line>),
    /// An amount (minor units, > 0) of `currency`, and why.
    Amount {
        amount: i64,
        currency: String,
        reason: String,
    },
}

/// A reason as given: 1 to 500 characters, trimmed.
pub fn parse_reason(raw: &str) -> Result<String, String> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err("must be 1-500 characters".into());
    }
    Ok(reason.to_owned())
}

/// Units named by `lines` in a body, their fields named `lines[i].…`.
pub fn parse_order_lines(items: &[ItemBody], errors: &mut FieldErrors) -> Option<Vec<Line>> {
    // parse_lines names fields `items[i]`; these are `lines[i]`.
    let mut own = FieldErrors::default();
    let lines = parse_lines(items, &mut own);
    if let Err(Invalid(fields)) = own.finish(Some(())) {
        for f in fields {
            errors.push(f.field.replacen("items", "lines", 1), f.message);
        }
    }
    lines
}

/// Parses a refund: `lines`, or `amount` with `reason`; never both.
pub fn parse_refund(body: &RefundBody) -> Result<RefundRequest, Invalid> {
    let mut errors = FieldErrors::default();
    let parsed = match (&body.lines, &body.amount) {
        (Some(_), Some(_)) => {
            errors.push("amount", "give either lines or amount, not both");
            None
        }
        (None, None) => {
            errors.push(
                "lines",
                "give the lines to refund, or an amount and a reason",
            );
            None
        }
        (Some(lines), None) => {
            if body.reason.is_some() {
                errors.push(
                    "reason",
                    "goes with an amount; a refund of lines says what it returns",
                );
            }
            parse_order_lines(lines, &mut errors).map(RefundRequest::Lines)
        }
        (None, Some(money)) => {
            let amount = if money.amount > 0 {
                Some(money.amount)
            } else {
                errors.push("amount.amount", "must be a positive number of minor units");
                None
            };
            let currency = errors.check(
                "amount.currency",
                if crate::catalog::is_currency(&money.currency) {
                    Ok(money.currency.clone())
                } else {
                    Err("must be an ISO 4217 code, e.g. EUR".to_owned())
                },
            );
            let reason = match &body.reason {
                None => {
                    errors.push("reason", "is required with an amount");
                    None
                }
                Some(raw) => errors.check("reason", parse_reason(raw)),
            };
            amount
                .zip(currency)
                .zip(reason)
                .map(|((amount, currency), reason)| RefundRequest::Amount {
                    amount,
                    currency,
                    reason,
                })
        }
    };
    errors.finish(parsed)
}

/// What refunding `quantity` more units of a line returns, given what the whole
/// line was paid (`paid`), its units (`bought`) and the units refunded before
/// (`refunded`): the paid amount spread over the units by rounding the running
/// total down, so refunding every unit, in any steps, returns exactly `paid`.
pub fn refund_share(paid: i64, bought: i64, refunded: i64, quantity: i64) -> i64 {
    if bought <= 0 {
        return 0;
    }
    let paid_for = |units: i64| {
        let units = units.clamp(0, bought);
        // paid * units / bought ≤ paid: it fits an i64 again.
        i64::try_from(i128::from(paid) * i128::from(units) / i128::from(bought)).unwrap_or(paid)
    };
    paid_for(refunded + quantity) - paid_for(refunded)
}

/// What is left to refund of an order paid `total`, `refunded` so far.
pub fn refundable_left(total: i64, refunded: i64) -> i64 {
    total.saturating_sub(refunded).max(0)
}

/// `shares` paid back in order until `left` runs out: each at most its share,
/// together at most `left` (what earlier refunds of amounts left of the order).
pub fn cap_to_left(shares: &[i64], left: i64) -> Vec<i64> {
    let mut left = left.max(0);
    shares
        .iter()
        .map(|share| {
            let paid = (*share).clamp(0, left);
            left -= paid;
            paid
        })
        .collect()
}

/// Units of one SKU still to ship: bought, less those shipped, less those
/// refunded without being shipped. `refunded` counts every unit refunded,
/// `returned` of them shipped first and sent back (a return refunds its
/// units), so `refunded - returned` were refunded instead of shipped.
pub fn fulfillable(bought: i64, refunded: i64, fulfilled: i64, returned: i64) -> i64 {
    let refunded_unshipped = (refunded - returned).max(0);
    (bought - fulfilled - refunded_unshipped).max(0)
}

/// Where an order's shipping stands, from each SKU's (still to ship,
/// shipped): nothing shipped yet; some; everything there is to ship.
pub fn fulfillment_status(lines: &[(i64, i64)]) -> FulfillmentStatus {
    if lines.iter().all(|(_, shipped)| *shipped == 0) {
        FulfillmentStatus::Unfulfilled
    } else if lines.iter().all(|(to_ship, _)| *to_ship == 0) {
        FulfillmentStatus::Fulfilled
    } else {
        FulfillmentStatus::PartiallyFulfilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn refunds_of_every_unit_return_exactly_what_was_paid(
            paid in 0i64..10_000_000_000,
            steps in proptest::collection::vec(1i64..5, 1..20),
        ) {
            let bought: i64 = steps.iter().sum();
            let mut refunded = 0;
            let mut returned = 0;
            for q in steps {
                let share = refund_share(paid, bought, refunded, q);
                prop_assert!(share >= 0);
                prop_assert!(share <= paid);
                returned += share;
                refunded += q;
            }
            prop_assert_eq!(returned, paid);
        }

        #[test]
        fn no_refund_returns_more_than_its_units_cost_rounded_up(
            (paid, bought, refunded, quantity) in (0i64..1_000_000, 1i64..50)
                .prop_flat_map(|(paid, bought)| (Just(paid), Just(bought), 0..bought))
                .prop_flat_map(|(paid, bought, refunded)| {
                    (Just(paid), Just(bought), Just(refunded), 1..=(bought - refunded))
                }),
        ) {
            let share = refund_share(paid, bought, refunded, quantity);
            // Within one minor unit of the exact share.
            let exact = paid as f64 * quantity as f64 / bought as f64;
            prop_assert!((share as f64 - exact).abs() < 1.0 + 1e-9);
        }
    }

    proptest! {
        #[test]
        fn refunds_in_any_mix_never_return_more_than_was_paid(
            total in 0i64..1_000_000,
            asks in proptest::collection::vec((any::<bool>(), 1i64..400_000), 1..30),
        ) {
            // Each ask is an amount (refused beyond what is left) or a share of
            // lines (capped to what is left), as `refund` treats them.
            let mut refunded = 0;
            for (is_amount, ask) in asks {
                let left = refundable_left(total, refunded);
                let paid = if is_amount {
                    if ask > left { 0 } else { ask }
                } else {
                    cap_to_left(&[ask / 2, ask - ask / 2], left).iter().sum()
                };
                prop_assert!(paid <= left);
                refunded += paid;
                prop_assert!(refunded <= total);
            }
        }

        #[test]
        fn capped_shares_take_what_is_left_and_no_more(
            shares in proptest::collection::vec(0i64..100_000, 0..10),
            left in -10i64..300_000,
        ) {
            let capped = cap_to_left(&shares, left);
            let asked: i64 = shares.iter().sum();
            prop_assert_eq!(capped.iter().sum::<i64>(), asked.min(left.max(0)));
            for (c, s) in capped.iter().zip(&shares) {
                prop_assert!(0 <= *c && c <= s);
            }
        }
    }

    proptest! {
        #[test]
        fn shipments_and_refunds_in_any_order_never_ship_more_than_was_bought(
            bought in 1i64..50,
            steps in proptest::collection::vec((0u8..3, 1i64..10), 1..40),
        ) {
            // (ship, refund unshipped units, return shipped units) in any order,
            // each taken only within what the rules allow.
            let (mut fulfilled, mut refunded, mut returned) = (0, 0, 0);
            for (kind, q) in steps {
                match kind {
                    0 if q <= fulfillable(bought, refunded, fulfilled, returned) => fulfilled += q,
                    1 if q <= bought - refunded - (fulfilled - returned) => refunded += q,
                    2 if q <= fulfilled - returned => {
                        returned += q;
                        refunded += q;
                    }
                    _ => {}
                }
                let unshipped_refunds = refunded - returned;
                prop_assert!(fulfilled + unshipped_refunds <= bought);
                prop_assert!(refunded <= bought);
                let left = fulfillable(bought, refunded, fulfilled, returned);
                prop_assert_eq!(left, bought - fulfilled - unshipped_refunds);
                let status = fulfillment_status(&[(left, fulfilled)]);
                prop_assert_eq!(status == FulfillmentStatus::Fulfilled, fulfilled > 0 && left == 0);
                prop_assert_eq!(status == FulfillmentStatus::Unfulfilled, fulfilled == 0);
            }
        }
    }

    fn item(sku: &str, quantity: i64) -> ItemBody {
        ItemBody {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn refund_fields_are_named_lines() {
        let body = RefundBody {
            lines: Some(vec![item("A", 0)]),
            amount: None,
            reason: None,
        };
        assert_eq!(
            parse_refund(&body).unwrap_err().fields(),
            ["lines[0].quantity"]
        );
    }

    #[test]
    fn a_refund_is_lines_or_an_amount_with_its_reason() {
        let money = |amount| {
            Some(Money {
                amount,
                currency: "EUR".into(),
            })
        };
        let body = |lines, amount, reason: Option<&str>| RefundBody {
            lines,
            amount,
            reason: reason.map(str::to_owned),
        };
        assert_eq!(
            parse_refund(&body(None, money(250), Some(" damaged "))).unwrap(),
            RefundRequest::Amount {
                amount: 250,
                currency: "EUR".into(),
                reason: "damaged".into()
            }
        );
        for (bad, field) in [
            (body(None, money(-1), Some("x")), "amount.amount"),
            (body(None, money(0), Some("x")), "amount.amount"),
            (body(None, money(5), None), "reason"),
            (body(None, money(5), Some("  ")), "reason"),
            (body(None, None, None), "lines"),
            (body(Some(vec![item("A", 1)]), money(5), None), "amount"),
            (body(Some(vec![item("A", 1)]), None, Some("x")), "reason"),
        ] {
            assert_eq!(parse_refund(&bad).unwrap_err().fields(), [field]);
        }
    }
}
