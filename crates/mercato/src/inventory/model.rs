//! Inventory domain types: what a reservation asks for, and how stock is taken.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::catalog::Sku;
use crate::db::text_enum;
use crate::tenancy::Strategy;
use crate::validation::FieldErrors;

pub const MAX_QUANTITY: i64 = 10_000;
pub const MAX_LINES: usize = 100;
pub const MIN_TTL_SECONDS: i64 = 1;
pub const MAX_TTL_SECONDS: i64 = 3_600;
pub const DEFAULT_TTL_SECONDS: i64 = 900;

/// One requested SKU and quantity, as sent.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub sku: String,
    /// 1 to 10,000 units.
    pub quantity: i64,
}

/// A validated line: a SKU and a quantity in 1..=10,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: Sku,
    pub quantity: i64,
}

/// Parses `items`: 1 to 100 lines, no SKU twice, quantities in range. Errors
/// are recorded against `items[i].…`.
pub fn parse_lines(items: &[ItemBody], errors: &mut FieldErrors) -> Option<Vec<Line>> {
    if items.is_empty() || items.len() > MAX_LINES {
        // The length first: 20,000 bad lines are one error, not 20,000.
        errors.push("items", format!("must hold 1 to {MAX_LINES} items"));
        if items.len() > MAX_LINES {
            return None;
        }
    }
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<Option<Line>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let sku = errors.check(format!("items[{i}].sku"), Sku::parse(&item.sku));
            if sku.as_ref().is_some_and(|s| !seen.insert(s.clone())) {
                errors.push(format!("items[{i}].sku"), "appears twice in this request");
            }
            let quantity = errors.check(
                format!("items[{i}].quantity"),
                if (1..=MAX_QUANTITY).contains(&item.quantity) {
                    Ok(item.quantity)
                } else {
                    Err(format!("must be from 1 to {MAX_QUANTITY}"))
                },
            );
            sku.zip(quantity)
                .map(|(sku, quantity)| Line { sku, quantity })
        })
        .collect();
    lines.into_iter().collect()
}

/// Parses an optional `ttl_seconds` (default 900, 1 to 3600).
pub fn parse_ttl(raw: Option<i64>, errors: &mut FieldErrors) -> Option<i64> {
    let ttl = raw.unwrap_or(DEFAULT_TTL_SECONDS);
    errors.check(
        "ttl_seconds",
        if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl) {
            Ok(ttl)
        } else {
            Err(format!(
                "must be from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"
            ))
        },
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StrategyParam {
    /// Overrides the merchant's stock strategy for this request (for comparison).
    #[param(value_type = Option<Strategy>)]
    pub strategy: Option<String>,
}

impl StrategyParam {
    /// The strategy asked for, or the merchant's own when none is.
    pub fn resolve(&self, merchants: Strategy, errors: &mut FieldErrors) -> Option<Strategy> {
        match &self.strategy {
            None => Some(merchants),
            Some(raw) => errors.check("strategy", Strategy::parse(raw)),
        }
    }
}

text_enum! {
    /// Where a reservation stands. Only `active` holds units; the other three
    /// are final, and a reservation reaches one of them exactly once.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ReservationStatus {
        Active = "active",
        /// The buyer (or a failed checkout) gave the units back.
        Released = "released",
        /// The TTL ran out; the units went back.
        Expired = "expired",
        /// Sold: the units left stock with an order.
        Consumed = "consumed",
    }
}

/// FIFO allocation of one SKU's available units to a batch of requests, in
/// arrival order: each request gets all it asks for or nothing, and a request
/// that does not fit does not stop a later, smaller one from being served.
/// Returns, per request, whether it is granted.
pub fn allocate_in_order(available: i64, quantities: &[i64]) -> Vec<bool> {
    let carts: Vec<Vec<(usize, i64)>> = quantities.iter().map(|&q| vec![(0, q)]).collect();
    allocate_carts_in_order(&[available], &carts)
}

