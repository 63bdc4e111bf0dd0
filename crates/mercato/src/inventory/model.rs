//! Inventory domain types: what a reservation asks for, and how stock is taken.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::Sku;
use crate::http::FieldErrors;

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
        errors.push("items", format!("must hold 1 to {MAX_LINES} items"));
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

/// How units are taken from stock. All three leave the same rows behind (a
/// reservation); they differ in how concurrent buyers of one SKU are serialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `SELECT … FOR UPDATE` the stock rows, check, update.
    Pessimistic,
    /// One conditional `UPDATE … WHERE on_hand - reserved >= q` per SKU.
    Optimistic,
    /// Per-SKU FIFO admission: one task per hot SKU grants whole batches in one transaction.
    Reservation,
}

impl Strategy {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "pessimistic" => Ok(Strategy::Pessimistic),
            "optimistic" => Ok(Strategy::Optimistic),
            "reservation" => Ok(Strategy::Reservation),
            _ => Err("must be one of pessimistic, optimistic, reservation".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Pessimistic => "pessimistic",
            Strategy::Optimistic => "optimistic",
            Strategy::Reservation => "reservation",
        }
    }
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
        let err = errors.finish(Some(())).unwrap_err();
        let crate::http::ApiError::Validation(fields) = err else {
            panic!()
        };
        let fields: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
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
}
