//! `GET /v1/customers/{id}/export` and `POST /v1/customers/{id}/erase`.

use axum::extract::Path;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::CustomerExport;
use crate::customers::Customer;
use crate::http::{ApiError, Problem};
use crate::state::AppState;
use crate::tenancy::Tenant;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_export))
        .routes(routes!(post_erase))
}

fn customer_id(raw: &str) -> Result<Uuid, ApiError> {
    ApiError::path_id(raw, "customer")
}

/// Everything held about a customer, as JSON: the record, their orders, store
/// credit and its ledger, remediation adjustments, mail.
#[utoipa::path(get, path = "/v1/customers/{id}/export", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = CustomerExport),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_export(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<CustomerExport>, ApiError> {
    let id = customer_id(&id)?;
    let mut tx = tenant.begin().await?;
    let export = super::export(&mut tx, id).await?;
    tx.commit().await?;
    export.map(Json).ok_or(ApiError::NotFound("customer"))
}

/// Erases a customer's personal data: their address, name and addresses are
/// replaced on the customer, their orders, adjustments, wallet, mail and
/// events; money, quantities and ids stay, so the books still balance.
/// Erasing again changes nothing more.
#[utoipa::path(post, path = "/v1/customers/{id}/erase", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Customer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_erase(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    let id = customer_id(&id)?;
    let mut tx = tenant.begin_audited("customer.erase").await?;
    let erased = super::erase(&mut tx, id).await?;
    tx.commit().await?;
    erased.map(Json).ok_or(ApiError::NotFound("customer"))
}
