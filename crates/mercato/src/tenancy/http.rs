use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{
    create_merchant, set_stock_strategy, CreateMerchantError, MerchantId, MerchantName, Slug,
    Strategy,
};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson};
use crate::state::AppState;
use crate::validation::{FieldError, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_merchant))
        .routes(routes!(patch_merchant))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMerchant {
    /// How this merchant's stock is taken: `pessimistic`, `optimistic` or `reservation`.
    pub stock_strategy: String,
}

#[derive(Serialize, ToSchema)]
pub struct MerchantSettings {
    pub id: Uuid,
    pub stock_strategy: Strategy,
}

/// Changes a merchant's settings (platform admin only). Other processes pick
/// the change up within 30 s (their key cache).
#[utoipa::path(patch, path = "/v1/merchants/{id}", params(("id" = String, Path)),
    request_body = PatchMerchant, security(("admin_token" = [])),
    responses(
        (status = 200, body = MerchantSettings),
        (status = 404, body = crate::http::Problem, content_type = "application/problem+json"),
        (status = 422, body = crate::http::Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_merchant(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchMerchant>,
) -> Result<Json<MerchantSettings>, ApiError> {
    let id = Uuid::try_parse(&id)
        .map(MerchantId)
        .map_err(|_| ApiError::NotFound("merchant"))?;
    let strategy =
        Strategy::parse(&body.stock_strategy).map_err(|m| ApiError::field("stock_strategy", m))?;
    if !set_stock_strategy(&state.db.app, id, strategy).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    state.keys.forget(id);
    Ok(Json(MerchantSettings {
        id: id.0,
        stock_strategy: strategy,
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
    /// Shown once; only its hash is stored.
    pub api_key: String,
}

/// Creates a merchant and its first API key (platform admin only).
#[utoipa::path(post, path = "/v1/merchants", request_body = CreateMerchant,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = MerchantCreated),
        (status = 401, body = crate::http::Problem, content_type = "application/problem+json"),
        (status = 409, body = crate::http::Problem, content_type = "application/problem+json", description = "slug taken"),
        (status = 422, body = crate::http::Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_merchant(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateMerchant>,
) -> Result<(StatusCode, Json<MerchantCreated>), ApiError> {
    let mut errors = FieldErrors::default();
    let name = errors.check("name", MerchantName::parse(&body.name));
    let slug = errors.check("slug", Slug::parse(&body.slug));
    let (name, slug) = errors.finish(name.zip(slug))?;
    let (id, key) = create_merchant(&state.db.app, &name, &slug)
        .await
        .map_err(|e| match e {
            CreateMerchantError::SlugTaken(slug) => ApiError::Conflict {
                kind: "slug-taken",
                title: "Slug already taken",
                detail: format!("a merchant with slug {slug:?} already exists"),
                errors: vec![FieldError::new("slug", "already taken")],
            },
            CreateMerchantError::Db(e) => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(MerchantCreated {
            id: id.0,
            slug: slug.as_str().to_owned(),
            api_key: key.to_string(),
        }),
    ))
}
