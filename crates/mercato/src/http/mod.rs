//! Shared web plumbing and the router.

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod json;
mod metrics;
mod openapi;
pub mod pagination;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::get;
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, FieldError, FieldErrors, Problem};
pub use json::ApiJson;

use crate::checkout::Checkout;
use crate::db::Db;
use crate::inventory::Inventory;

/// What every handler can reach. Cloned for every request and extractor, so it
/// is one reference-counted pointer.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub db: Db,
    pub admin_token: Arc<str>,
    pub keys: auth::KeyCache,
    pub inventory: Inventory,
    pub checkout: Checkout,
    /// The online migration of legacy orders: which shapes to write and read.
    pub migration: Arc<pgshift::ReadSwitch>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    // Install the recorder now, so the first requests are counted too.
    metrics::handle();
    let api = Router::new()
        .merge(crate::tenancy::http::routes())
        .merge(crate::catalog::http::routes())
        .merge(crate::inventory::http::routes())
        .merge(crate::checkout::http::routes())
        .merge(crate::legacy_orders::http::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn(metrics::track));
    api.route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::render))
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

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "The database answers"),
    (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    sqlx::query("select 1")
        .execute(&state.db.app)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "readiness check failed");
            ApiError::Unavailable("the database does not answer")
        })?;
    Ok("ready")
}
