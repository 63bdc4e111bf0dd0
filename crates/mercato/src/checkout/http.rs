use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::cancel::CancelError;
use super::filters::{OrderFilter, RawOrderFilter};
use super::listing;
use super::model::{parse_reason, CheckoutBody, NewCheckout};
use super::refund_http::refund_problem;
use super::saga::CheckoutError;
use super::store::{self, FulfillmentStatus, Order, OrderStatus};
use crate::http::idempotency::idempotency_key;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::inventory::StrategyParam;
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{FieldError, FieldErrors, Invalid};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_checkout))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(post_cancel))
        .routes(routes!(get_timeline))
        .merge(super::quote::routes())
        .merge(super::fulfillment_http::routes())
        .merge(super::refund_http::routes())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why the order is cancelled (1 to 500 characters).
    pub reason: String,
}

/// Cancels a confirmed order nothing of which has shipped: it is refunded
/// in full (the card what it paid, store credit back to the wallet), its units
/// go back in stock, its promotion uses are freed, and `order.cancelled` is
/// sent. Cancelling a cancelled order answers it again. 409
/// `order-already-fulfilled` once units have shipped.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", params(("id" = String, Path)),
    request_body = CancelBody, security(("api_key" = [])),
    responses(
        (status = 200, body = Order, description = "cancelled (now or before)"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "units have shipped (`order-already-fulfilled`), the order is not confirmed (`order-not-cancellable`), or the provider refused the refund"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "the provider did not answer: the order is cancelled, its refund pending; retry"),
    ))]
pub async fn post_cancel(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CancelBody>,
) -> Result<Json<Order>, ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let mut errors = FieldErrors::default();
    let reason = errors.check("reason", parse_reason(&body.reason));
    let reason = errors.finish(reason)?;
    let checkout = &state
        .serving(&tenant.db)
        .checkout
        .acting_for(tenant.acting("order.cancel"));
    let order = checkout
        .cancel(tenant.merchant_id, id, &reason)
        .await
        .map_err(|e| match e {
            CancelError::NotFound => ApiError::NotFound("order"),
            CancelError::NotCancellable(status) => ApiError::Conflict {
                kind: "order-not-cancellable",
                title: "Order not cancellable",
                detail: format!("the order is {status}: only a confirmed order can be cancelled"),
                errors: vec![],
            },
            CancelError::Fulfilled(status) => ApiError::Conflict {
                kind: "order-already-fulfilled",
                title: "Order already fulfilled",
                detail: format!(
                    "the order is {status}: units have shipped; refund or return them instead"
                ),
                errors: vec![],
            },
            CancelError::Refund(e) => refund_problem(e),
            CancelError::Db(e) => e.into(),
        })?;
    Ok(Json(order))
}

