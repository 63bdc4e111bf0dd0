//! Catalog domain types. Raw input becomes these once, at the edge.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::{display_name, FieldErrors, Invalid};

/// The largest amount of money the API takes (minor units): 12 digits, what the
/// legacy orders' numeric(12,2) holds too. With at most 10,000 units a line and
/// 100 lines an order, no order total can overflow an i64.
pub const MAX_PRICE: i64 = 999_999_999_999;

/// Active ISO 4217 currency codes (funds, metals and test codes left out).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWL",
];

/// Whether `code` is an active ISO 4217 currency code.
pub fn is_currency(code: &str) -> bool {
    ISO_4217.contains(&code)
}

/// An amount in integer minor units of an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Minor units (cents), never negative for a price.
    pub amount: i64,
    /// An ISO 4217 code, e.g. `EUR`.
    pub currency: String,
}

impl Money {
    /// A price: 0 to MAX_PRICE minor units of an ISO 4217 currency.
    pub fn parse_price(raw: &Money, field: &str, errors: &mut FieldErrors) -> Option<Money> {
        let amount = errors.check(
            format!("{field}.amount"),
            if (0..=MAX_PRICE).contains(&raw.amount) {
                Ok(raw.amount)
            } else {
                Err(format!("must be from 0 to {MAX_PRICE} minor units"))
            },
        );
        let currency_ok = is_currency(&raw.currency);
        let currency = errors.check(
            format!("{field}.currency"),
            if currency_ok {
                Ok(raw.currency.clone())
            } else {
                Err("must be an ISO 4217 currency code, e.g. EUR".to_owned())
            },
        );
        amount
            .zip(currency)
            .map(|(amount, currency)| Money { amount, currency })
    }
}

/// A stock-keeping unit code: 1 to 64 of `A-Z a-z 0-9 - _ .`; unique per merchant.
/// Ordered as its code (the order stock rows are locked in).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 64 {
            return Err("must be 1-64 characters".into());
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("may contain only letters, digits, '-', '_' and '.'".into());
        }
        Ok(Sku(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_description(raw: &str) -> Result<String, String> {
    if raw.chars().count() > 10_000 {
        return Err("must be at most 10000 characters".into());
    }
    Ok(raw.to_owned())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProductBody {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub variants: Vec<VariantBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantBody {
    pub sku: String,
    pub price: Money,
}

/// Whether a product is sold. An archived one stays in the catalog (orders
/// name it) but no checkout takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProductStatus {
    Active,
    Archived,
}

impl ProductStatus {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "active" => Ok(ProductStatus::Active),
            "archived" => Ok(ProductStatus::Archived),
            _ => Err("must be active or archived".to_owned()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProductStatus::Active => "active",
            ProductStatus::Archived => "archived",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchProductBody {
    /// Absent: unchanged. `null` is refused (a product always has a name).
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// `null` clears the description.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `active` or `archived` (an archived product is not sold).
    #[serde(default)]
    #[schema(value_type = Option<ProductStatus>)]
    pub status: Option<String>,
}

/// A new price for a variant; the old one stays in its history.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchVariantBody {
    pub price: Option<Money>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

#[derive(Debug)]
pub struct NewVariant {
    pub sku: Sku,
    pub price: Money,
}

#[derive(Debug)]
pub struct NewProduct {
    pub name: String,
    pub description: Option<String>,
    pub variants: Vec<NewVariant>,
}

pub const MAX_VARIANTS: usize = 100;

impl NewProduct {
    pub fn parse(body: &CreateProductBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let name = errors.check("name", display_name(&body.name));
        let description = match &body.description {
            None => Some(None),
            Some(d) => errors.check("description", parse_description(d)).map(Some),
        };
        if body.variants.is_empty() || body.variants.len() > MAX_VARIANTS {
            // The length first: thousands of bad variants are one error.
            errors.push(
                "variants",
                format!("must hold 1 to {MAX_VARIANTS} variants"),
            );
            if body.variants.len() > MAX_VARIANTS {
                return errors.finish(None);
            }
        }
        let mut seen = std::collections::HashSet::new();
        // Parse every variant (no short-circuit), so each bad field is reported.
        let variants: Vec<Option<NewVariant>> = body
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let sku = errors.check(format!("variants[{i}].sku"), Sku::parse(&v.sku));
                if sku.as_ref().is_some_and(|s| !seen.insert(s.clone())) {
                    errors.push(
                        format!("variants[{i}].sku"),
                        "appears twice in this product",
                    );
                }
                let price =
                    Money::parse_price(&v.price, &format!("variants[{i}].price"), &mut errors);
                sku.zip(price).map(|(sku, price)| NewVariant { sku, price })
            })
            .collect();
        let variants: Option<Vec<NewVariant>> = variants.into_iter().collect();
        let product = name
            .zip(description)
            .zip(variants)
            .map(|((name, description), variants)| NewProduct {
                name,
                description,
                variants,
            });
        errors.finish(product)
    }
}

#[derive(Debug, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub status: Option<ProductStatus>,
}

impl ProductPatch {
    pub fn parse(body: &PatchProductBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let name = match &body.name {
            None => Some(None),
            Some(None) => errors.check("name", Err("cannot be null".to_owned())),
            Some(Some(n)) => errors.check("name", display_name(n)).map(Some),
        };
        let description = match &body.description {
            Some(Some(d)) => errors
                .check("description", parse_description(d))
                .map(|d| Some(Some(d))),
            other => Some(other.clone()),
        };
        let status = match &body.status {
            None => Some(None),
            Some(raw) => errors.check("status", ProductStatus::parse(raw)).map(Some),
        };
        errors.finish(
            name.zip(description)
                .zip(status)
                .map(|((name, description), status)| ProductPatch {
                    name,
                    description,
                    status,
                }),
        )
    }
}

impl NewVariant {
    /// One variant added to an existing product (`POST …/variants`).
    pub fn parse(body: &VariantBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let sku = errors.check("sku", Sku::parse(&body.sku));
        let price = Money::parse_price(&body.price, "price", &mut errors);
        errors.finish(sku.zip(price).map(|(sku, price)| NewVariant { sku, price }))
    }
}

/// What a variant's `PATCH` changes: its price, for now.
#[derive(Debug)]
pub struct VariantPatch {
    pub price: Option<Money>,
}

impl VariantPatch {
    pub fn parse(body: &PatchVariantBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let price = match &body.price {
            None => Some(None),
            Some(p) => Money::parse_price(p, "price", &mut errors).map(Some),
        };
        errors.finish(price.map(|price| VariantPatch { price }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_1_to_64_safe_characters() {
        assert!(Sku::parse("TEE-RED_XL.2").is_ok());
        assert!(Sku::parse(&"A".repeat(64)).is_ok());
        for bad in ["", "has space", "ü", &"A".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_product_with_bad_fields_names_each_one() {
        let body: CreateProductBody = serde_json::from_value(serde_json::json!({
            "name": " ",
            "variants": [
                {"sku": "A", "price": {"amount": -1, "currency": "eur"}},
                {"sku": "A", "price": {"amount": 5, "currency": "EUR"}},
            ]
        }))
        .unwrap();
        let invalid = NewProduct::parse(&body).unwrap_err();
        assert_eq!(
            invalid.fields(),
            [
                "name",
                "variants[0].price.amount",
                "variants[0].price.currency",
                "variants[1].sku"
            ]
        );
    }
}
