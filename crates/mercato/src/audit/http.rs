//! `GET /v1/audit-log`: the merchant's own trail.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AuditFilter, AuditRecord, RawAuditFilter};
use crate::db::MerchantId;
use crate::http::{ApiError, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::{Admin, Tenant};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit_log))
        .routes(routes!(list_merchants_audit_log))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditLogParams {
    /// Who: a key's fingerprint (`key:…`), a person's or operator's e-mail, `cli:{user}`, `admin`.
    pub actor: Option<String>,
    /// What was asked: `product.update`, `stock.set`, `order.cancel`, …
    pub action: Option<String>,
    /// A table (`products`), or one row of it (`products/{id}`).
    pub target: Option<String>,
    /// From this time on (RFC 3339).
    pub from: Option<String>,
    /// Before this time (RFC 3339).
    pub to: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// The merchant's audit trail, newest first: every change made for one of
/// its keys or by the platform admin, with who, from where and the diff.
#[utoipa::path(get, path = "/v1/audit-log", params(AuditLogParams),
    security(("api_key" = [])),
    responses(
        (status = 200, body = List<AuditRecord>),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit_log(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<AuditLogParams>,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    let mut tx = tenant.begin().await?;
    let page = page_of(&mut tx, &params).await?;
    tx.commit().await?;
    Ok(Json(page))
}

/// A merchant's audit trail, for the platform's operators (and the admin
/// token): the same records and filters as the merchant's own.
#[utoipa::path(get, path = "/v1/merchants/{id}/audit-log", params(("id" = String, Path), AuditLogParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = List<AuditRecord>),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_merchants_audit_log(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<AuditLogParams>,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    let merchant = MerchantId(ApiError::path_id(&id, "merchant")?);
    if !crate::tenancy::merchant_exists(&state.db.app, merchant).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    let db = state
        .cells
        .merchant_db(merchant)
        .await
        .map_err(crate::tenancy::unroutable)?;
    let mut tx = db.begin().await?;
    let page = page_of(&mut tx, &params).await?;
    tx.commit().await?;
    Ok(Json(page))
}

/// One page of the transaction merchant's trail.
async fn page_of(
    tx: &mut crate::db::TenantTx,
    params: &AuditLogParams,
) -> Result<List<AuditRecord>, ApiError> {
    let page = Page::parse(&PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    })?;
    let filter = AuditFilter::parse(&RawAuditFilter {
        actor: params.actor.as_deref(),
        action: params.action.as_deref(),
        target: params.target.as_deref(),
        from: params.from.as_deref(),
        to: params.to.as_deref(),
    })?;
    let rows = super::list(tx, &filter, page).await?;
    Ok(List::from_rows(rows, page, |r| r.id))
}
