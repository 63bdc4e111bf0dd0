//! Shipping routes: ship an order's units, list its shipments, take
//! shipped units back (returns), choose the merchant's fulfilment provider.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::fulfillment::{FulfillError, NewFulfillment};
use super::fulfillment_store::StoredFulfillment;
use super::model::parse_order_lines;
use super::refund_http::{refund_problem, Refund};
use super::returns::ReturnError;
use super::store::FulfillmentStatus;
use crate::http::idempotency::idempotency_key;
use crate::http::{ApiError, ApiJson, Problem};
use crate::inventory::ItemBody;
use crate::pagination::List;
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_fulfillment, list_fulfillments))
        .routes(routes!(post_return))
        .routes(routes!(get_fulfillment_settings, put_fulfillment_settings))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FulfillmentBody {
    /// The units shipped: each SKU once, at most what is left to ship of it.
    pub lines: Vec<ItemBody>,
    /// 1 to 100 characters.
    pub carrier: Option<String>,
    /// 1 to 100 characters; a provider may assign one.
    pub tracking_number: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FulfillmentLine {
    pub sku: String,
    pub quantity: i64,
}

/// A shipment of some of an order's units.
#[derive(Debug, Serialize, ToSchema)]
pub struct Fulfillment {
    pub id: Uuid,
    pub order_id: Uuid,
    /// The provider that shipped it.
    pub provider: String,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    pub lines: Vec<FulfillmentLine>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A shipment just made, with where the order's shipping stands now.
#[derive(Debug, Serialize, ToSchema)]
pub struct FulfillmentCreated {
    #[serde(flatten)]
    pub fulfillment: Fulfillment,
    pub fulfillment_status: FulfillmentStatus,
}

impl From<StoredFulfillment> for Fulfillment {
    fn from(f: StoredFulfillment) -> Self {
        Fulfillment {
            id: f.id,
            order_id: f.order_id,
            provider: f.provider,
            carrier: f.carrier,
            tracking_number: f.tracking_number,
            lines: f
                .lines
                .into_iter()
                .map(|(sku, quantity)| FulfillmentLine { sku, quantity })
                .collect(),
            created_at: f.created_at,
        }
    }
}

fn label(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() || text.chars().count() > 100 {
        return Err("must be 1-100 characters".into());
    }
    Ok(text.to_owned())
}

fn parse_fulfillment(body: &FulfillmentBody) -> Result<NewFulfillment, ApiError> {
    let mut errors = FieldErrors::default();
    let lines = parse_order_lines(&body.lines, &mut errors);
    let mut optional = |field: &str, raw: &Option<String>| match raw {
        None => Some(None),
        Some(raw) => errors.check(field, label(raw)).map(Some),
    };
    let carrier = optional("carrier", &body.carrier);
    let tracking_number = optional("tracking_number", &body.tracking_number);
    let parsed =
        lines
            .zip(carrier)
            .zip(tracking_number)
            .map(|((lines, carrier), tracking_number)| NewFulfillment {
                lines,
                carrier,
                tracking_number,
            });
    Ok(errors.finish(parsed)?)
}

/// Ships units of a confirmed order through the merchant's fulfilment
/// provider (`manual` unless another was chosen); the order's
/// `fulfillment_status` moves to `partially_fulfilled` or `fulfilled`, and
/// `order.fulfilled` is sent. Never more than was bought, less what was
/// shipped or refunded: a line asking more is a 422 naming it. Use an
/// `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/orders/{id}/fulfillments", params(("id" = String, Path)),
    request_body = FulfillmentBody, security(("api_key" = [])),
    responses(
        (status = 201, body = FulfillmentCreated),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the order is not confirmed (`order-not-fulfillable`), or the provider refused (`fulfillment-refused`)"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a line names a SKU not in the order or more units than are left to ship: `errors` names it"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "the provider did not answer; nothing was recorded"),
    ))]
pub async fn post_fulfillment(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FulfillmentBody>,
) -> Result<(StatusCode, Json<FulfillmentCreated>), ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let new = parse_fulfillment(&body)?;
    let key = idempotency_key(&headers)?;
    let checkout = &state
        .serving(&tenant.db)
        .checkout
        .acting_for(tenant.acting("order.fulfill"));
    let (fulfillment, status) = checkout
        .fulfill(tenant.merchant_id, id, &new, key)
        .await
        .map_err(|e| match e {
            FulfillError::NotFound => ApiError::NotFound("order"),
            FulfillError::NotFulfillable(status) => ApiError::Conflict {
                kind: "order-not-fulfillable",
                title: "Order not fulfillable",
                detail: format!("the order is {status}: only a confirmed order is fulfilled"),
                errors: vec![],
            },
            FulfillError::Invalid(invalid) => invalid.into(),
            FulfillError::Refused(why) => ApiError::Conflict {
                kind: "fulfillment-refused",
                title: "Fulfilment refused",
                detail: format!("the fulfilment provider refused: {why}"),
                errors: vec![],
            },
            e @ (FulfillError::UnknownProvider(_) | FulfillError::Unavailable(_)) => {
                tracing::error!(error = %e, "fulfilment failed");
                ApiError::Unavailable("the fulfilment provider is not available; retry")
            }
            FulfillError::Db(e) => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(FulfillmentCreated {
            fulfillment: fulfillment.into(),
            fulfillment_status: status,
        }),
    ))
}

