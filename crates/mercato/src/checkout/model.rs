//! What a checkout asks for, parsed at the edge.

use serde::Deserialize;
use utoipa::ToSchema;

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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// The units to return: each SKU once, 1 to 10,000 units.
    pub lines: Vec<ItemBody>,
}

/// The units a refund returns, parsed: 1 to 100 lines, no SKU twice.
pub fn parse_refund(body: &RefundBody) -> Result<Vec<Line>, Invalid> {
    let mut errors = FieldErrors::default();
    // parse_lines names fields `items[i]`; a refund's are `lines[i]`.
    let lines = parse_lines(&body.lines, &mut errors);
    errors.finish(lines).map_err(|Invalid(fields)| {
        Invalid(
            fields
                .into_iter()
                .map(|mut f| {
                    f.field = f.field.replacen("items", "lines", 1);
                    f
                })
                .collect(),
        )
    })
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

    #[test]
    fn refund_fields_are_named_lines() {
        let body = RefundBody {
            lines: vec![crate::inventory::ItemBody {
                sku: "A".into(),
                quantity: 0,
            }],
        };
        assert_eq!(
            parse_refund(&body).unwrap_err().fields(),
            ["lines[0].quantity"]
        );
    }
}
