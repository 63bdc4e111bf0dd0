use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, LegacyOrder, NewLegacyOrder};
use crate::catalog::Money;
use crate::http::{ApiError, ApiJson, Problem};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{self, FieldErrors, Invalid};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_legacy_order))
        .routes(routes!(get_legacy_order))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyCustomerBody {
    pub email: String,
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLegacyOrder {
    pub customer: LegacyCustomerBody,
    pub total: Money,
}

fn parse(body: &CreateLegacyOrder) -> Result<NewLegacyOrder, Invalid> {
    let mut errors = FieldErrors::default();
    let email = errors.check("customer.email", validation::email(&body.customer.email));
    let name = errors.check(
        "customer.name",
        validation::display_name(&body.customer.name),
    );
    // MAX_PRICE is also what the legacy shape's numeric(12,2) holds.
    let total = Money::parse_price(&body.total, "total", &mut errors);
    let parsed = email.zip(name).zip(total);
    errors.finish(parsed.map(|((email, name), total)| NewLegacyOrder {
        email: email.to_lowercase(),
        name,
        total,
    }))
}

/// Records an order. While the migration runs, it is written to both shapes
/// in one transaction, as its phase says.
#[utoipa::path(post, path = "/v1/legacy-orders", request_body = CreateLegacyOrder,
    security(("api_key" = [])),
    responses(
        (status = 201, body = LegacyOrder),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_legacy_order(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateLegacyOrder>,
) -> Result<(StatusCode, Json<LegacyOrder>), ApiError> {
    let order = parse(&body)?;
    let view = state.serving(&tenant.db).migration.view().await;
    let mut tx = tenant.begin().await?;
    let id = store::next_id(&mut tx).await?;
    if view.phase.writes_old() {
        store::insert_old(&mut tx, id, &order).await?;
    }
    if view.phase.writes_new() {
        store::upsert_new(&mut tx, id, &order).await?;
    }
    let read_new = !view.phase.writes_old();
    let created = if read_new {
        store::read_new(&mut tx, id).await?
    } else {
        store::read_old(&mut tx, id).await?
    };
    tx.commit().await?;
    let created = created.ok_or(sqlx::Error::RowNotFound)?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Reads an order from the shape the read switch picks for its id; a sample of
/// reads also reads the other shape and counts any difference.
#[utoipa::path(get, path = "/v1/legacy-orders/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = LegacyOrder),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_legacy_order(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<LegacyOrder>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound("order"))?;
    let switch = &state.serving(&tenant.db).migration;
    let view = switch.view().await;
    let key = id.to_string();
    let new_first = view.reads_new(&key);
    let mut tx = tenant.begin().await?;
    let primary = if new_first {
        store::read_new(&mut tx, id).await?
    } else {
        store::read_old(&mut tx, id).await?
    };
    // The shadow read is a diagnostic: if it fails, the request still succeeds.
    let shadow = if view.shadows(&key) {
        let other = if new_first {
            store::read_old(&mut tx, id).await
        } else {
            store::read_new(&mut tx, id).await
        };
        other
            .map_err(|e| tracing::warn!(error = %e, "shadow read failed"))
            .ok()
    } else {
        None
    };
    // Read-only: a transaction a failed shadow read aborted has nothing to lose.
    let _ = tx.commit().await;
    if let Some(other) = shadow {
        let fingerprint =
            |o: &Option<LegacyOrder>| o.as_ref().map(LegacyOrder::fingerprint).unwrap_or_default();
        let (old, new) = if new_first {
            (&other, &primary)
        } else {
            (&primary, &other)
        };
        match switch
            .compare(&key, &fingerprint(old), &fingerprint(new))
            .await
        {
            Ok(mismatch) => {
                let result = if mismatch { "mismatch" } else { "match" };
                metrics::counter!("shadow_reads_total", "result" => result).increment(1);
            }
            Err(e) => tracing::warn!(error = %e, "recording a shadow read failed"),
        }
    }
    primary.map(Json).ok_or(ApiError::NotFound("order"))
}