impl From<CheckoutError> for ApiError {
    fn from(err: CheckoutError) -> Self {
        match err {
            CheckoutError::Reserve(e) => e.into(),
            CheckoutError::MixedCurrencies => {
                ApiError::field("items", "all items must be priced in one currency")
            }
            CheckoutError::NotForSale { sku, line } => ApiError::Conflict {
                kind: "not-for-sale",
                title: "Not for sale",
                detail: format!("SKU {sku:?} is archived (or its product is); it is not sold"),
                errors: vec![FieldError::new(
                    format!("items[{line}].sku"),
                    "is archived",
                )],
            },
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
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    ApiQuery(strategy): ApiQuery<StrategyParam>,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let new = NewCheckout::parse(&body)?;
    let mut errors = FieldErrors::default();
    let strategy = strategy.resolve(tenant.stock_strategy, &mut errors);
    let strategy = errors.finish(strategy)?;
    let key = idempotency_key(&headers)?;
    let order = state
        .serving(&tenant.db)
        .checkout
        .start(tenant.merchant_id, strategy, &new, key)
        .await?;
    match order.status {
        OrderStatus::Confirmed => Ok((StatusCode::CREATED, Json(order))),
        OrderStatus::Pending => Ok((StatusCode::ACCEPTED, Json(order))),
        // A retry of a checkout whose order was confirmed, then cancelled.
        OrderStatus::Cancelled => Ok((StatusCode::CREATED, Json(order))),
        OrderStatus::Failed => Err(ApiError::PaymentFailed {
            order_id: order.id,
            reason: order.failure_reason.unwrap_or_default(),
        }),
    }
}

/// `GET /v1/orders` parameters: paging, and filters that must all match.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderListParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// `pending`, `confirmed`, `failed` or `cancelled`.
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// `unfulfilled`, `partially_fulfilled` or `fulfilled`.
    #[param(value_type = Option<FulfillmentStatus>)]
    pub fulfillment_status: Option<String>,
    /// The customer's e-mail (case-insensitive).
    pub email: Option<String>,
    /// The customer's id (`GET /v1/customers`).
    #[param(value_type = Option<String>, format = Uuid)]
    pub customer_id: Option<String>,
    /// Orders with a line of this SKU.
    pub sku: Option<String>,
    /// Placed at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    pub created_from: Option<String>,
    /// Placed before this instant (RFC 3339).
    #[param(format = DateTime)]
    pub created_to: Option<String>,
}

/// Lists orders, oldest first, narrowed by any of the filters.
#[utoipa::path(get, path = "/v1/orders", params(OrderListParams), security(("api_key" = [])),
    responses(
        (status = 200, body = List<Order>),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a parameter is invalid: `errors` names it"),
    ))]
pub async fn list_orders(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<OrderListParams>,
) -> Result<Json<List<Order>>, ApiError> {
    let paging = PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    };
    let page = Page::parse(&paging);
    let filter = OrderFilter::parse(&RawOrderFilter {
        status: params.status.as_deref(),
        fulfillment_status: params.fulfillment_status.as_deref(),
        email: params.email.as_deref(),
        customer_id: params.customer_id.as_deref(),
        sku: params.sku.as_deref(),
        created_from: params.created_from.as_deref(),
        created_to: params.created_to.as_deref(),
    });
    let (page, filter) = match (page, filter) {
        (Ok(page), Ok(filter)) => (page, filter),
        (page, filter) => {
            let mut fields = page.err().map(|e| e.0).unwrap_or_default();
            fields.extend(filter.err().map(|e| e.0).unwrap_or_default());
            return Err(Invalid(fields).into());
        }
    };
    let mut tx = tenant.begin().await?;
    let rows = listing::list_orders(&mut tx, &filter, page).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |o| o.id)))
}

/// An order.
#[utoipa::path(get, path = "/v1/orders/{id}", params(("id" = String, Path)), security(("api_key" = [])),
    responses(
        (status = 200, body = Order),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_order(tenant: Tenant, Path(id): Path<String>) -> Result<Json<Order>, ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let mut tx = tenant.begin().await?;
    let order = store::get_order(&mut tx, id).await?;
    tx.commit().await?;
    order.map(Json).ok_or(ApiError::NotFound("order"))
}

/// One event in an order's life.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    /// The event's id (as `GET /v1/events` and webhooks show it).
    pub id: Uuid,
    /// `order.created`, `order.confirmed`, `order.refunded`, `order.fulfilled`,
    /// `order.returned`, `order.cancelled`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// The event's payload.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// The order's events, oldest first: created, confirmed (or failed), each
/// refund, shipment, return and its cancellation, read from the event log
/// webhooks are sent from.
#[utoipa::path(get, path = "/v1/orders/{id}/timeline", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<TimelineEntry>),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_timeline(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<List<TimelineEntry>>, ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let mut tx = tenant.begin().await?;
    if store::get_order(&mut tx, id).await?.is_none() {
        return Err(ApiError::NotFound("order"));
    }
    let events = crate::events::order_timeline(&mut tx, id).await?;
    tx.commit().await?;
    let data = events
        .into_iter()
        .map(|e| TimelineEntry {
            id: e.id,
            kind: e.kind,
            occurred_at: e.occurred_at,
            data: serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(List {
        data,
        next_cursor: None,
    }))
}
