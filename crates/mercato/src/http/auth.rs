//! Authentication extractors: `Tenant` for merchant keys, `Admin` for the platform token.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::db::TenantTx;
use crate::tenancy::{api_key_is_valid, ApiKey, MerchantId};

/// The authenticated merchant of a request. Handlers open tenant transactions
/// through it, so a request can only ever touch its own merchant's rows.
pub struct Tenant {
    pub merchant_id: MerchantId,
    state: AppState,
}

impl Tenant {
    pub async fn begin(&self) -> Result<TenantTx, ApiError> {
        Ok(TenantTx::begin(&self.state.db.app, self.merchant_id).await?)
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)
            .and_then(ApiKey::parse)
            .ok_or(ApiError::Unauthorized)?;
        let mut tx = TenantTx::begin(&state.db.app, key.merchant_id).await?;
        if !api_key_is_valid(&mut tx, &key).await? {
            return Err(ApiError::Unauthorized);
        }
        tx.commit().await?;
        tracing::Span::current().record("merchant_id", tracing::field::display(key.merchant_id));
        Ok(Tenant {
            merchant_id: key.merchant_id,
            state: state.clone(),
        })
    }
}

/// A request made with the platform admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let given = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(given.as_bytes(), state.admin_token.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
