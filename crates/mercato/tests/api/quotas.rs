//! Per-merchant rate limits: a plan set by the admin, 429 with `Retry-After`
//! over it, the IETF `RateLimit-Policy` / `RateLimit` fields on every answer,
//! bursts, route classes counted apart, and another merchant untouched.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Merchant, TestApp, ADMIN_TOKEN};

async fn set_plan(
    app: &TestApp,
    merchant: &Merchant,
    plan: serde_json::Value,
) -> crate::helpers::Response {
    app.request(
        Method::PATCH,
        &format!("/v1/merchants/{}", merchant.id),
        Some(ADMIN_TOKEN),
        Some(json!({"rate_limits": plan})),
    )
    .await
}

fn header<'a>(r: &'a crate::helpers::Response, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn over_the_plan_a_merchant_gets_429_with_retry_after_and_ratelimit_fields() {
    let app = TestApp::spawn().await;
    let shop = app.create_merchant("limited").await;
    let other = app.create_merchant("unlimited").await;
    let set = set_plan(
        &app,
        &shop,
        json!({"reads": {"per_second": 1, "burst": 3}, "writes": {"per_second": 1, "burst": 2}}),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["rate_limits"]["reads"]["burst"], 3);

    // A burst of 3 reads passes, each answer saying what is left.
    for left in [2, 1, 0] {
        let r = app.get("/v1/products", &shop.key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(header(&r, "ratelimit-policy"), Some("\"reads\";q=3;w=3"));
        assert_eq!(
            header(&r, "ratelimit").map(|v| v.starts_with(&format!("\"reads\";r={left};t="))),
            Some(true),
            "{:?}",
            header(&r, "ratelimit")
        );
    }
    let refused = app.get("/v1/products", &shop.key).await;
    refused.assert_problem(429, "rate-limited");
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    assert!(header(&refused, "ratelimit").is_some_and(|v| v.starts_with("\"reads\";r=0;")));

    // Writes are their own class: still two left.
    for _ in 0..2 {
        let r = app
            .post("/v1/products", &shop.key, json!({"name": "Mug", "variants": [{"sku": format!("M{}", uuid::Uuid::now_v7().simple()), "price": {"amount": 100, "currency": "EUR"}}]}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(header(&r, "ratelimit-policy").is_some_and(|v| v.starts_with("\"writes\";q=2")));
    }
    app.post(
        "/v1/products",
        &shop.key,
        json!({"name": "x", "variants": []}),
    )
    .await
    .assert_problem(429, "rate-limited");

    // Another merchant (no plan) is neither limited nor told of limits.
    for _ in 0..10 {
        let r = app.get("/v1/products", &other.key).await;
        assert_eq!(r.status, 200);
        assert!(header(&r, "ratelimit").is_none());
    }

    // A second later, one more read is admitted.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.get("/v1/products", &shop.key).await.status, 200);

    // Clearing the plan lifts every limit.
    let cleared = set_plan(&app, &shop, serde_json::Value::Null).await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert!(cleared.body["rate_limits"].is_null());
    for _ in 0..10 {
        assert_eq!(app.get("/v1/products", &shop.key).await.status, 200);
    }
}

#[tokio::test]
async fn a_plan_with_bad_rates_is_422_naming_each_field_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let shop = app.create_merchant("planned").await;
    let bad = set_plan(
        &app,
        &shop,
        json!({"reads": {"per_second": 0, "burst": 5}, "writes": {"per_second": -2, "burst": 0},
               "bulk": {"per_second": 1, "burst": 1}}),
    )
    .await;
    bad.assert_problem(422, "validation-error");
    let mut fields = bad.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        [
            "rate_limits.bulk",
            "rate_limits.reads.per_second",
            "rate_limits.writes.burst",
            "rate_limits.writes.per_second"
        ]
    );
    let r = app.get("/v1/products", &shop.key).await;
    assert!(header(&r, "ratelimit").is_none(), "no plan was set");
    // A merchant key cannot set plans; an unknown merchant is 404.
    app.request(
        Method::PATCH,
        &format!("/v1/merchants/{}", shop.id),
        Some(&shop.key),
        Some(json!({"rate_limits": null})),
    )
    .await
    .assert_problem(403, "forbidden");
    app.request(
        Method::PATCH,
        &format!("/v1/merchants/{}", uuid::Uuid::now_v7()),
        Some(ADMIN_TOKEN),
        Some(json!({"rate_limits": null})),
    )
    .await
    .assert_problem(404, "not-found");
}
