//! `/v1/sessions`: people log in and out; their passwords and second factors.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::db::{ActorKind, MerchantId, TenantTx};
use crate::http::{ApiError, ApiJson, Problem};
use crate::state::AppState;
use crate::tenancy::people::{self, secrets, Email, LoggedIn, LoginError, SessionToken};
use crate::tenancy::{client_address, session_token, Origin, SESSION_COOKIE};
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_session, delete_all_sessions))
        .routes(routes!(get_current_session, delete_current_session))
        .routes(routes!(post_password))
        .routes(routes!(post_totp, delete_totp))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
    /// The 6-digit code of the person's authenticator, when they turned it on.
    pub totp_code: Option<String>,
    /// The merchant to work for, when the person is on several staffs
    /// (default: the first they joined; an operator without it: the platform).
    pub merchant_id: Option<String>,
}

/// A session: the cookie is set for browsers; `token` is for scripts
/// (`Authorization: Bearer mss_…`).
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// The bearer token (shown at login only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Send it as `X-CSRF-Token` with every unsafe request made with the cookie.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    pub person: PersonView,
    /// The merchant the session works for; `null`: an operator's session.
    pub merchant_id: Option<Uuid>,
    /// The person's role there (`owner`, `admin`, `staff`, `support`, `viewer`).
    pub role: Option<String>,
    pub operator: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PersonView {
    pub id: Uuid,
    pub email: String,
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("a session token is a valid header value")
}

