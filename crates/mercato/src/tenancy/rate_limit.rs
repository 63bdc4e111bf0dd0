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

use super::request_tenant;
use crate::http::ApiError;
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
    // Only merchant keys are limited; anything else goes on to be answered (or
    // refused: the handler answers 401) as usual.
    let tenant = match request_tenant(&state, req.method(), req.extensions(), req.headers()).await {
        Ok(t) => t,
        Err(_) => return next.run(req).await,
    };
    let Some(plan) = tenant.plan.clone() else {
        req.extensions_mut().insert(tenant);
        return next.run(req).await;
    };
    let merchant = tenant.merchant_id;
    let class = route_class(req.method(), req.uri().path());
    let mut fields = Vec::new();
    if let Some(rate) = plan.rate(class) {
        let decision = state.limiter.check(merchant, class, rate).await;
        fields.push(rate_fields(class, rate, &decision));
        if !decision.allowed {
            metrics::counter!("rate_limited_total", "class" => class.as_str()).increment(1);
            let retry_after = decision.retry_after_seconds.ceil().max(1.0) as u64;
            return refused(
                ApiError::RateLimited {
                    class: class.as_str(),
                    retry_after,
                },
                &fields,
            );
        }
    }
    if class == RouteClass::Checkout {
        if let Some(limit) = plan.daily_checkouts {
            let now = chrono::Utc::now();
            let day = now.timestamp().div_euclid(86_400);
            let until_midnight = (day + 1) * 86_400 - now.timestamp();
            match state.limiter.count_daily(merchant, day, limit).await {
                Some(used) => fields.push(daily_fields(
                    limit,
                    limit.saturating_sub(used),
                    until_midnight,
                )),
                None => {
                    metrics::counter!("rate_limited_total", "class" => "checkout-daily")
                        .increment(1);
                    fields.push(daily_fields(limit, 0, until_midnight));
                    return refused(
                        ApiError::QuotaExceeded {
                            retry_after: until_midnight.max(1) as u64,
                        },
                        &fields,
                    );
                }
            }
        }
    }
    // The merchant's bulkhead: beyond its bound, its requests wait here, not in
    // the connection pool that every merchant shares.
    let _place = match plan.concurrent {
        Some(bound) => state.limiter.enter(merchant, bound).await,
        None => None,
    };
    req.extensions_mut().insert(tenant);
    let mut response = next.run(req).await;
    set_fields(response.headers_mut(), &fields);
    response
}

/// A policy and its state: (`RateLimit-Policy` item, `RateLimit` item).
type Fields = (String, String);

fn rate_fields(class: RouteClass, rate: Rate, d: &Decision) -> Fields {
    // The policy as a quota of `burst` per the time a full bucket takes to refill.
    let window = (f64::from(rate.burst) / rate.per_second).ceil().max(1.0) as u64;
    let name = class.as_str();
    (
        format!("\"{name}\";q={};w={window}", rate.burst),
        format!(
            "\"{name}\";r={};t={}",
            d.remaining,
            d.reset_seconds.ceil() as u64
        ),
    )
}

fn daily_fields(limit: u32, remaining: u32, until_midnight: i64) -> Fields {
    (
        format!("\"checkout-daily\";q={limit};w=86400"),
        format!("\"checkout-daily\";r={remaining};t={until_midnight}"),
    )
}

fn set_fields(headers: &mut HeaderMap, fields: &[Fields]) {
    if fields.is_empty() {
        return;
    }
    let join = |pick: fn(&Fields) -> &String| {
        fields
            .iter()
            .map(pick)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, value) in [
        ("ratelimit-policy", join(|f| &f.0)),
        ("ratelimit", join(|f| &f.1)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// The 429 (its `Retry-After` is the error's), with the fields that refused it.
fn refused(error: ApiError, fields: &[Fields]) -> Response {
    let mut response = error.into_response();
    set_fields(response.headers_mut(), fields);
    response
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
