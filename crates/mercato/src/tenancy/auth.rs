//! Authentication: who is calling. `Tenant` for merchant keys, `Admin` for
//! the platform token. What a handler works with comes from the application
//! state (`State<AppState>`); the one thing a `Tenant` carries besides who it
//! is, is its merchant's database handle, resolved from the directory.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::{authenticate_key, ApiKey, MerchantId, Principal, Strategy};
use crate::cells::{MerchantDb, RouteError};
use crate::db::TenantTx;
use crate::http::ApiError;
use crate::state::AppState;

/// The authenticated merchant of a request. Handlers open tenant transactions
/// through it, so a request can only ever touch its own merchant's rows.
#[derive(Clone)]
pub struct Tenant {
    pub merchant_id: MerchantId,
    pub stock_strategy: Strategy,
    /// The merchant's rate limits; `None`: not limited.
    pub plan: Option<std::sync::Arc<crate::quotas::Plan>>,
    /// Names the API key used (a prefix of its hash, never the key): for audit logs.
    pub key_fingerprint: String,
    /// The merchant's database (and, while it moves, its hold on the cutover gate).
    pub db: MerchantDb,
}

impl Tenant {
    pub async fn begin(&self) -> Result<TenantTx, ApiError> {
        Ok(self.begin_sql().await?)
    }

    /// `begin` for code that reports `sqlx::Error`.
    pub async fn begin_sql(&self) -> Result<TenantTx, sqlx::Error> {
        self.db.begin().await
    }
}

/// The token of an `Authorization: Bearer …` header (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Verifies the request's merchant key; 401 unless it is a live key. Only a
/// key neither verified nor refused lately is looked up, and not while its
/// client `address` (when known) is over its failed lookups: 429.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    address: Option<IpAddr>,
) -> Result<Tenant, ApiError> {
    let key = bearer(headers)
        .and_then(ApiKey::parse)
        .ok_or(ApiError::Unauthorized)?;
    let hash = key.hash();
    let key_fingerprint = format!("key:{}", hex::encode(&hash[..6]));
    let principal = match state.keys.get(&hash) {
        Some(hit) => hit,
        None if state.keys.refused(&hash) => return Err(ApiError::Unauthorized),
        None => {
            if let Some(address) = address {
                state
                    .auth_failures
                    .check(address)
                    .map_err(|retry_after| ApiError::AuthenticationsFailing { retry_after })?;
            }
            let mut tx = TenantTx::begin_in_directory(&state.db.app, key.merchant_id).await?;
            let Some((strategy, plan)) = authenticate_key(&mut tx, &key).await? else {
                state.keys.put_refused(hash);
                if let Some(address) = address {
                    state.auth_failures.failed(address);
                }
                return Err(ApiError::Unauthorized);
            };
            tx.commit().await?;
            let principal = Principal {
                merchant: key.merchant_id,
                strategy,
                plan: plan.map(std::sync::Arc::new),
            };
            state.keys.put(hash, principal.clone());
            principal
        }
    };
    let merchant_id = principal.merchant;
    tracing::Span::current().record("merchant_id", tracing::field::display(merchant_id));
    let db = state
        .cells
        .merchant_db(merchant_id)
        .await
        .map_err(unroutable)?;
    Ok(Tenant {
        db,
        merchant_id,
        stock_strategy: principal.strategy,
        plan: principal.plan,
        key_fingerprint,
    })
}

/// A merchant the directory could not route, as a request's answer.
pub fn unroutable(err: RouteError) -> ApiError {
    match err {
        RouteError::Db(e) => ApiError::from(e),
        unknown @ RouteError::UnknownCell { .. } => {
            tracing::error!(error = %unknown, "cannot route a request");
            ApiError::Unavailable("this merchant's database is not configured on this instance")
        }
    }
}

/// The request's tenant: the one a layer (rate limits, idempotency) already
/// authenticated and put in the extensions, else verified now.
pub async fn request_tenant(
    state: &AppState,
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
) -> Result<Tenant, ApiError> {
    match extensions.get::<Tenant>() {
        Some(tenant) => Ok(tenant.clone()),
        None => {
            // Absent when the router is called without a server (tests' oneshots).
            let address = extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip());
            authenticate(state, headers, address).await
        }
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        request_tenant(state, &parts.extensions, &parts.headers).await
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
        let given = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(given.as_bytes(), state.admin_token.as_bytes()) {
            Ok(Admin)
        } else if ApiKey::parse(given).is_some() {
            // A merchant's key, however valid, is the wrong kind of credential here.
            Err(ApiError::Forbidden(
                "this needs the platform admin token, not a merchant key",
            ))
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
