//! `/v1/api-keys`: a merchant's own keys, made with the scopes they need. A
//! key makes keys only within its own scopes (a full-access key, any).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::http::{keys_of, revoke_key, ApiKeyList};
use super::scopes::{Access, Scope};
use super::store::issue_api_key;
use super::Tenant;
use crate::db::TenantTx;
use crate::http::{ApiError, ApiJson, Problem};
use crate::state::AppState;
use crate::validation::{optional, timestamp, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_own_keys, post_own_key))
        .routes(routes!(delete_own_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// What the key may do (see the scope list in docs/audit.md); absent:
    /// the same access as the key that makes it.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// When it stops working (RFC 3339, in the future); absent: never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyIssued {
    pub id: Uuid,
    /// Shown once; only its hash is stored.
    pub api_key: String,
    /// `null`: full access.
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<Vec<Scope>>,
    pub expires_at: Option<DateTime<Utc>>,
}

fn parse_new_key(
    body: &NewKeyBody,
    caller: &Access,
) -> Result<(Access, Option<DateTime<Utc>>), ApiError> {
    let mut errors = FieldErrors::default();
    let access = match &body.scopes {
        None => Some(caller.clone()),
        Some(raw) if raw.is_empty() => {
            errors.push("scopes", "give at least one scope, or leave scopes out");
            None
        }
        Some(raw) => {
            let mut scopes = Vec::new();
            for (i, s) in raw.iter().enumerate() {
                if let Some(scope) = errors.check(format!("scopes[{i}]"), Scope::parse(s)) {
                    if !caller.grants(scope) {
                        errors.push(
                            format!("scopes[{i}]"),
                            format!("the key making it does not have {}", scope.as_str()),
                        );
                    } else if !scopes.contains(&scope) {
                        scopes.push(scope);
                    }
                }
            }
            scopes.sort();
            Some(Access::Scoped(scopes))
        }
    };
    let expires_at = optional(
        &mut errors,
        "expires_at",
        body.expires_at.as_deref(),
        |raw| {
            let at = timestamp(raw)?;
            if at <= Utc::now() {
                Err("must be in the future".to_owned())
            } else {
                Ok(at)
            }
        },
    );
    Ok(errors.finish(access.zip(expires_at))?)
}

/// Makes a key for this merchant, with the scopes it needs: never more than
/// the calling key's own.
#[utoipa::path(post, path = "/v1/api-keys", request_body = NewKeyBody,
    security(("api_key" = [])),
    responses(
        (status = 201, body = KeyIssued),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_own_key(
    tenant: Tenant,
    axum::extract::State(state): axum::extract::State<AppState>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<(StatusCode, Json<KeyIssued>), ApiError> {
    let (access, expires_at) = parse_new_key(&body, &tenant.access)?;
    let mut tx = TenantTx::begin_in_directory(&state.db.app, tenant.merchant_id).await?;
    tx.act_for(&tenant.acting("api_key.create")).await?;
    let issued = issue_api_key(&mut tx, &access, expires_at).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyIssued {
            id: issued.id,
            api_key: issued.key.to_string(),
            scopes: access.scopes(),
            expires_at,
        }),
    ))
}

/// This merchant's keys, live and revoked, oldest first.
#[utoipa::path(get, path = "/v1/api-keys", security(("api_key" = [])),
    responses(
        (status = 200, body = ApiKeyList),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_own_keys(
    tenant: Tenant,
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<ApiKeyList>, ApiError> {
    keys_of(&state, tenant.merchant_id).await
}

/// Revokes one of this merchant's keys; this process refuses it at once,
/// others within their 30 s key cache.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", params(("id" = String, Path)),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "revoked (or already revoked)"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_own_key(
    tenant: Tenant,
    axum::extract::State(state): axum::extract::State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke_key(
        &state,
        tenant.merchant_id,
        &id,
        &tenant.acting("api_key.revoke"),
    )
    .await
}
