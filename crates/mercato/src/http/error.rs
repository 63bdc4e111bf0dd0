//! Every error leaves the service as RFC 9457 `application/problem+json`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::validation::FieldError;
use crate::validation::Invalid;

const PROBLEM_BASE: &str = "https://mercato.dev/problems/";

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI naming the kind of problem, e.g. `https://mercato.dev/problems/out-of-stock`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Field errors left out of `errors` (at most `MAX_FIELD_ERRORS` are listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors_omitted: Option<usize>,
}

/// The most field errors one answer lists; a body with thousands of bad fields
/// must not make an answer thousands of times its size.
pub const MAX_FIELD_ERRORS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than the limit (2 MB)")]
    PayloadTooLarge,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    /// A scoped key asked for what its scopes do not allow (names the scope needed).
    #[error("this key's scopes do not include {0}")]
    InsufficientScope(&'static str),
    /// A person's role does not allow the request (names the scope needed).
    #[error("your role does not include {0}")]
    RoleForbids(&'static str),
    /// The merchant is suspended by the platform: nothing is served for it.
    #[error("this merchant is suspended; contact the platform's operators")]
    MerchantSuspended,
    /// An unsafe request made with a session cookie and without its CSRF token.
    #[error("this request needs the session's CSRF token in the X-CSRF-Token header")]
    CsrfTokenInvalid,
    /// The person has a second factor on and gave no (or a wrong) code.
    #[error("this account needs its one-time code (totp_code)")]
    SecondFactorRequired,
    /// Too many failed logins for this account from this address, or from this address.
    #[error("too many failed logins; retry in {retry_after} s")]
    LoginThrottled { retry_after: u64 },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A signed link past its expiry.
    #[error("{0}")]
    Gone(&'static str),
    /// A request that conflicts with the current state (duplicate SKU, out of stock, ...).
    #[error("{detail}")]
    Conflict {
        kind: &'static str,
        title: &'static str,
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error(
        "payment failed ({reason}); order {order_id} was not placed and nothing stays reserved"
    )]
    PaymentFailed {
        order_id: uuid::Uuid,
        reason: String,
    },
    /// A payment outside checkout (a remediation link's) that the provider refused.
    #[error("{0}")]
    PaymentRefused(String),
    /// Same Idempotency-Key, different request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// Same Idempotency-Key while the first request is still running.
    #[error("a request with this Idempotency-Key is still in flight; retry in {retry_after} s")]
    IdempotencyKeyInFlight { retry_after: u64 },
    #[error("{0}")]
    Unavailable(&'static str),
    /// Over the merchant's plan for this route class.
    #[error("over this merchant's {class} rate limit; retry in {retry_after} s")]
    RateLimited {
        class: &'static str,
        retry_after: u64,
    },
    /// Too many unknown keys from one client address.
    #[error("too many failed authentications from this address; retry in {retry_after} s")]
    AuthenticationsFailing { retry_after: u64 },
    /// Over the merchant's daily checkout quota.
    #[error("this merchant's checkouts for today are used up; the quota renews in {retry_after} s (at 00:00 UTC)")]
    QuotaExceeded { retry_after: u64 },
    #[error("the request target is longer than {} bytes", super::MAX_URI_BYTES)]
    UriTooLong,
    /// An error answer made outside Mercato's handlers (framework, tower layers).
    #[error("{}", .0.canonical_reason().unwrap_or("error"))]
    Bare(StatusCode),
    #[error("internal error")]
    Internal(sqlx::Error),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    /// The id in a path: anything that is not a UUID names no `what` (404).
    pub fn path_id(raw: &str, what: &'static str) -> Result<uuid::Uuid, ApiError> {
        uuid::Uuid::try_parse(raw).map_err(|_| ApiError::NotFound(what))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::MalformedJson(_) => {
                (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            }
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-error",
                "Invalid request",
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::InsufficientScope(_) => (
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
            ),
            ApiError::RoleForbids(_) => (
                StatusCode::FORBIDDEN,
                "role-forbids",
                "Not allowed for your role",
            ),
            ApiError::MerchantSuspended => (
                StatusCode::FORBIDDEN,
                "merchant-suspended",
                "Merchant suspended",
            ),
            ApiError::CsrfTokenInvalid => (
                StatusCode::FORBIDDEN,
                "csrf-token-invalid",
                "CSRF token missing or invalid",
            ),
            ApiError::SecondFactorRequired => (
                StatusCode::UNAUTHORIZED,
                "second-factor-required",
                "Second factor required",
            ),
            ApiError::LoginThrottled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "login-throttled",
                "Too many failed logins",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Gone(_) => (StatusCode::GONE, "link-expired", "Link expired"),
            ApiError::Conflict { kind, title, .. } => (StatusCode::CONFLICT, kind, title),
            ApiError::PaymentFailed { .. } | ApiError::PaymentRefused(_) => (
                StatusCode::PAYMENT_REQUIRED,
                "payment-failed",
                "Payment failed",
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            ApiError::IdempotencyKeyInFlight { .. } => (
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in flight",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::UriTooLong => (StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long"),
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::AuthenticationsFailing { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "authentications-failing",
                "Too many failed authentications",
            ),
            ApiError::QuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Quota exceeded",
            ),
            ApiError::Bare(status) => (
                *status,
                match status.as_u16() {
                    400 => "bad-request",
                    404 => "not-found",
                    405 => "method-not-allowed",
                    408 | 503 | 504 => "unavailable",
                    413 => "payload-too-large",
                    415 => "unsupported-media-type",
                    500 => "internal",
                    _ => "http-error",
                },
                status.canonical_reason().unwrap_or("Error"),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

/// Input that did not parse is a 422 naming each bad field.
impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::Validation(invalid.0)
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached is a 503 to retry, not a 500.
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry shortly")
            }
            // The merchant moved while this request ran on its old cell.
            err if crate::db::served_elsewhere(&err) => {
                ApiError::Unavailable("this merchant has just moved to another database; retry")
            }
            other => ApiError::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = %err, "request failed");
        }
        let (status, kind, title) = self.parts();
        let retry_after = match &self {
            ApiError::IdempotencyKeyInFlight { retry_after }
            | ApiError::RateLimited { retry_after, .. }
            | ApiError::AuthenticationsFailing { retry_after }
            | ApiError::LoginThrottled { retry_after }
            | ApiError::QuotaExceeded { retry_after } => Some(*retry_after),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        let detail = self.to_string();
        let mut errors = match self {
            ApiError::Validation(errors) | ApiError::Conflict { errors, .. } => errors,
            _ => Vec::new(),
        };
        let errors_omitted = (errors.len() > MAX_FIELD_ERRORS).then(|| {
            let omitted = errors.len() - MAX_FIELD_ERRORS;
            errors.truncate(MAX_FIELD_ERRORS);
            omitted
        });
        let problem = Problem {
            kind: format!("{PROBLEM_BASE}{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
            errors_omitted,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
