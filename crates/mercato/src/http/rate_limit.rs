//! Per-merchant rate limits as a layer: a request with a merchant key counts
//! against its merchant's plan for its route class (reads, writes, checkout);
//! over it, a 429 problem with `Retry-After`. Every response of a limited
//! merchant carries the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers): `"writes";q=100;w=1` and
//! `"writes";r=37;t=1`. Requests without a merchant key (admin, customers'
//! links) and merchants without a plan are not limited. The buckets are the
//! `quotas::Limiter`'s: in process, or in Redis for several instances.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{authenticate, Tenant};
use super::ApiError;
use crate::quotas::{Decision, Rate, RouteClass};
use crate::state::AppState;

/// The class of a request by its method and path.
pub fn route_class(method: &Method, path: &str) -> RouteClass {
    if method == Method::GET || method == Method::HEAD {
        RouteClass::Reads
    } else if method == Method::POST && path.trim_end_matches('/') == "/v1/checkouts" {
        RouteClass::Checkout
    } else {
        RouteClass::Writes
    }
}

pub async fn rate_limit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Only merchant keys are limited; anything else goes on to be answered (or refused) as usual.
    let is_merchant_key = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("mk_"));
    if !is_merchant_key {
        return next.run(req).await;
    }
    let tenant = match req.extensions().get::<Tenant>() {
        Some(t) => t.clone(),
        None => match authenticate(&state, req.headers()).await {
            Ok(t) => t,
            // The handler answers 401 (or the route needs no key).
            Err(_) => return next.run(req).await,
        },
    };
    let class = route_class(req.method(), req.uri().path());
    let Some(rate) = tenant.plan.as_ref().and_then(|p| p.rate(class)) else {
        req.extensions_mut().insert(tenant);
        return next.run(req).await;
    };
    let decision = state.limiter.check(tenant.merchant_id, class, rate).await;
    if !decision.allowed {
        metrics::counter!("rate_limited_total", "class" => class.as_str()).increment(1);
        let mut response = ApiError::RateLimited {
            class: class.as_str(),
            retry_after: decision.retry_after_seconds.ceil().max(1.0) as u64,
        }
        .into_response();
        set_headers(response.headers_mut(), class, rate, &decision);
        return response;
    }
    req.extensions_mut().insert(tenant);
    let mut response = next.run(req).await;
    set_headers(response.headers_mut(), class, rate, &decision);
    response
}

fn set_headers(headers: &mut HeaderMap, class: RouteClass, rate: Rate, d: &Decision) {
    // The policy as a quota of `burst` per the time a full bucket takes to refill.
    let window = (f64::from(rate.burst) / rate.per_second).ceil().max(1.0) as u64;
    let name = class.as_str();
    let policy = format!("\"{name}\";q={};w={window}", rate.burst);
    let state = format!(
        "\"{name}\";r={};t={}",
        d.remaining,
        d.reset_seconds.ceil() as u64
    );
    for (field, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(field, v);
        }
    }
    if !d.allowed {
        let retry = d.retry_after_seconds.ceil().max(1.0) as u64;
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(retry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_checkouts_are_classed_by_method_and_path() {
        assert_eq!(
            route_class(&Method::GET, "/v1/checkouts"),
            RouteClass::Reads
        );
        assert_eq!(
            route_class(&Method::POST, "/v1/checkouts"),
            RouteClass::Checkout
        );
        assert_eq!(
            route_class(&Method::POST, "/v1/products"),
            RouteClass::Writes
        );
        assert_eq!(
            route_class(&Method::DELETE, "/v1/products/x"),
            RouteClass::Writes
        );
    }
}