/// FIFO allocation across SKUs: `available[i]` units of the i-th SKU, and
/// carts in arrival order, each a list of (SKU index, quantity) lines. A cart
/// gets every line or nothing; one that does not fit does not stop a later
/// one from being served. Returns, per cart, whether it is granted.
pub fn allocate_carts_in_order(available: &[i64], carts: &[Vec<(usize, i64)>]) -> Vec<bool> {
    let mut left: Vec<i64> = available.iter().map(|&a| a.max(0)).collect();
    carts
        .iter()
        .map(|lines| {
            let fits = !lines.is_empty()
                && lines
                    .iter()
                    .all(|&(i, q)| q > 0 && left.get(i).is_some_and(|&l| q <= l));
            if fits {
                for &(i, q) in lines {
                    left[i] -= q;
                }
            }
            fits
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64) -> ItemBody {
        ItemBody {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn every_bad_line_is_named() {
        let mut errors = FieldErrors::default();
        let items = [item("A", 0), item("B", 10_001), item("A", 1), item("", 1)];
        assert!(parse_lines(&items, &mut errors).is_none());
        let invalid = errors.finish(Some(())).unwrap_err();
        assert_eq!(
            invalid.fields(),
            [
                "items[0].quantity",
                "items[1].quantity",
                "items[2].sku",
                "items[3].sku"
            ]
        );
    }

    #[test]
    fn ttl_defaults_and_bounds() {
        let mut errors = FieldErrors::default();
        assert_eq!(parse_ttl(None, &mut errors), Some(DEFAULT_TTL_SECONDS));
        assert_eq!(parse_ttl(Some(0), &mut errors), None);
        assert_eq!(parse_ttl(Some(3_601), &mut errors), None);
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn carts_never_take_more_than_available_and_are_all_or_nothing(
            available in proptest::collection::vec(0i64..50, 1..6),
            carts in proptest::collection::vec(
                proptest::collection::vec((0usize..6, 1i64..20), 1..4), 0..40),
        ) {
            // One line per SKU in a cart, as parsed requests have.
            let carts: Vec<Vec<(usize, i64)>> = carts
                .into_iter()
                .map(|lines| {
                    let mut seen = std::collections::BTreeMap::new();
                    for (i, q) in lines {
                        seen.entry(i % available.len()).or_insert(q);
                    }
                    seen.into_iter().collect()
                })
                .collect();
            let granted = allocate_carts_in_order(&available, &carts);
            let mut taken = vec![0i64; available.len()];
            for (cart, g) in carts.iter().zip(&granted) {
                if *g {
                    for &(i, q) in cart {
                        taken[i] += q;
                    }
                }
            }
            for (t, a) in taken.iter().zip(&available) {
                prop_assert!(t <= a, "took {t} of {a}");
            }
            // A refused cart did not fit at its turn: some line exceeded what
            // the earlier grants left.
            let mut left = available.clone();
            for (cart, g) in carts.iter().zip(&granted) {
                let fits = cart.iter().all(|&(i, q)| q <= left[i]);
                prop_assert_eq!(fits, *g);
                if *g {
                    for &(i, q) in cart {
                        left[i] -= q;
                    }
                }
            }
        }

        #[test]
        fn allocation_never_grants_more_than_available(
            available in -5i64..200,
            quantities in proptest::collection::vec(1i64..40, 0..64),
        ) {
            let granted = allocate_in_order(available, &quantities);
            prop_assert_eq!(granted.len(), quantities.len());
            let total: i64 = quantities.iter().zip(&granted).filter(|(_, g)| **g).map(|(q, _)| *q).sum();
            prop_assert!(total <= available.max(0));
        }

        #[test]
        fn allocation_serves_in_arrival_order(
            available in 0i64..200,
            quantities in proptest::collection::vec(1i64..40, 0..64),
        ) {
            // Each request is refused only if what earlier grants left is too little:
            // no later request ever jumps ahead of an earlier one that fits.
            let granted = allocate_in_order(available, &quantities);
            let mut left = available;
            for (q, g) in quantities.iter().zip(&granted) {
                prop_assert_eq!(*g, *q <= left, "request of {} with {} left", q, left);
                if *g {
                    left -= q;
                }
            }
        }

        #[test]
        fn allocation_is_all_or_nothing_per_request(
            available in 0i64..200,
            quantities in proptest::collection::vec(1i64..40, 1..64),
        ) {
            // A grant is a whole request: the units handed out are exactly the sum
            // of the granted requests' quantities, and with enough stock all are served.
            let granted = allocate_in_order(available, &quantities);
            let wanted: i64 = quantities.iter().sum();
            if wanted <= available {
                prop_assert!(granted.iter().all(|g| *g));
            }
            let first_refused = granted.iter().position(|g| !g);
            if let Some(i) = first_refused {
                let before: i64 = quantities[..i].iter().zip(&granted).filter(|(_, g)| **g).map(|(q, _)| *q).sum();
                prop_assert!(quantities[i] > available - before);
            }
        }
    }
}
