//! Where every route is mounted. Each context registers its handlers together
//! with their OpenAPI docs (`OpenApiRouter` + `routes!`), so what is served and
//! what `/openapi.json` documents cannot drift apart.

use std::sync::Arc;

use axum::extract::State;
use axum::{middleware, Extension, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::openapi::{self, ApiDoc};
use crate::http::{self, metrics, ApiError, Problem};
use crate::state::AppState;
use crate::{catalog, checkout, events, inventory, legacy_orders, pricing, remediation, tenancy};

/// The whole service: every context's routes inside the web plumbing.
pub fn router(state: AppState) -> Router {
    // Install the recorder now, so the first requests are counted too.
    metrics::handle();
    let (api, api_doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(tenancy::http::routes())
        .merge(catalog::http::routes())
        .merge(inventory::http::routes())
        .merge(checkout::http::routes())
        .merge(crate::customers::http::routes())
        .merge(crate::privacy::http::routes())
        .merge(crate::mail::http::routes())
        .merge(crate::audit::http::routes())
        .merge(crate::tenancy::keys_http::routes())
        .merge(crate::team::routes())
        .merge(crate::storefront::http::routes())
        .merge(pricing::http::routes())
        .merge(events::http::routes())
        .merge(remediation::http::routes())
        .merge(legacy_orders::http::routes())
        .merge(tenancy::moves::routes())
        .merge(crate::analytics::http::routes())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts();
    // Operators' endpoints: documented, but not counted in the request metrics.
    let (operations, operations_doc) = OpenApiRouter::new()
        .routes(routes!(openapi::document))
        .split_for_parts();
    let mut doc = api_doc;
    doc.merge(operations_doc);
    openapi::document_common_answers(&mut doc);
    openapi::refer_to_page_items(&mut doc);
    openapi::shorten_summaries(&mut doc);
    let routes = api
        .route_layer(middleware::from_fn(metrics::track))
        .merge(operations.layer(Extension(Arc::new(doc))));
    let routes = http::with_fallbacks(routes)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::idempotency,
        ))
        // Outside the idempotency layer: a limited request claims no key.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            tenancy::rate_limit::rate_limit,
        ))
        // Outermost: a store request's shop and CORS (preflights end here).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::storefront::http::store_layer,
        ));
    http::with_plumbing(routes, state)
}

/// `/metrics` on its own listener (`--metrics-listen`), for the operator's
/// Prometheus: it shows platform-wide figures no merchant should read.
pub fn metrics_router() -> Router {
    // Installed here too, should this listener start first.
    metrics::handle();
    Router::new().route("/metrics", axum::routing::get(metrics::render))
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(),
    responses((status = 200, description = "The process is up")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the process is up and its database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(), responses(
    (status = 200, description = "The database answers"),
    (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    crate::db::ping(&state.db.app).await.map_err(|err| {
        tracing::warn!(error = %err, "readiness check failed");
        ApiError::Unavailable("the database does not answer")
    })?;
    Ok("ready")
}
