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
}

#[derive(Debug, Clone)]
pub struct NewCheckout {
    pub email: String,
    pub lines: Vec<Line>,
    pub payment_method: String,
    pub promo_code: Option<String>,
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
        let parsed = email.zip(lines).zip(method).zip(promo).map(
            |(((email, lines), payment_method), promo_code)| NewCheckout {
                email,
                lines,
                payment_method,
                promo_code,
            },
        );
        errors.finish(parsed)
    }
}
