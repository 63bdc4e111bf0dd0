//! `GET /v1/audit-log`: the merchant's own trail.

use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AuditFilter, AuditRecord, RawAuditFilter};
use crate::http::{ApiError, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::state::AppState;
use crate::tenancy::Tenant;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditLogParams {
    /// Who: a key's fingerprint (`key:…`), `admin`, a person's id.
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
    let mut tx = tenant.begin().await?;
    let rows = super::list(&mut tx, &filter, page).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |r| r.id)))
}
