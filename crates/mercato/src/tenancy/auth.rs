//! Authentication: who is calling. `Tenant` for merchant keys and staff
//! sessions, `Admin` for the platform token and operators' sessions. What a handler works with comes from the application
//! state (`State<AppState>`); the one thing a `Tenant` carries besides who it
//! is, is its merchant's database handle, resolved from the directory.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};

use super::people::{self, Role, SessionToken};
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
    /// Who is calling: a key or a person.
    pub caller: Caller,
    /// The merchant's database (and, while it moves, its hold on the cutover gate).
    pub db: MerchantDb,
    /// Where the request came from, for the audit trail.
    pub origin: Origin,
    /// What the key may do.
    pub access: Access,
}

/// Who made a request: a merchant's key or one of its people.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Names the API key used (a prefix of its hash, never the key).
    Key {
        fingerprint: String,
    },
    Person(SessionPerson),
}

/// A person calling through their session.
#[derive(Clone, Debug)]
pub struct SessionPerson {
    pub id: uuid::Uuid,
    pub email: String,
    pub role: Role,
    pub session: uuid::Uuid,
}

impl Caller {
    /// As the audit trail names it: a key's fingerprint, a person's e-mail.
    pub fn name(&self) -> &str {
        match self {
            Caller::Key { fingerprint } => fingerprint,
            Caller::Person(p) => &p.email,
        }
    }

    fn kind(&self) -> ActorKind {
        match self {
            Caller::Key { .. } => ActorKind::Key,
            Caller::Person(_) => ActorKind::Person,
        }
    }

    /// The person, when a person is calling.
    pub fn person(&self) -> Option<&SessionPerson> {
        match self {
            Caller::Person(p) => Some(p),
            Caller::Key { .. } => None,
        }
    }
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

    /// This request's key or person asking for `action`, for the audit trail.
    pub fn acting(&self, action: &'static str) -> Acting {
        self.origin
            .acting(action, self.caller.kind(), self.caller.name())
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
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Verifies the request's merchant key; 401 unless it is a live key. Only a
/// key neither verified nor refused lately is looked up, and not while its
/// client `address` (when known) is over its failed lookups: 429.
pub async fn authenticate(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    address: Option<IpAddr>,
) -> Result<Tenant, ApiError> {
    if let Some(session) = session_token(method, headers)? {
        return authenticate_person(state, &session, headers, address).await;
    }
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
                    .check(&address)
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
                suspended: grant.suspended,
            };
            state.keys.put(hash, principal.clone());
            principal
        }
    };
    if principal.suspended {
        return Err(ApiError::MerchantSuspended);
    }
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
        caller: Caller::Key {
            fingerprint: key_fingerprint,
        },
        origin: Origin::of(headers, address),
        access: principal.access,
    })
}

/// The cookie a browser's session travels in.
pub const SESSION_COOKIE: &str = "mercato_session";
/// The header an unsafe request made with the cookie carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session of a request: a bearer `mss_…` token (a script's: no CSRF
/// token needed, a browser never sends it by itself), else the session
/// cookie, whose unsafe requests must carry the session's CSRF token
/// (403 without it, or with another session's). `None`: no session.
pub fn session_token(
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<SessionToken>, ApiError> {
    if let Some(given) = bearer(headers) {
        return Ok(SessionToken::parse(given));
    }
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let token = SessionToken::parse(token).ok_or(ApiError::Unauthorized)?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.csrf_token().as_bytes()) {
            return Err(ApiError::CsrfTokenInvalid);
        }
    }
    Ok(Some(token))
}

/// A cookie's value from the `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// A person's session as a merchant's tenant: their role, read afresh on
/// every request (a demotion or removal counts at once); 401 for a session
/// that ended or a person no longer on the staff, 403 for an operator's
/// session (it works on the platform's routes) or a suspended merchant.
async fn authenticate_person(
    state: &AppState,
    token: &SessionToken,
    headers: &HeaderMap,
    address: Option<IpAddr>,
) -> Result<Tenant, ApiError> {
    let session = people::session(&state.db.app, token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let Some(merchant_id) = session.merchant else {
        return Err(ApiError::Forbidden(
            "an operator's session works on the platform's routes, not a merchant's",
        ));
    };
    let mut tx = TenantTx::begin_in_directory(&state.db.app, merchant_id).await?;
    let role = people::store::role_of(&mut tx, session.person)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let (strategy, plan, suspended) = super::store::merchant_grant(&mut tx)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    tx.commit().await?;
    if suspended {
        return Err(ApiError::MerchantSuspended);
    }
    tracing::Span::current().record("merchant_id", tracing::field::display(merchant_id));
    let db = state
        .cells
        .merchant_db(merchant_id)
        .await
        .map_err(unroutable)?;
    Ok(Tenant {
        db,
        merchant_id,
        stock_strategy: strategy,
        plan: plan.map(std::sync::Arc::new),
        caller: Caller::Person(SessionPerson {
            id: session.person,
            email: session.email,
            role,
            session: session.id,
        }),
        origin: Origin::of(headers, address),
        access: role.access(),
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
pub fn client_address(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The request's tenant: the one a layer (rate limits, idempotency) already
/// authenticated and put in the extensions, else verified now.
pub async fn request_tenant(
    state: &AppState,
    method: &Method,
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
) -> Result<Tenant, ApiError> {
    match extensions.get::<Tenant>() {
        Some(tenant) => Ok(tenant.clone()),
        None => authenticate(state, method, headers, client_address(extensions)).await,
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let tenant =
            request_tenant(state, &parts.method, &parts.extensions, &parts.headers).await?;
        // The route as the router matched it (`/v1/products/{id}`).
        let path = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map_or(parts.uri.path(), |p| p.as_str());
        let needed = super::scopes::required(&parts.method, path);
        if !tenant.access.allows(needed) {
            let needed = needed.map_or("full access", |s| s.as_str());
            return Err(match tenant.caller {
                Caller::Key { .. } => ApiError::InsufficientScope(needed),
                Caller::Person(_) => ApiError::RoleForbids(needed),
            });
        }
        Ok(tenant)
    }
}

/// A request made with the platform admin token, or an operator's session
/// (and where it came from).
pub struct Admin {
    pub origin: Origin,
    /// `None`: the admin token; else the operator's (id, e-mail).
    pub operator: Option<(uuid::Uuid, String)>,
}

impl Admin {
    /// The admin or operator acting on `action`, for the audit trail.
    pub fn acting(&self, action: &'static str) -> Acting {
        match &self.operator {
            None => self.origin.acting(action, ActorKind::Admin, "admin"),
            Some((_, email)) => self.origin.acting(action, ActorKind::Operator, email),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let origin = Origin::of(&parts.headers, client_address(&parts.extensions));
        if let Some(token) = session_token(&parts.method, &parts.headers)? {
            let session = people::session(&state.db.app, &token)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            if session.merchant.is_some() || !session.operator {
                return Err(ApiError::Forbidden(
                    "this needs a platform operator; a merchant's staff session is not one",
                ));
            }
            return Ok(Admin {
                origin,
                operator: Some((session.person, session.email)),
            });
        }
        let given = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let token_matches = state
            .admin_token
            .as_deref()
            .is_some_and(|admin| constant_time_eq(given.as_bytes(), admin.as_bytes()));
        if token_matches {
            Ok(Admin {
                origin,
                operator: None,
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
