use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::{parse_lines, parse_ttl, ItemBody, ReservationStatus, StrategyParam};
use super::products::{ProductDeletion, VariantArchival};
use super::store::{self, InventoryError, Reservation, ReserveError, Settlement, StockLevel};
use crate::catalog::Sku;
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{FieldError, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_inventory, put_inventory))
        .routes(routes!(post_reservation))
        .routes(routes!(get_reservation))
        .routes(routes!(release_reservation))
        .routes(routes!(delete_product))
        .routes(routes!(delete_variant))
}

/// Archives a variant: it is no longer sold, and orders still name it (409
/// while any of its units are reserved).
#[utoipa::path(delete, path = "/v1/products/{id}/variants/{sku}",
    params(("id" = String, Path), ("sku" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 204),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "units reserved"),
    ))]
pub async fn delete_variant(
    tenant: Tenant,
    Path((id, sku)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = ApiError::path_id(&id, "product")?;
    let mut tx = tenant.begin_audited("variant.delete").await?;
    let archival = super::archive_variant(&mut tx, id, &sku).await?;
    tx.commit().await?;
    match archival {
        VariantArchival::Archived => Ok(StatusCode::NO_CONTENT),
        VariantArchival::NotFound => Err(ApiError::NotFound("variant")),
        VariantArchival::UnitsReserved(units) => Err(ApiError::Conflict {
            kind: "variant-has-reservations",
            title: "Variant has reserved units",
            detail: format!(
                "{units} units of SKU {sku:?} are reserved; release them or let them expire first"
            ),
            errors: vec![FieldError::new("sku", format!("{units} units reserved"))],
        }),
    }
}

/// Deletes a product and its variants (409 while any of its units are reserved).
#[utoipa::path(delete, path = "/v1/products/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 204),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "units reserved"),
    ))]
pub async fn delete_product(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = ApiError::path_id(&id, "product")?;
    let mut tx = tenant.begin_audited("product.archive").await?;
    let deletion = super::delete_product(&mut tx, id).await?;
    tx.commit().await?;
    match deletion {
        ProductDeletion::Deleted => Ok(StatusCode::NO_CONTENT),
        ProductDeletion::NotFound => Err(ApiError::NotFound("product")),
        ProductDeletion::UnitsReserved => Err(ApiError::Conflict {
            kind: "product-has-reservations",
            title: "Product has reserved units",
            detail: "units of this product are reserved; release them or let them expire first"
                .into(),
            errors: vec![],
        }),
    }
}

impl From<InventoryError> for ApiError {
    fn from(err: InventoryError) -> Self {
        match err {
            InventoryError::UnknownSku(_) => ApiError::NotFound("sku"),
            InventoryError::BelowReserved { sku, reserved } => ApiError::Conflict {
                kind: "below-reserved",
                title: "On hand below reserved",
                detail: format!(
                    "SKU {sku:?} has {reserved} units reserved; on_hand cannot go below that"
                ),
                errors: vec![FieldError::new(
                    "on_hand",
                    format!("must be at least {reserved}"),
                )],
            },
            InventoryError::Db(e) => e.into(),
        }
    }
}

impl From<ReserveError> for ApiError {
    fn from(err: ReserveError) -> Self {
        // The JSON path of the request item the error is about.
        let field = |line: Option<usize>| match line {
            Some(i) => format!("items[{i}].sku"),
            None => "items".into(),
        };
        match err {
            ReserveError::OutOfStock { sku, line } => ApiError::Conflict {
                kind: "out-of-stock",
                title: "Out of stock",
                detail: format!("SKU {sku:?} does not have enough units available"),
                errors: vec![FieldError::new(field(line), "not enough units available")],
            },
            ReserveError::UnknownSku { line, .. } => {
                ApiError::field(field(line), "no such SKU in the catalog")
            }
            ReserveError::Busy => {
                ApiError::Unavailable("too many requests are queued for this SKU; retry shortly")
            }
            ReserveError::Db(e) => e.into(),
        }
    }
}