/// Logs a person in: a merchant's staff, or a platform operator. The same
/// 401 for an unknown address and a wrong password; 429 after repeated
/// failures for the account from one address (other addresses unaffected).
#[utoipa::path(post, path = "/v1/sessions", request_body = LoginBody, security(),
    responses(
        (status = 201, body = SessionView, description = "Also sets the session cookie (HttpOnly, SameSite=Lax)"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_session(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::default();
    if body.email.trim().is_empty() {
        errors.push("email", "give the e-mail address you log in with");
    }
    if body.password.is_empty() || body.password.chars().count() > people::model::MAX_PASSWORD_CHARS
    {
        errors.push("password", "give your password (at most 200 characters)");
    }
    let merchant = match body.merchant_id.as_deref() {
        None => Some(None),
        Some(raw) => errors
            .check(
                "merchant_id",
                Uuid::try_parse(raw).map_err(|_| "must be a merchant id (a UUID)".to_owned()),
            )
            .map(|id| Some(MerchantId(id))),
    };
    let merchant = errors.finish(merchant)?;
    let address = client_address(&extensions);
    let origin = Origin::of(&headers, address);
    let logged_in = people::log_in(
        &state.db.app,
        &state.logins,
        people::Login {
            email: &body.email,
            password: body.password,
            totp_code: body.totp_code.as_deref(),
            merchant,
            address,
            user_agent: origin.user_agent.as_deref(),
        },
    )
    .await;
    let logged_in = match logged_in {
        Ok(done) => done,
        Err(LoginError::Refused { person }) => {
            if let Some((_, merchants)) = person {
                // Recorded after the answer: a known address must not answer
                // later than an unknown one.
                let email = body.email.trim().to_lowercase();
                let state = state.clone();
                tokio::spawn(async move {
                    for merchant in merchants {
                        let acting = origin.acting("session.failed", ActorKind::Person, &email);
                        let target = ("people", email.as_str());
                        let recorded = TenantTx::record_audit_alone(
                            &state.db.app,
                            merchant,
                            &acting,
                            target,
                            &json!({}),
                        )
                        .await;
                        if let Err(err) = recorded {
                            tracing::warn!(error = %err, "recording a failed login failed");
                        }
                    }
                });
            }
            return Err(ApiError::Unauthorized);
        }
        Err(LoginError::Throttled(retry_after)) => {
            return Err(ApiError::LoginThrottled { retry_after })
        }
        Err(LoginError::SecondFactorRequired) => return Err(ApiError::SecondFactorRequired),
        Err(LoginError::Db(e)) => return Err(e.into()),
    };
    if let Some((merchant, role)) = logged_in.merchant {
        let acting = origin.acting("session.create", ActorKind::Person, &logged_in.email);
        let changes = json!({"role": role.as_str(), "expires_at": logged_in.expires_at});
        let session = logged_in.session.to_string();
        TenantTx::record_audit_alone(
            &state.db.app,
            merchant,
            &acting,
            ("sessions", &session),
            &changes,
        )
        .await?;
    }
    let view = view_of(&logged_in);
    let max_age = (logged_in.expires_at - Utc::now()).num_seconds().max(0);
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        session_cookie(logged_in.token.as_str(), max_age, over_tls(&headers)),
    );
    Ok(response)
}

fn view_of(logged_in: &LoggedIn) -> SessionView {
    SessionView {
        token: Some(logged_in.token.as_str().to_owned()),
        csrf_token: logged_in.token.csrf_token(),
        expires_at: logged_in.expires_at,
        person: PersonView {
            id: logged_in.person,
            email: logged_in.email.clone(),
        },
        merchant_id: logged_in.merchant.map(|(m, _)| m.0),
        role: logged_in.merchant.map(|(_, r)| r.as_str().to_owned()),
        operator: logged_in.merchant.is_none(),
    }
}

/// The session of this request (cookie with CSRF for unsafe methods, or bearer).
async fn current(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(SessionToken, people::LiveSession), ApiError> {
    let token = session_token(method, headers)?.ok_or(ApiError::Unauthorized)?;
    let session = people::session(&state.db.app, &token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok((token, session))
}

/// Who this session is: the person, the merchant and role, and its CSRF token.
#[utoipa::path(get, path = "/v1/sessions/current", security(("session" = [])),
    responses(
        (status = 200, body = SessionView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_current_session(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let (token, session) = current(&state, &method, &headers).await?;
    let role = match session.merchant {
        Some(merchant) => {
            let mut tx = TenantTx::begin_in_directory(&state.db.app, merchant).await?;
            let role = people::store::role_of(&mut tx, session.person).await?;
            tx.commit().await?;
            Some(role.ok_or(ApiError::Unauthorized)?.as_str().to_owned())
        }
        None => None,
    };
    Ok(Json(SessionView {
        token: None,
        csrf_token: token.csrf_token(),
        expires_at: session.expires_at,
        person: PersonView {
            id: session.person,
            email: session.email,
        },
        merchant_id: session.merchant.map(|m| m.0),
        role,
        operator: session.merchant.is_none(),
    }))
}

fn cleared_cookie(headers: &HeaderMap) -> HeaderValue {
    session_cookie("", 0, over_tls(headers))
}

/// Logs out: ends this session and clears its cookie.
#[utoipa::path(delete, path = "/v1/sessions/current", security(("session" = [])),
    responses(
        (status = 204, description = "ended"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_current_session(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, session) = current(&state, &method, &headers).await?;
    people::end_session(&state.db.app, session.id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cleared_cookie(&headers))],
    )
        .into_response())
}

/// Ends every session of this person, everywhere (a lost laptop).
#[utoipa::path(delete, path = "/v1/sessions", security(("session" = [])),
    responses(
        (status = 204, description = "every session ended"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_all_sessions(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, session) = current(&state, &method, &headers).await?;
    people::end_sessions_of(&state.db.app, session.person).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cleared_cookie(&headers))],
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the person's password: every session of theirs ends (this one
/// too); they log in again with the new one.
#[utoipa::path(post, path = "/v1/sessions/current/password", request_body = PasswordBody,
    security(("session" = [])),
    responses(
        (status = 204, description = "changed; every session ended"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_password(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Response, ApiError> {
    let (_, session) = current(&state, &method, &headers).await?;
    let email = Email::parse(&session.email).map_err(|_| ApiError::Unauthorized)?;
    people::check_password(&body.new_password, &email)
        .map_err(|m| ApiError::field("new_password", m))?;
    let person = person(&state, session.person).await?;
    if !secrets::verify_password_off_thread(body.current_password, Some(person.password_hash)).await
    {
        return Err(ApiError::field(
            "current_password",
            "is not your current password",
        ));
    }
    let hash = secrets::hash_password_off_thread(body.new_password).await;
    people::store::set_password(&state.db.app, session.person, &hash).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cleared_cookie(&headers))],
    )
        .into_response())
}

async fn person(state: &AppState, id: Uuid) -> Result<people::Person, ApiError> {
    let mut conn = state.db.app.acquire().await?;
    people::store::person_by_id(&mut conn, id)
        .await?
        .ok_or(ApiError::Unauthorized)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpBody {
    /// The secret from a first call without it (base32), to turn it on.
    pub secret: Option<String>,
    /// The current 6-digit code of that secret (or, to turn it off, of the one on).
    pub code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TotpView {
    /// The secret, base32 (for an authenticator app).
    pub secret: String,
    /// `otpauth://totp/…`: a QR code of it sets up an authenticator.
    pub otpauth_uri: String,
    /// Whether the second factor is on (after a call with the secret and its code).
    pub enabled: bool,
}

/// Sets up a TOTP second factor (RFC 6238): a call without a body's secret
/// proposes one; a call with that secret and its current code turns it on.
/// From then on a login needs `totp_code`.
#[utoipa::path(post, path = "/v1/sessions/current/totp", request_body = TotpBody,
    security(("session" = [])),
    responses(
        (status = 200, body = TotpView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_totp(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TotpBody>,
) -> Result<Json<TotpView>, ApiError> {
    let (_, session) = current(&state, &method, &headers).await?;
    let uri = |secret: &str| {
        format!(
            "otpauth://totp/Mercato:{0}?secret={secret}&issuer=Mercato",
            session.email
        )
    };
    let Some(raw) = body.secret.as_deref() else {
        let secret = secrets::base32(&secrets::new_totp_secret());
        return Ok(Json(TotpView {
            otpauth_uri: uri(&secret),
            secret,
            enabled: false,
        }));
    };
    let secret = secrets::base32_decode(raw)
        .ok_or_else(|| ApiError::field("secret", "is not a base32 secret of at least 80 bits"))?;
    let code = body.code.as_deref().unwrap_or("");
    if !secrets::totp_accepts(&secret, code, Utc::now().timestamp()) {
        return Err(ApiError::field(
            "code",
            "is not the current code of this secret",
        ));
    }
    people::store::set_totp_secret(&state.db.app, session.person, Some(&secret)).await?;
    Ok(Json(TotpView {
        otpauth_uri: uri(raw),
        secret: raw.to_owned(),
        enabled: true,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpOffBody {
    /// A current code of the second factor being turned off.
    pub code: String,
}

/// Turns the second factor off (with a current code).
#[utoipa::path(delete, path = "/v1/sessions/current/totp", request_body = TotpOffBody,
    security(("session" = [])),
    responses(
        (status = 204, description = "off"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_totp(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TotpOffBody>,
) -> Result<StatusCode, ApiError> {
    let (_, session) = current(&state, &method, &headers).await?;
    let person = person(&state, session.person).await?;
    let on = person.totp_secret.unwrap_or_default();
    if on.is_empty() || !secrets::totp_accepts(&on, &body.code, Utc::now().timestamp()) {
        return Err(ApiError::field(
            "code",
            "is not a current code of your second factor",
        ));
    }
    people::store::set_totp_secret(&state.db.app, session.person, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
