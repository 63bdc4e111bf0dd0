//! Which merchant a shopper's request is for: by its publishable key
//! (`X-Publishable-Key`, or `Authorization: Bearer pk_…`) or by its `Host`
//! (`{slug}.{--store-domain}`); both given, they must agree. Keys and slugs
//! are cached briefly, so a page view costs no query to resolve.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::model::{cors_grant, slug_of_host, CorsGrant, PublishableKey};
use super::ttl::TtlMap;
use crate::cells::MerchantDb;
use crate::db::{MerchantId, TenantTx};
use crate::http::ApiError;
use crate::state::AppState;
use crate::tenancy::Slug;

/// How long a resolved key or slug is trusted: a revoked key stops working
/// within this time.
const TTL: Duration = Duration::from_secs(30);
const MAX_ENTRIES: usize = 10_000;

/// The shop a request is for.
#[derive(Clone)]
pub struct Shop {
    pub merchant_id: MerchantId,
    pub db: MerchantDb,
    /// What the request's `Origin` may do with the answer (`None`: no
    /// `Origin`, or not allowed cross-origin).
    pub cors: Option<CorsGrant>,
}

/// A live key's merchant and allowed origins.
type KeyGrant = (MerchantId, Arc<Vec<String>>);

/// Resolved keys and slugs (`None`: known to be no key, no shop).
pub struct ShopDirectory {
    keys: TtlMap<String, Option<KeyGrant>>,
    slugs: TtlMap<String, Option<MerchantId>>,
}

impl Default for ShopDirectory {
    fn default() -> Self {
        ShopDirectory {
            keys: TtlMap::new(TTL, MAX_ENTRIES),
            slugs: TtlMap::new(TTL, MAX_ENTRIES),
        }
    }
}

impl ShopDirectory {
    /// The merchant and allowed origins of a live key; `None`: unknown or revoked.
    async fn key(
        &self,
        state: &AppState,
        key: &PublishableKey,
    ) -> Result<Option<KeyGrant>, sqlx::Error> {
        let text = key.to_string();
        if let Some(hit) = self.keys.get(&text) {
            return Ok(hit);
        }
        let mut tx = TenantTx::begin_in_directory(&state.db.app, key.merchant_id).await?;
        let origins = super::store::live_key_origins(&mut tx, key).await?;
        tx.commit().await?;
        let found = origins.map(|o| (key.merchant_id, Arc::new(o)));
        self.keys.put(text, found.clone());
        Ok(found)
    }

    async fn slug(&self, state: &AppState, slug: &str) -> Result<Option<MerchantId>, sqlx::Error> {
        if let Some(hit) = self.slugs.get(&slug.to_owned()) {
            return Ok(hit);
        }
        let found = match Slug::parse(slug) {
            Ok(parsed) => crate::tenancy::find_merchant_by_slug(&state.db.app, &parsed).await?,
            Err(_) => None,
        };
        self.slugs.put(slug.to_owned(), found);
        Ok(found)
    }

    /// Forgets a key (revoked here: refused at once on this instance).
    pub fn forget_key(&self, key: &str) {
        self.keys.remove(&key.to_owned());
    }
}

/// The request's publishable key, as given (`X-Publishable-Key`, or a
/// bearer token starting `pk_`).
fn given_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-publishable-key") {
        return Some(v.to_str().unwrap_or(""));
    }
    crate::tenancy::bearer(headers).filter(|token| token.starts_with("pk_"))
}

/// Resolves the shop of a store request: 401 for an unknown key or none at
/// all, 404 for a host naming no shop, 400 when key and host disagree,
/// 403 for an origin the key does not allow or a suspended merchant.
pub async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Shop, ApiError> {
    let by_key = match given_key(headers) {
        None => None,
        Some(raw) => {
            let key = PublishableKey::parse(raw).ok_or(ApiError::Unauthorized)?;
            Some(
                state
                    .storefront
                    .directory
                    .key(state, &key)
                    .await?
                    .ok_or(ApiError::Unauthorized)?,
            )
        }
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let by_host = match host.and_then(|h| slug_of_host(h, &state.storefront.domain)) {
        None => None,
        Some(slug) => Some(
            state
                .storefront
                .directory
                .slug(state, slug)
                .await?
                .ok_or(ApiError::NotFound("shop"))?,
        ),
    };
    let merchant_id = match (&by_key, by_host) {
        (Some((a, _)), Some(b)) if *a != b => {
            return Err(ApiError::field(
                "X-Publishable-Key",
                "names another shop than the host name does",
            ))
        }
        (Some((m, _)), _) => *m,
        (None, Some(m)) => m,
        (None, None) => return Err(ApiError::Unauthorized),
    };
    if state.suspended.contains(merchant_id.0) {
        return Err(ApiError::MerchantSuspended);
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let cors = match (origin, &by_key) {
        (Some(origin), Some((_, allowed))) => {
            Some(cors_grant(origin, allowed).ok_or(ApiError::Forbidden(
                "this page's origin is not among the publishable key's allowed_origins",
            ))?)
        }
        _ => None,
    };
    let db = state
        .cells
        .merchant_db(merchant_id)
        .await
        .map_err(crate::tenancy::unroutable)?;
    Ok(Shop {
        merchant_id,
        db,
        cors,
    })
}

impl FromRequestParts<AppState> for Shop {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Shop>() {
            Some(shop) => Ok(shop.clone()),
            None => resolve(state, &parts.headers).await,
        }
    }
}
