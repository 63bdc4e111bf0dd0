//! Web plumbing only: problem+json errors, the JSON extractor, authentication,
//! idempotency keys, metrics, the OpenAPI document's frame, and the tower
//! layers every request passes through. Routes live with their contexts and are
//! mounted in `routes.rs`.

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod metrics;
pub mod openapi;

use std::time::Duration;

use axum::http::{HeaderName, Request, StatusCode};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, Problem};
pub use json::ApiJson;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the mounted routes in what every request passes through: problem
/// answers for unknown routes and methods, idempotency keys, request ids,
/// tracing spans and a timeout.
pub fn with_plumbing(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        .layer(
            tower::ServiceBuilder::new()
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
