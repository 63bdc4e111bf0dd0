//! Web plumbing only: problem+json errors, the JSON and query extractors,
//! the `Idempotency-Key` header, metrics, the OpenAPI document's frame, and
//! the tower layers every request passes through. It knows no merchant and
//! imports no context: authentication is `tenancy`'s, the layers that need
//! the merchant (rate limits, idempotent replays) are `tenancy`'s and
//! `idempotency`'s, and `routes.rs` mounts them between these.

pub mod error;
pub mod idempotency;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod query;

use std::any::Any;
use std::time::Duration;

use axum::extract::Request as AnyRequest;
use axum::http::{header, HeaderName, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{middleware, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, Problem};
pub use json::ApiJson;
pub use query::ApiQuery;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Problem answers for unknown routes and methods; the layers that wrap the
/// routes go on after this, so they see these answers too.
pub fn with_fallbacks(routes: Router<AppState>) -> Router<AppState> {
    routes
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// Wraps the routes in what every request passes through: request ids,
/// tracing spans, problem answers for what the framework refuses, a
/// timeout, and a 500 problem for a handler that panics.
pub fn with_plumbing(routes: Router<AppState>, state: AppState) -> Router {
    catch_panics(routes)
        .layer(
            tower::ServiceBuilder::new()
                .layer(middleware::map_response(problem_for_bare_errors))
                .layer(middleware::from_fn(refuse_long_uris))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                        let request_id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!(
                            "http",
                            method = %req.method(),
                            uri = %req.uri(),
                            request_id,
                            merchant_id = tracing::field::Empty,
                        )
                    }),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Duration::from_secs(30),
                )),
        )
        .with_state(state)
}

/// A handler (or a layer inside this one) that panics answers 500
/// problem+json instead of dropping the connection. Innermost of the
/// plumbing, so the answer still carries the request id and its trace span.
pub fn catch_panics<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes.layer(CatchPanicLayer::custom(panic_answer))
}

fn panic_answer(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "request handler panicked");
    ApiError::Bare(StatusCode::INTERNAL_SERVER_ERROR).into_response()
}

/// The longest request target served. hyper itself answers 414 with an empty
/// body only past 64 KiB; below that, this limit answers with a problem.
pub const MAX_URI_BYTES: usize = 8 * 1024;

async fn refuse_long_uris(req: AnyRequest, next: Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return ApiError::UriTooLong.into_response();
    }
    next.run(req).await
}

/// Every error leaves as problem+json, also those the framework and tower
/// layers make themselves (a query-string rejection, a timeout's bare 503).
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/problem+json"));
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let mut problem = ApiError::Bare(status).into_response();
    // Keep what the layers said about the request (request id, Retry-After, Allow).
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}
