//! `GET/PUT /v1/mail-settings`: who the shop's mail to its shoppers is from.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::{ApiError, ApiJson, Problem};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{self, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_mail_settings, put_mail_settings))
}

/// Who the shop's mail is from. Absent or `null`: the merchant's name, at the
/// platform's sender address.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub from_address: Option<String>,
}

/// The shop's sender.
#[utoipa::path(get, path = "/v1/mail-settings", security(("api_key" = [])),
    responses((status = 200, body = MailSettings)))]
pub async fn get_mail_settings(tenant: Tenant) -> Result<Json<MailSettings>, ApiError> {
    let mut tx = tenant.begin().await?;
    let (from_name, from_address) = super::settings(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(MailSettings {
        from_name,
        from_address,
    }))
}

/// Sets the shop's sender (both fields; `null` for the default).
#[utoipa::path(put, path = "/v1/mail-settings", request_body = MailSettings,
    security(("api_key" = [])),
    responses(
        (status = 200, body = MailSettings),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_mail_settings(
    tenant: Tenant,
    ApiJson(body): ApiJson<MailSettings>,
) -> Result<Json<MailSettings>, ApiError> {
    let mut errors = FieldErrors::default();
    let from_name = match body.from_name.as_deref() {
        None => Some(None),
        Some(raw) => errors
            .check(
                "from_name",
                validation::display_name(raw).and_then(|n| {
                    if n.chars().count() > 100 || n.contains(['"', '\\', '<', '>', '\r', '\n']) {
                        Err("must be 1-100 characters without quotes or angle brackets".to_owned())
                    } else {
                        Ok(n)
                    }
                }),
            )
            .map(Some),
    };
    let from_address = match body.from_address.as_deref() {
        None => Some(None),
        Some(raw) => errors
            .check("from_address", validation::email(raw))
            .map(Some),
    };
    let (from_name, from_address) = errors.finish(from_name.zip(from_address))?;
    let mut tx = tenant.begin_audited("mail_settings.update").await?;
    super::put_settings(&mut tx, from_name.as_deref(), from_address.as_deref()).await?;
    tx.commit().await?;
    Ok(Json(MailSettings {
        from_name,
        from_address,
    }))
}
