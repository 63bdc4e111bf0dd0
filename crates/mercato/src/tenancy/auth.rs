//! Authentication: who is calling. `Tenant` for merchant keys, `Admin` for
//! the platform token. What a handler works with comes from the application
//! state (`State<AppState>`); the one thing a `Tenant` carries besides who it
//! is, is its merchant's database handle, resolved from the directory.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::scopes::Access;
use super::{authenticate_key, ApiKey, MerchantId, Principal, Strategy};
use crate::cells::{MerchantDb, RouteError};
use crate::db::{Acting, ActorKind, TenantTx};
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
    /// Where the request came from, for the audit trail.
    pub origin: Origin,
    /// What the key may do.
    pub access: Access,
}

/// Where a request came from: its client's address, user agent and request id.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Origin {
    pub fn of(headers: &HeaderMap, address: Option<IpAddr>) -> Origin {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(500).collect::<String>())
        };
        Origin {
            address: address.map(|a| a.to_string()),
            user_agent: text("user-agent"),
            request_id: text("x-request-id"),
        }
    }

    /// `actor` of `kind` asking for `action` from here.
    pub fn acting(&self, action: &'static str, actor_kind: ActorKind, actor: &str) -> Acting {
        Acting {
            action,
            actor_kind,
            actor: actor.to_owned(),
            address: self.address.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl Tenant {
    pub async fn begin(&self) -> Result<TenantTx, ApiError> {
        Ok(self.begin_sql().await?)
    }

    /// The merchant's database acting for this request's key on `action`:
    /// what its transactions change is in the audit trail.
    pub fn audited(&self, action: &'static str) -> MerchantDb {
        self.db.acting_for(self.acting(action))
    }

    /// This request's key asking for `action`, for the audit trail.
    pub fn acting(&self, action: &'static str) -> Acting {
        self.origin
            .acting(action, ActorKind::Key, &self.key_fingerprint)
    }

    /// A transaction of `action`, audited (`audited`).
    pub async fn begin_audited(&self, action: &'static str) -> Result<TenantTx, ApiError> {
        Ok(self.audited(action).begin().await?)
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
        Some(hit) if hit.expires_at.is_some_and(|at| at <= chrono::Utc::now()) => {
            return Err(ApiError::Unauthorized)
        }
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
            let Some(grant) = authenticate_key(&mut tx, &key).await? else {
                state.keys.put_refused(hash);
                if let Some(address) = address {
                    state.auth_failures.failed(address);
                }
                return Err(ApiError::Unauthorized);
            };
            tx.commit().await?;
            let principal = Principal {
                merchant: key.merchant_id,
                strategy: grant.strategy,
                plan: grant.plan.map(std::sync::Arc::new),
                access: grant.access,
                expires_at: grant.expires_at,
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
        origin: Origin::of(headers, address),
        access: principal.access,
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

/// The client's address; absent when the router is called without a server
/// (tests' oneshots).
fn client_address(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
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
        None => authenticate(state, headers, client_address(extensions)).await,
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let tenant = request_tenant(state, &parts.extensions, &parts.headers).await?;
        // The route as the router matched it (`/v1/products/{id}`).
        let path = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map_or(parts.uri.path(), |p| p.as_str());
        let needed = super::scopes::required(&parts.method, path);
        if !tenant.access.allows(needed) {
            return Err(ApiError::InsufficientScope(
                needed.map_or("full access", |s| s.as_str()),
            ));
        }
        Ok(tenant)
    }
}

/// A request made with the platform admin token (and where it came from).
pub struct Admin {
    pub origin: Origin,
}

impl Admin {
    /// The admin acting on `action`, for the audit trail.
    pub fn acting(&self, action: &'static str) -> Acting {
        self.origin.acting(action, ActorKind::Admin, "admin")
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let given = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(given.as_bytes(), state.admin_token.as_bytes()) {
            Ok(Admin {
                origin: Origin::of(&parts.headers, client_address(&parts.extensions)),
            })
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
