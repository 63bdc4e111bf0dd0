//! Customer input, parsed once at the edge.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::Money;
use crate::validation::{self, FieldErrors, Invalid};

/// How many addresses a customer keeps.
pub const MAX_ADDRESSES: usize = 20;
/// The longest field of an address.
const MAX_ADDRESS_FIELD: usize = 200;

/// A postal address (every field optional but the country, ISO 3166 alpha-2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerBody {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub addresses: Option<Vec<Address>>,
}

/// The e-mail address is not changed here: store credit and pricing's
/// first-order rule know the customer by it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCustomerBody {
    pub name: Option<String>,
    pub addresses: Option<Vec<Address>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    /// More than zero, in the wallet's currency (the first credit sets it).
    pub amount: Money,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub email: String,
    pub name: Option<String>,
    pub addresses: Vec<Address>,
}

#[derive(Debug, Default)]
pub struct CustomerPatch {
    pub name: Option<String>,
    pub addresses: Option<Vec<Address>>,
}

#[derive(Debug)]
pub struct NewCredit {
    pub amount: Money,
    pub reason: String,
}

/// The key an e-mail address is unique by: trimmed, lower case (as pricing
/// and the wallet count customers).
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

fn parse_addresses(raw: &[Address], errors: &mut FieldErrors) -> Option<Vec<Address>> {
    if raw.len() > MAX_ADDRESSES {
        errors.push(
            "addresses",
            format!("must hold at most {MAX_ADDRESSES} addresses"),
        );
        return None;
    }
    let mut ok = true;
    for (i, a) in raw.iter().enumerate() {
        let country_ok = a.country.len() == 2 && a.country.bytes().all(|b| b.is_ascii_uppercase());
        if !country_ok {
            errors.push(
                format!("addresses[{i}].country"),
                "must be an ISO 3166-1 alpha-2 code, e.g. DE",
            );
            ok = false;
        }
        for (field, value) in [
            ("name", &a.name),
            ("line1", &a.line1),
            ("line2", &a.line2),
            ("postal_code", &a.postal_code),
            ("city", &a.city),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_ADDRESS_FIELD || v.contains('\0'))
            {
                errors.push(
                    format!("addresses[{i}].{field}"),
                    format!("must be at most {MAX_ADDRESS_FIELD} characters"),
                );
                ok = false;
            }
        }
    }
    ok.then(|| raw.to_vec())
}

fn parse_name(raw: &str) -> Result<String, String> {
    validation::display_name(raw)
}

impl NewCustomer {
    pub fn parse(body: &CreateCustomerBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let email = errors.check("email", validation::email(&body.email));
        let name = match &body.name {
            None => Some(None),
            Some(n) => errors.check("name", parse_name(n)).map(Some),
        };
        let addresses = match &body.addresses {
            None => Some(Vec::new()),
            Some(a) => parse_addresses(a, &mut errors),
        };
        errors.finish(
            email
                .zip(name)
                .zip(addresses)
                .map(|((email, name), addresses)| NewCustomer {
                    email,
                    name,
                    addresses,
                }),
        )
    }

    /// The customer a checkout makes for an address it has not seen.
    pub fn from_checkout(email: &str) -> Self {
        NewCustomer {
            email: email.trim().to_owned(),
            name: None,
            addresses: Vec::new(),
        }
    }
}

impl CustomerPatch {
    pub fn parse(body: &PatchCustomerBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let name = match &body.name {
            None => Some(None),
            Some(n) => errors.check("name", parse_name(n)).map(Some),
        };
        let addresses = match &body.addresses {
            None => Some(None),
            Some(a) => parse_addresses(a, &mut errors).map(Some),
        };
        errors.finish(
            name.zip(addresses)
                .map(|(name, addresses)| CustomerPatch { name, addresses }),
        )
    }
}

impl NewCredit {
    pub fn parse(body: &CreditBody) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let amount = Money::parse_price(&body.amount, "amount", &mut errors);
        if amount.as_ref().is_some_and(|m| m.amount == 0) {
            errors.push("amount.amount", "must be more than 0");
        }
        let reason = body.reason.trim();
        let reason = errors.check(
            "reason",
            if reason.is_empty() || reason.chars().count() > 500 {
                Err("must be 1-500 characters".to_owned())
            } else {
                Ok(reason.to_owned())
            },
        );
        errors.finish(
            amount
                .zip(reason)
                .map(|(amount, reason)| NewCredit { amount, reason }),
        )
    }
}

/// `GET /v1/customers?q=`: a prefix of the e-mail address or of the name.
#[derive(Debug, Clone, Default)]
pub struct CustomerQuery {
    pub prefix: Option<String>,
}

impl CustomerQuery {
    pub fn parse(q: Option<&str>) -> Result<Self, Invalid> {
        let mut errors = FieldErrors::default();
        let prefix = match q {
            None => Some(None),
            Some(raw) => errors.check(
                "q",
                validation::search_prefix(raw, validation::MAX_EMAIL_LEN),
            ),
        };
        errors.finish(prefix.map(|prefix| CustomerQuery { prefix }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_each_named() {
        let body: CreateCustomerBody = serde_json::from_value(serde_json::json!({
            "email": "not an email",
            "name": " ",
            "addresses": [{"country": "Germany"}, {"country": "DE", "city": "x".repeat(201)}]
        }))
        .unwrap();
        let invalid = NewCustomer::parse(&body).unwrap_err();
        assert_eq!(
            invalid.fields(),
            ["email", "name", "addresses[0].country", "addresses[1].city"]
        );
        let credit: CreditBody = serde_json::from_value(serde_json::json!({
            "amount": {"amount": 0, "currency": "EUR"}, "reason": ""
        }))
        .unwrap();
        assert_eq!(
            NewCredit::parse(&credit).unwrap_err().fields(),
            ["amount.amount", "reason"]
        );
    }

    #[test]
    fn an_address_is_unique_by_its_trimmed_lower_case_form() {
        assert_eq!(email_key("  Ann@Example.COM "), "ann@example.com");
    }
}