/// The shipments of an order, oldest first.
#[utoipa::path(get, path = "/v1/orders/{id}/fulfillments", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<Fulfillment>),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_fulfillments(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<List<Fulfillment>>, ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let checkout = &state.serving(&tenant.db).checkout;
    let all = checkout
        .fulfillments(tenant.merchant_id, id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    Ok(Json(List {
        data: all.into_iter().map(Fulfillment::from).collect(),
        next_cursor: None,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FulfillmentSettings {
    /// The fulfilment provider that ships the merchant's orders (`manual`, or one plugged in).
    pub provider: String,
}

/// Which fulfilment provider ships the merchant's orders.
#[utoipa::path(get, path = "/v1/fulfillment-settings", security(("api_key" = [])),
    responses((status = 200, body = FulfillmentSettings)))]
pub async fn get_fulfillment_settings(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<Json<FulfillmentSettings>, ApiError> {
    let checkout = &state.serving(&tenant.db).checkout;
    let provider = checkout.fulfillment_provider(tenant.merchant_id).await?;
    Ok(Json(FulfillmentSettings { provider }))
}

/// Chooses the fulfilment provider that ships the merchant's orders; an
/// unknown one is a 422 naming `provider`.
#[utoipa::path(put, path = "/v1/fulfillment-settings", request_body = FulfillmentSettings,
    security(("api_key" = [])),
    responses(
        (status = 200, body = FulfillmentSettings),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_fulfillment_settings(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<FulfillmentSettings>,
) -> Result<Json<FulfillmentSettings>, ApiError> {
    let checkout = &state
        .serving(&tenant.db)
        .checkout
        .acting_for(tenant.acting("fulfillment_settings.update"));
    if !checkout
        .choose_fulfillment_provider(tenant.merchant_id, &body.provider)
        .await?
    {
        let names = checkout.fulfillment.names().join(", ");
        return Err(ApiError::field(
            "provider",
            format!("must be one of {names}"),
        ));
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnBody {
    /// The units sent back: each SKU once, at most what was shipped and not returned.
    pub lines: Vec<ItemBody>,
    /// Whether the units go back on hand.
    pub restock: bool,
}

/// Shipped units taken back, with the refund they made.
#[derive(Debug, Serialize, ToSchema)]
pub struct Return {
    pub id: Uuid,
    pub order_id: Uuid,
    pub lines: Vec<FulfillmentLine>,
    pub restock: bool,
    /// What was paid for those units (discount share included), paid back.
    pub refund: Refund,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Takes back shipped units of an order: refunds what was paid for them
/// (discount share included, as a refund of those lines would) and, with
/// `restock`, puts them back on hand; `order.returned` is sent. More units
/// than were shipped and not returned is a 422 naming the line. Use an
/// `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/orders/{id}/returns", params(("id" = String, Path)),
    request_body = ReturnBody, security(("api_key" = [])),
    responses(
        (status = 201, body = Return),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the order is not confirmed (`order-not-returnable`), or the provider refused the refund"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a line names a SKU not in the order or more units than were shipped and not returned"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "the payment provider did not answer: the return is recorded, its refund pending; retry with the same Idempotency-Key"),
    ))]
pub async fn post_return(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReturnBody>,
) -> Result<(StatusCode, Json<Return>), ApiError> {
    let id = ApiError::path_id(&id, "order")?;
    let mut errors = FieldErrors::default();
    let lines = parse_order_lines(&body.lines, &mut errors);
    let lines = errors.finish(lines)?;
    let key = idempotency_key(&headers)?;
    let checkout = &state
        .serving(&tenant.db)
        .checkout
        .acting_for(tenant.acting("order.return"));
    let (ret, refund) = checkout
        .take_return(tenant.merchant_id, id, &lines, body.restock, key)
        .await
        .map_err(|e| match e {
            ReturnError::NotFound => ApiError::NotFound("order"),
            ReturnError::NotReturnable(status) => ApiError::Conflict {
                kind: "order-not-returnable",
                title: "Order not returnable",
                detail: format!("the order is {status}: only a confirmed order takes returns"),
                errors: vec![],
            },
            ReturnError::Invalid(invalid) => invalid.into(),
            ReturnError::Refund(e) => refund_problem(e),
            ReturnError::Db(e) => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(Return {
            id: ret.id,
            order_id: ret.order_id,
            lines: ret
                .lines
                .into_iter()
                .map(|(sku, quantity)| FulfillmentLine { sku, quantity })
                .collect(),
            restock: ret.restock,
            refund: refund.into(),
            created_at: ret.created_at,
        }),
    ))
}
