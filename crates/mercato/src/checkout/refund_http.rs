//! Refund routes: refund an order's units or an amount, list its refunds.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::{parse_refund, RefundBody};
use super::refund::RefundError;
use super::refund_store::{self, RefundStatus, StoredRefund};
use super::store;
use crate::catalog::Money;
use crate::http::idempotency::idempotency_key;
use crate::http::{ApiError, ApiJson, Problem};
use crate::pagination::List;
use crate::state::AppState;
use crate::tenancy::Tenant;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_refund, list_refunds))
}

/// A refund of some of an order's units.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refund {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: RefundStatus,
    /// What goes back to the customer: the refunded units' share of what was paid
    /// (discounts and tax included), plus shipping on the refund that returns the last units.
    pub amount: Money,
    pub lines: Vec<RefundLine>,
    pub includes_shipping: bool,
    /// Why, for a refund of an amount.
    pub reason: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<StoredRefund> for Refund {
    fn from(refund: StoredRefund) -> Self {
        let currency = refund.currency;
        let money = |amount| Money {
            amount,
            currency: currency.clone(),
        };
        Refund {
            id: refund.id,
            order_id: refund.order_id,
            status: refund.status,
            amount: money(refund.amount),
            lines: refund
                .lines
                .iter()
                .map(|(sku, quantity, amount)| RefundLine {
                    sku: sku.clone(),
                    quantity: *quantity,
                    amount: money(*amount),
                })
                .collect(),
            includes_shipping: refund.includes_shipping,
            reason: refund.reason,
            created_at: refund.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefundLine {
    pub sku: String,
    pub quantity: i64,
    pub amount: Money,
}

/// Refunds some units of a confirmed order (`lines`: exactly what the customer
/// paid for them, discount share included), or an amount (`amount` and
/// `reason`). All refunds of an order never exceed what it was paid: a refund
/// of lines after refunds of amounts returns at most what is left, an amount
/// beyond it is a 422. Use an `Idempotency-Key`: a retry resumes the same refund.
#[utoipa::path(post, path = "/v1/orders/{id}/refunds", params(("id" = String, Path)),
    request_body = RefundBody, security(("api_key" = [])),
    responses(
        (status = 201, body = Refund),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the order is not confirmed, or the provider refused"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a field is invalid, or asks more than is left to refund: `errors` names it"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "the provider did not answer: the refund is pending; retry with the same Idempotency-Key"),
    ))]
pub async fn post_refund(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<(StatusCode, Json<Refund>), ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let request = parse_refund(&body)?;
    let key = idempotency_key(&headers)?;
    let checkout = &state
        .serving(&tenant.db)
        .checkout
        .acting_for(tenant.acting("order.refund"));
    let refund = checkout
        .refund(tenant.merchant_id, id, &request, key)
        .await
        .map_err(refund_problem)?;
    Ok((StatusCode::CREATED, Json(refund.into())))
}

/// The refunds of an order, oldest first, each with its lines (none for a
/// refund of an amount) and status.
#[utoipa::path(get, path = "/v1/orders/{id}/refunds", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<Refund>),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_refunds(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<List<Refund>>, ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let mut tx = tenant.begin().await?;
    let Some(order) = store::get_order(&mut tx, id).await? else {
        return Err(ApiError::NotFound("order"));
    };
    let refunds = refund_store::refunds_of(&mut tx, id, &order.total.currency).await?;
    tx.commit().await?;
    Ok(Json(List {
        data: refunds.into_iter().map(Refund::from).collect(),
        next_cursor: None,
    }))
}

pub(super) fn refund_problem(e: RefundError) -> ApiError {
    match e {
        RefundError::NotFound => ApiError::NotFound("order"),
        RefundError::NotRefundable(status) => ApiError::Conflict {
            kind: "order-not-refundable",
            title: "Order not refundable",
            detail: format!("the order is {status}: only a confirmed order can be refunded"),
            errors: vec![],
        },
        RefundError::Invalid(invalid) => invalid.into(),
        RefundError::Refused(e) => ApiError::Conflict {
            kind: "refund-refused",
            title: "Refund refused",
            detail: format!("the payment provider refused the refund: {e}"),
            errors: vec![],
        },
        RefundError::Provider(e) => {
            tracing::error!(error = %e, "refund call failed");
            ApiError::Unavailable(
                "the payment provider failed; the refund is pending: retry with the same Idempotency-Key",
            )
        }
        RefundError::Db(e) => e.into(),
    }
}
