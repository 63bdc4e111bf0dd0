use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Admin;
use super::{
    create_merchant, issue_api_key, list_api_keys, merchant_exists, merchant_settings,
    revoke_api_key, set_rate_limits, set_stock_strategy, ApiKeyInfo, CreateMerchantError, Created,
    CreationKey, MerchantId, MerchantName, Slug, Strategy,
};
use crate::db::{Acting, TenantTx};
use crate::http::idempotency::idempotency_key;
use crate::http::{ApiError, ApiJson, Problem};
use crate::state::AppState;
use crate::validation::{optional, search_prefix, FieldError, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_merchant, list_merchants_route))
        .routes(routes!(get_merchant, patch_merchant))
        .routes(routes!(post_api_key, list_keys))
        .routes(routes!(delete_api_key))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMerchant {
    /// How this merchant's stock is taken: `pessimistic`, `optimistic` or `reservation`.
    pub stock_strategy: Option<String>,
    /// The merchant's plan: `{reads|writes|checkout: {per_second, burst}}` (a class
    /// left out is not limited); `null` removes every limit.
    #[schema(value_type = Option<Object>)]
    #[serde(default, deserialize_with = "present")]
    pub rate_limits: Option<serde_json::Value>,
    /// `suspended`: its keys, staff and storefront are refused (403
    /// `merchant-suspended`) and its workers send nothing; nothing is
    /// deleted. `active` again resumes all of it.
    pub status: Option<String>,
    /// Why (required to suspend; kept with the status and in the audit trail).
    pub reason: Option<String>,
}

/// A field given as `null` is `Some(Value::Null)` (clear it), an absent one `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

#[derive(Serialize, ToSchema)]
pub struct MerchantSettings {
    pub id: Uuid,
    pub stock_strategy: Strategy,
    /// `null`: not limited.
    pub rate_limits: Option<crate::quotas::Plan>,
}

