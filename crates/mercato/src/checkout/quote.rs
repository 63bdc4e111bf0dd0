//! `POST /v1/pricing/quote`: a cart priced as a checkout would price it now.
//! Checkout's, not pricing's: the cart is built the way checkout builds it
//! (catalog prices, the customer's first order), then priced by pricing.

use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{parse_country, parse_promo, CustomerBody};
use super::saga::cart_for;
use crate::http::{ApiError, ApiJson};
use crate::inventory::{parse_lines, ItemBody};
use crate::pricing::PriceError;
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{self, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_quote))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    pub items: Vec<ItemBody>,
    pub customer: Option<CustomerBody>,
    pub promo_code: Option<String>,
    /// Ship-to country (ISO 3166-1 alpha-2): the tax rate follows it.
    pub ship_to_country: Option<String>,
}

/// Prices a cart as a checkout would now, with no side effects: every line,
/// discount (and the rule behind it), shipping, tax and the total, and why each
/// other rule did not apply.
#[utoipa::path(post, path = "/v1/pricing/quote", request_body = QuoteBody,
    security(("api_key" = [])), tag = "pricing",
    responses((status = 200, description = "The breakdown", content_type = "application/json")))]
pub async fn post_quote(
    tenant: Tenant,
    ApiJson(body): ApiJson<QuoteBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut errors = FieldErrors::default();
    let lines = parse_lines(&body.items, &mut errors);
    let email = match &body.customer {
        None => Some(None),
        Some(c) => errors
            .check("customer.email", validation::email(&c.email))
            .map(Some),
    };
    let promo = match &body.promo_code {
        None => Some(None),
        Some(p) => errors.check("promo_code", parse_promo(p)).map(Some),
    };
    let country = match &body.ship_to_country {
        None => Some(None),
        Some(c) => errors.check("ship_to_country", parse_country(c)).map(Some),
    };
    let (((lines, email), promo), country) =
        errors.finish(lines.zip(email).zip(promo).zip(country))?;
    let mut tx = tenant.begin().await?;
    let cart = cart_for(
        &mut tx,
        &lines,
        email.as_deref(),
        promo.as_deref(),
        country.as_deref(),
    )
    .await?;
    let quote = crate::pricing::price_cart(&mut tx, cart)
        .await
        .map_err(|e| match e {
            PriceError::Pricing(e) => ApiError::field("items", format!("cannot be priced: {e}")),
            PriceError::Db(e) => e.into(),
        })?;
    tx.commit().await?;
    let breakdown = serde_json::to_value(&quote.priced.breakdown)
        .map_err(|e| ApiError::Internal(sqlx::Error::Protocol(e.to_string())))?;
    Ok(Json(breakdown))
}
