use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::{CheckoutBody, NewCheckout};
use super::saga::CheckoutError;
use super::store::{self, Order, OrderStatus};
use crate::http::auth::Tenant;
use crate::http::idempotency::IDEMPOTENCY_KEY;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::inventory::StrategyParam;
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::validation::{FieldError, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_checkout))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
}

impl From<CheckoutError> for ApiError {
    fn from(err: CheckoutError) -> Self {
        match err {
            CheckoutError::Reserve(e) => e.into(),
            CheckoutError::MixedCurrencies => {
                ApiError::field("items", "all items must be priced in one currency")
            }
            CheckoutError::Pricing(e) => ApiError::field("items", format!("cannot be priced: {e}")),
            CheckoutError::PromoExhausted(rule) => ApiError::Conflict {
                kind: "promo-code-exhausted",
                title: "Promo code used up",
                detail: format!(
                    "the promotion this code names ({rule}) has reached its limit; nothing was reserved or charged"
                ),
                errors: vec![FieldError::new("promo_code", "is used up")],
            },
            CheckoutError::Payment(e) => {
                tracing::error!(error = %e, "payment call failed");
                ApiError::Unavailable(
                    "the payment provider failed; retry with the same Idempotency-Key",
                )
            }
            CheckoutError::Db(e) => e.into(),
        }
    }
}

/// Reserves the items, takes payment and confirms the order.
///
/// 201 with the confirmed order; 402 if payment fails (nothing stays reserved);
/// 409 if out of stock; 202 with a `pending` order when the payment provider's
/// answer is unknown (it is reconciled in the background).
#[utoipa::path(post, path = "/v1/checkouts", params(StrategyParam),
    request_body = CheckoutBody, security(("api_key" = [])),
    responses(
        (status = 201, body = Order, description = "confirmed"),
        (status = 202, body = Order, description = "payment outcome pending"),
        (status = 402, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_checkout(
    tenant: Tenant,
    headers: HeaderMap,
    ApiQuery(strategy): ApiQuery<StrategyParam>,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let new = NewCheckout::parse(&body)?;
    let mut errors = FieldErrors::default();
    let strategy = strategy.resolve(tenant.stock_strategy, &mut errors);
    let strategy = errors.finish(strategy)?;
    let key = headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok());
    let order = tenant
        .state()
        .checkout
        .start(tenant.merchant_id, strategy, &new, key)
        .await?;
    match order.status {
        OrderStatus::Confirmed => Ok((StatusCode::CREATED, Json(order))),
        OrderStatus::Pending => Ok((StatusCode::ACCEPTED, Json(order))),
        OrderStatus::Failed => Err(ApiError::PaymentFailed {
            order_id: order.id,
            reason: order.failure_reason.unwrap_or_default(),
        }),
    }
}

#[utoipa::path(get, path = "/v1/orders", params(PageParams), security(("api_key" = [])),
    responses((status = 200, body = List<Order>)))]
pub async fn list_orders(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<List<Order>>, ApiError> {
    let page = Page::parse(&params)?;
    let mut tx = tenant.begin().await?;
    let rows = store::list_orders(&mut tx, page).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |o| o.id)))
}

#[utoipa::path(get, path = "/v1/orders/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses(
        (status = 200, body = Order),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_order(tenant: Tenant, Path(id): Path<String>) -> Result<Json<Order>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::NotFound("order"))?;
    let mut tx = tenant.begin().await?;
    let order = store::get_order(&mut tx, id).await?;
    tx.commit().await?;
    order.map(Json).ok_or(ApiError::NotFound("order"))
}