/// Changes a merchant's settings (platform admin only). Other processes pick
/// the change up within 30 s (their key cache).
#[utoipa::path(patch, path = "/v1/merchants/{id}", params(("id" = String, Path)),
    request_body = PatchMerchant, security(("admin_token" = [])),
    responses(
        (status = 200, body = MerchantSettings),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_merchant(
    admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchMerchant>,
) -> Result<Json<MerchantSettings>, ApiError> {
    let id = Uuid::try_parse(&id)
        .map(MerchantId)
        .map_err(|_| ApiError::NotFound("merchant"))?;
    let mut errors = FieldErrors::default();
    let strategy = match &body.stock_strategy {
        None => Some(None),
        Some(raw) => errors
            .check("stock_strategy", Strategy::parse(raw))
            .map(Some),
    };
    // Some(None): clear the plan; Some(Some(plan)): set it; None (absent): leave it.
    let plan = match &body.rate_limits {
        None => Some(None),
        Some(serde_json::Value::Null) => Some(Some(None)),
        Some(value) => crate::quotas::Plan::parse(value, "rate_limits", &mut errors)
            .map(|plan| Some(Some(plan))),
    };
    let status = match body.status.as_deref() {
        None => Some(None),
        Some("active") => Some(Some(false)),
        Some("suspended") => Some(Some(true)),
        Some(_) => {
            errors.push("status", "must be one of active, suspended");
            None
        }
    };
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(r) = reason {
        if r.chars().count() > 500 || r.chars().any(char::is_control) {
            errors.push(
                "reason",
                "must be at most 500 characters, without control characters",
            );
        }
    }
    if status == Some(Some(true)) && reason.is_none() {
        errors.push("reason", "say why the merchant is suspended");
    }
    if body.stock_strategy.is_none() && body.rate_limits.is_none() && body.status.is_none() {
        errors.push(
            "stock_strategy",
            "give stock_strategy, rate_limits, status, or several",
        );
    }
    let ((strategy, plan), status) = errors.finish(strategy.zip(plan).zip(status))?;
    if merchant_settings(&state.db.app, id).await?.is_none() {
        return Err(ApiError::NotFound("merchant"));
    }
    let mut tx = TenantTx::begin_in_directory(&state.db.app, id).await?;
    tx.act_for(&admin.acting("merchant.update")).await?;
    if let Some(strategy) = strategy {
        set_stock_strategy(tx.conn(), id, strategy).await?;
    }
    if let Some(plan) = &plan {
        set_rate_limits(tx.conn(), id, plan.as_ref()).await?;
    }
    if let Some(suspended) = status {
        super::set_merchant_status(&mut tx, suspended, reason).await?;
    }
    tx.commit().await?;
    state.keys.forget(id);
    if let Some(suspended) = status {
        state.suspended.set(id.0, suspended);
    }
    let (stock_strategy, rate_limits) = merchant_settings(&state.db.app, id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    Ok(Json(MerchantSettings {
        id: id.0,
        stock_strategy,
        rate_limits,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MerchantListParams {
    /// A prefix of the slug or the name, in any case.
    pub q: Option<String>,
    /// `active` or `suspended`.
    pub status: Option<String>,
    /// The cell serving them (`main` or a `--cell` name).
    pub cell: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// The platform's merchants, oldest first: search by slug or name prefix,
/// by status and by cell (operators and the admin token).
#[utoipa::path(get, path = "/v1/merchants", params(MerchantListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = crate::pagination::List<super::MerchantListed>),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_merchants_route(
    _: Admin,
    State(state): State<AppState>,
    crate::http::ApiQuery(params): crate::http::ApiQuery<MerchantListParams>,
) -> Result<Json<crate::pagination::List<super::MerchantListed>>, ApiError> {
    use crate::pagination::{List, Page, PageParams};
    let page = Page::parse(&PageParams {
        limit: params.limit.clone(),
        cursor: params.cursor.clone(),
    });
    let mut errors = FieldErrors::default();
    let page = page
        .map_err(|invalid| {
            invalid
                .0
                .into_iter()
                .for_each(|e| errors.push(e.field, e.message))
        })
        .ok();
    let q = optional(&mut errors, "q", params.q.as_deref(), |q| {
        search_prefix(q, 200)
    });
    let cell = optional(&mut errors, "cell", params.cell.as_deref(), |c| {
        search_prefix(c, 63).map(|_| c.to_owned())
    });
    if let Some(status) = params.status.as_deref() {
        if !matches!(status, "active" | "suspended") {
            errors.push("status", "must be one of active, suspended");
        }
    }
    let (page, (q, cell)) = errors.finish(page.zip(q.zip(cell)))?;
    let q = q.flatten();
    let rows = super::list_merchants(
        &state.db.app,
        &super::MerchantFilter {
            q: q.as_deref(),
            status: params.status.as_deref(),
            cell: cell.as_deref(),
            after: page.after,
            limit: page.fetch_limit(),
        },
    )
    .await?;
    Ok(Json(List::from_rows(rows, page, |m| m.id)))
}

#[derive(Serialize, ToSchema)]
pub struct MerchantView {
    pub id: Uuid,
    pub stock_strategy: Strategy,
    /// `null`: not limited.
    pub rate_limits: Option<crate::quotas::Plan>,
    /// The database (cell) serving the merchant: `main` or a `--cell` name.
    pub cell: String,
    /// The move under way, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moving: Option<MoveView>,
}

#[derive(Serialize, ToSchema)]
pub struct MoveView {
    /// Watch it at `/v1/merchants/{id}/moves/{move id}`.
    pub id: Uuid,
    pub to: String,
    /// `copying`, `catching_up` or `cutting_over`.
    pub phase: String,
}

/// A merchant's settings and the cell that serves it (platform admin only).
#[utoipa::path(get, path = "/v1/merchants/{id}", params(("id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = MerchantView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_merchant(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MerchantView>, ApiError> {
    let id = merchant_param(&id)?;
    let (stock_strategy, rate_limits) = merchant_settings(&state.db.app, id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    let cell = crate::cells::cell_of(&state.db.app, id).await?;
    let moving = crate::cells::running_move(&state.db.app, id)
        .await?
        .map(|m| MoveView {
            id: m.id,
            to: m.target,
            phase: m.phase.to_string(),
        });
    Ok(Json(MerchantView {
        id: id.0,
        stock_strategy,
        rate_limits,
        cell,
        moving,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    pub name: String,
    /// 2-63 lower-case letters, digits or `-`.
    pub slug: String,
}

#[derive(Serialize, ToSchema)]
pub struct MerchantCreated {
    pub id: Uuid,
    pub slug: String,
    /// Shown once; only its hash is stored. `null` when this answer replays an
    /// earlier creation (same `Idempotency-Key`): issue a new key with
    /// `POST /v1/merchants/{id}/api-keys`.
    pub api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_note: Option<String>,
}

/// Creates a merchant and its first API key (platform admin only).
///
/// With an `Idempotency-Key`, a retry of the same request answers the same
/// merchant (`Idempotent-Replayed: true`) without its key: a key is shown once
/// and never stored, so a lost answer is repaired by issuing a new key, not by
/// keeping secrets in a replay cache.
#[utoipa::path(post, path = "/v1/merchants", request_body = CreateMerchant,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = MerchantCreated),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "slug taken"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "invalid fields, or the Idempotency-Key was used with another request"),
    ))]
pub async fn post_merchant(
    admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateMerchant>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    let name = errors.check("name", MerchantName::parse(&body.name));
    let slug = errors.check("slug", Slug::parse(&body.slug));
    let (name, slug) = errors.finish(name.zip(slug))?;
    let key = idempotency_key(&headers)?;
    let creation = key.map(|key| CreationKey {
        key,
        request_hash: Sha256::digest(format!("{}\0{}", name.as_str(), slug.as_str())).to_vec(),
    });
    let created = create_merchant(
        &state.db.app,
        &name,
        &slug,
        creation.as_ref(),
        Some(&admin.acting("merchant.create")),
    )
    .await
    .map_err(|e| match e {
        CreateMerchantError::SlugTaken(slug) => ApiError::Conflict {
            kind: "slug-taken",
            title: "Slug already taken",
            detail: format!("a merchant with slug {slug:?} already exists"),
            errors: vec![FieldError::new("slug", "already taken")],
        },
        CreateMerchantError::KeyReused => ApiError::IdempotencyKeyReused,
        CreateMerchantError::Db(e) => e.into(),
    })?;
    let (created, replayed) = match created {
        Created::New { id, key } => (
            MerchantCreated {
                id: id.0,
                slug: slug.as_str().to_owned(),
                api_key: Some(key.to_string()),
                api_key_note: None,
            },
            false,
        ),
        Created::Replayed { id, slug } => (
            MerchantCreated {
                id: id.0,
                api_key: None,
                api_key_note: Some(format!(
                    "this replays an earlier creation: its API key was shown then and is not kept; issue a new one with POST /v1/merchants/{}/api-keys",
                    id.0
                )),
                slug,
            },
            true,
        ),
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn merchant_param(raw: &str) -> Result<MerchantId, ApiError> {
    Uuid::try_parse(raw)
        .map(MerchantId)
        .map_err(|_| ApiError::NotFound("merchant"))
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyIssued {
    pub id: Uuid,
    /// Shown once; only its hash is stored.
    pub api_key: String,
}

/// Issues another API key for a merchant (platform admin only). A merchant may
/// hold several live keys, so a key is rotated by issuing the new one, moving
/// clients over, then revoking the old.
#[utoipa::path(post, path = "/v1/merchants/{id}/api-keys", params(("id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 201, body = ApiKeyIssued),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_api_key(
    admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ApiKeyIssued>), ApiError> {
    let merchant = merchant_param(&id)?;
    if !merchant_exists(&state.db.app, merchant).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    let mut tx = TenantTx::begin_in_directory(&state.db.app, merchant).await?;
    tx.act_for(&admin.acting("api_key.create")).await?;
    let issued = issue_api_key(&mut tx, &super::scopes::Access::Full, None).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyIssued {
            id: issued.id,
            api_key: issued.key.to_string(),
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyInfo>,
}

/// A merchant's API keys, live and revoked, oldest first (platform admin only).
#[utoipa::path(get, path = "/v1/merchants/{id}/api-keys", params(("id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ApiKeyList),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let merchant = merchant_param(&id)?;
    if !merchant_exists(&state.db.app, merchant).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    keys_of(&state, merchant).await
}

/// A merchant's keys, for the admin's route and the merchant's own.
pub(super) async fn keys_of(
    state: &AppState,
    merchant: MerchantId,
) -> Result<Json<ApiKeyList>, ApiError> {
    let mut tx = TenantTx::begin_in_directory(&state.db.app, merchant).await?;
    let data = list_api_keys(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(ApiKeyList { data }))
}

/// Revokes one of a merchant's API keys (platform admin only). This process
/// stops accepting it at once; other instances within their 30 s key cache.
#[utoipa::path(delete, path = "/v1/merchants/{id}/api-keys/{key_id}",
    params(("id" = String, Path), ("key_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "revoked (or already revoked)"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_api_key(
    admin: Admin,
    State(state): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let merchant = merchant_param(&id)?;
    revoke_key(&state, merchant, &key_id, &admin.acting("api_key.revoke")).await
}

/// Revokes one of `merchant`'s keys for `acting` (audited); this process
/// refuses it at once. For the admin's route and the merchant's own.
pub(super) async fn revoke_key(
    state: &AppState,
    merchant: MerchantId,
    key_id: &str,
    acting: &Acting,
) -> Result<StatusCode, ApiError> {
    let key_id = ApiError::path_id(key_id, "api key")?;
    let mut tx = TenantTx::begin_in_directory(&state.db.app, merchant).await?;
    tx.act_for(acting).await?;
    let revoked = revoke_api_key(&mut tx, key_id).await?;
    tx.commit().await?;
    if !revoked {
        return Err(ApiError::NotFound("api key"));
    }
    state.keys.forget(merchant);
    Ok(StatusCode::NO_CONTENT)
}