fn sku_param(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|_| ApiError::NotFound("sku"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutInventory {
    /// Units physically in stock, 0 or more.
    pub on_hand: i64,
    /// A sale that takes the units on hand down to this (0 or more) emits an
    /// `inventory.low_stock` event. Absent: the threshold set before stays.
    pub low_stock_threshold: Option<i64>,
}

/// Sets a SKU's units on hand (409 if below what is reserved).
#[utoipa::path(put, path = "/v1/inventory/{sku}", params(("sku" = String, Path)),
    request_body = PutInventory, security(("api_key" = [])),
    responses(
        (status = 200, body = StockLevel),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_inventory(
    tenant: Tenant,
    Path(sku): Path<String>,
    ApiJson(body): ApiJson<PutInventory>,
) -> Result<Json<StockLevel>, ApiError> {
    let sku = sku_param(&sku)?;
    if body.on_hand < 0 {
        return Err(ApiError::field("on_hand", "must not be negative"));
    }
    if body.low_stock_threshold.is_some_and(|t| t < 0) {
        return Err(ApiError::field(
            "low_stock_threshold",
            "must not be negative",
        ));
    }
    let mut tx = tenant.begin_audited("stock.set").await?;
    let level = store::set_on_hand(&mut tx, &sku, body.on_hand, body.low_stock_threshold).await?;
    tx.commit().await?;
    Ok(Json(level))
}

/// A SKU's units on hand, reserved and available.
#[utoipa::path(get, path = "/v1/inventory/{sku}", params(("sku" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = StockLevel),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_inventory(
    tenant: Tenant,
    Path(sku): Path<String>,
) -> Result<Json<StockLevel>, ApiError> {
    let sku = sku_param(&sku)?;
    let mut tx = tenant.begin().await?;
    let level = store::get_stock(&mut tx, &sku).await?;
    tx.commit().await?;
    level.map(Json).ok_or(ApiError::NotFound("sku"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReservation {
    pub items: Vec<ItemBody>,
    /// Seconds until the reservation expires (1 to 3600, default 900).
    pub ttl_seconds: Option<i64>,
}

/// Reserves all items or none; units stay reserved until released, expired or sold.
#[utoipa::path(post, path = "/v1/reservations", params(StrategyParam),
    request_body = CreateReservation, security(("api_key" = [])),
    responses(
        (status = 201, body = Reservation),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "out of stock"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_reservation(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(strategy): ApiQuery<StrategyParam>,
    ApiJson(body): ApiJson<CreateReservation>,
) -> Result<(StatusCode, Json<Reservation>), ApiError> {
    let mut errors = FieldErrors::default();
    let lines = parse_lines(&body.items, &mut errors);
    let ttl = parse_ttl(body.ttl_seconds, &mut errors);
    let strategy = strategy.resolve(tenant.stock_strategy, &mut errors);
    let ((lines, ttl), strategy) = errors.finish(lines.zip(ttl).zip(strategy))?;
    let reservation = state
        .serving(&tenant.db)
        .inventory
        .reserve(tenant.merchant_id, strategy, &lines, ttl)
        .await?;
    Ok((StatusCode::CREATED, Json(reservation)))
}

fn reservation_id(raw: &str) -> Result<Uuid, ApiError> {
    ApiError::path_id(raw, "reservation")
}

/// A reservation and where it stands.
#[utoipa::path(get, path = "/v1/reservations/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Reservation),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_reservation(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, ApiError> {
    let id = reservation_id(&id)?;
    let mut tx = tenant.begin().await?;
    let reservation = store::get_reservation(&mut tx, id).await?;
    tx.commit().await?;
    reservation
        .map(Json)
        .ok_or(ApiError::NotFound("reservation"))
}

/// Releases a reservation's units. Idempotent: releasing a released (or
/// expired) reservation answers its current state; a sold one is a 409.
#[utoipa::path(post, path = "/v1/reservations/{id}/release", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Reservation),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "already sold"),
    ))]
pub async fn release_reservation(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, ApiError> {
    let id = reservation_id(&id)?;
    let mut tx = tenant.begin().await?;
    store::settle_reservation(&mut tx, id, Settlement::Released).await?;
    let reservation = store::get_reservation(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("reservation"))?;
    tx.commit().await?;
    if reservation.status == ReservationStatus::Consumed {
        return Err(ApiError::Conflict {
            kind: "reservation-consumed",
            title: "Reservation already sold",
            detail: "this reservation was consumed by an order and cannot be released".into(),
            errors: vec![],
        });
    }
    Ok(Json(reservation))
}
