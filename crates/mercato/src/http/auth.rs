//! Authentication: `Tenant` for merchant keys, `Admin` for the platform token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::AppState;
use crate::db::TenantTx;
use crate::inventory::{Inventory, Strategy};
use crate::tenancy::{authenticate_key, ApiKey, MerchantId};

/// The authenticated merchant of a request. Handlers open tenant transactions
/// through it, so a request can only ever touch its own merchant's rows.
#[derive(Clone)]
pub struct Tenant {
    pub merchant_id: MerchantId,
    pub stock_strategy: Strategy,
    state: AppState,
}

impl Tenant {
    pub async fn begin(&self) -> Result<TenantTx, ApiError> {
        Ok(TenantTx::begin(&self.state.db.app, self.merchant_id).await?)
    }

    pub fn inventory(&self) -> &Inventory {
        &self.state.inventory
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }
}

/// How long a verified key is trusted without asking the database again.
/// A revoked key stops working within this time.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_MAX: usize = 10_000;

/// Verified key hashes, so the hot path costs no query for authentication.
#[derive(Default)]
pub struct KeyCache(Mutex<HashMap<Vec<u8>, (MerchantId, Strategy, Instant)>>);

impl KeyCache {
    fn get(&self, hash: &[u8]) -> Option<(MerchantId, Strategy)> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(hash)
            .filter(|(_, _, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(m, s, _)| (*m, *s))
    }

    /// Drops a merchant's cached keys, so its next request reads its settings afresh.
    pub fn forget(&self, merchant: MerchantId) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (m, _, _)| *m != merchant);
    }

    fn put(&self, hash: Vec<u8>, merchant: MerchantId, strategy: Strategy) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEY_CACHE_MAX {
            cache.retain(|_, (_, _, at)| at.elapsed() < KEY_CACHE_TTL);
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(hash, (merchant, strategy, Instant::now()));
    }
}

/// The token of an `Authorization: Bearer …` header (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Verifies the request's merchant key; 401 unless it is a live key.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let key = bearer(headers)
        .and_then(ApiKey::parse)
        .ok_or(ApiError::Unauthorized)?;
    let hash = key.hash();
    let (merchant_id, stock_strategy) = match state.keys.get(&hash) {
        Some(hit) => hit,
        None => {
            let mut tx = TenantTx::begin(&state.db.app, key.merchant_id).await?;
            let strategy = authenticate_key(&mut tx, &key)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            tx.commit().await?;
            let strategy = Strategy::parse(&strategy).unwrap_or(Strategy::Reservation);
            state.keys.put(hash, key.merchant_id, strategy);
            (key.merchant_id, strategy)
        }
    };
    tracing::Span::current().record("merchant_id", tracing::field::display(merchant_id));
    Ok(Tenant {
        merchant_id,
        stock_strategy,
        state: state.clone(),
    })
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The idempotency layer may have authenticated this request already.
        if let Some(tenant) = parts.extensions.get::<Tenant>() {
            return Ok(tenant.clone());
        }
        authenticate(state, &parts.headers).await
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
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
