use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{create_merchant, CreateMerchantError, MerchantName, Slug};
use crate::http::auth::Admin;
use crate::http::{ApiError, ApiJson, AppState, FieldError, FieldErrors};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/merchants", post(post_merchant))
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
