//! What is priced: the cart, as the service hands it over.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::Sku;
use crate::money::Currency;

/// Everything a price depends on besides the rule set, the calculator version and the
/// [`Context`](crate::Context). Record it with the order to re-price the order later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cart {
    /// The merchant's currency; every `unit_price` is in its minor units.
    pub currency: Currency,
    /// At least one line. The same SKU may appear on several lines; each is priced on its own.
    pub lines: Vec<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
    /// The code the buyer typed, as typed; rules compare it ignoring ASCII case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promo_code: Option<String>,
    /// Ship-to country, ISO 3166-1 alpha-2 (`DE`); tax and shipping providers read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// "Now" for this price: `valid_from` / `valid_until` are checked against it.
    /// The crate never reads a clock, so the same cart prices the same forever.
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub sku: Sku,
    /// At least 1.
    pub quantity: u32,
    /// Minor units of the cart's currency, at least 0.
    pub unit_price: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Compared with `customer_email_in` ignoring ASCII case.
    pub email: String,
    /// Whether this order would be the customer's first (the service knows; pricing trusts it).
    pub first_order: bool,
}

impl Line {
    pub fn new(sku: impl Into<Sku>, quantity: u32, unit_price: i64) -> Self {
        Line {
            sku: sku.into(),
            quantity,
            unit_price,
        }
    }
}
