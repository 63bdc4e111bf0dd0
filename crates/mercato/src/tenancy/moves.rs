//! The admin API of moves: start one (`serve` drives it) and watch it.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Admin;
use super::{merchant_exists, MerchantId};
use crate::cells::{start_move_in_serve, MoveError, MoveRecord};
use crate::http::{ApiError, ApiJson, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_move))
        .routes(routes!(get_move))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMove {
    /// The cell to move to: `main` or a name `serve` was given with `--cell`.
    pub to: String,
    /// Keep the old copy (and the reverse stream, for `mercato tenants
    /// rollback`) until `mercato tenants cleanup`.
    #[serde(default)]
    pub keep_source: bool,
}

/// Moves a merchant to another cell while it trades (platform admin only).
/// Answers at once; `serve` drives the move (any instance, also after a
/// restart): watch it at the `Location` answered.
#[utoipa::path(post, path = "/v1/merchants/{id}/moves", params(("id" = String, Path)),
    request_body = StartMove, security(("admin_token" = [])),
    responses(
        (status = 202, body = MoveRecord, description = "the move is recorded and under way"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "a move of the merchant is running, or the cell's schema is behind"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "an unknown cell, or the one the merchant is in"),
    ))]
pub async fn post_move(
    admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StartMove>,
) -> Result<Response, ApiError> {
    let merchant = MerchantId(ApiError::path_id(&id, "merchant")?);
    if !merchant_exists(&state.db.app, merchant).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    let mv = start_move_in_serve(&state.moves.pools, merchant, &body.to, body.keep_source)
        .await
        .map_err(refused)?;
    state.moves.wake();
    // In the merchant's trail: who moved it where (the move's rows are its own record).
    crate::db::TenantTx::record_audit_alone(
        &state.db.app,
        merchant,
        &admin.acting("merchant.move"),
        ("tenant_moves", &mv.id.to_string()),
        &serde_json::json!({"to": body.to, "keep_source": body.keep_source}),
    )
    .await?;
    let record = record(&state, merchant, mv.id)
        .await?
        .ok_or(ApiError::NotFound("move"))?;
    let mut response = (StatusCode::ACCEPTED, Json(record)).into_response();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/v1/merchants/{}/moves/{}", merchant, mv.id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A move of the merchant (platform admin only).
#[utoipa::path(get, path = "/v1/merchants/{id}/moves/{move_id}",
    params(("id" = String, Path), ("move_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = MoveRecord),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_move(
    _: Admin,
    State(state): State<AppState>,
    Path((id, move_id)): Path<(String, String)>,
) -> Result<Json<MoveRecord>, ApiError> {
    let merchant = MerchantId(ApiError::path_id(&id, "move")?);
    let move_id = ApiError::path_id(&move_id, "move")?;
    record(&state, merchant, move_id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("move"))
}

async fn record(
    state: &AppState,
    merchant: MerchantId,
    id: Uuid,
) -> Result<Option<MoveRecord>, sqlx::Error> {
    crate::cells::move_record(&state.db.app, merchant, id).await
}

/// A move the mover refuses to start, as the admin API answers it.
fn refused(err: MoveError) -> ApiError {
    let conflict = |kind, title, err: &MoveError| ApiError::Conflict {
        kind,
        title,
        detail: err.to_string(),
        errors: vec![],
    };
    match err {
        MoveError::NoMerchant(_) => ApiError::NotFound("merchant"),
        MoveError::UnknownCell(..) | MoveError::AlreadyThere { .. } => {
            ApiError::field("to", err.to_string())
        }
        MoveError::AlreadyMoving(_) => conflict("move-running", "A move is running", &err),
        MoveError::SchemaBehind { .. } => {
            conflict("cell-schema-behind", "The cell's schema is behind", &err)
        }
        MoveError::Db(e) => ApiError::Internal(e),
        other => conflict("move-refused", "The move cannot start", &other),
    }
}
