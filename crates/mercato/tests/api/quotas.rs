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

/// Redis on this machine (`.ci/run` starts it when it is down).
const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn two_instances_with_redis_admit_together_what_one_plan_allows() {
    let db = crate::helpers::TestDatabase::create().await;
    let mut config = db.config();
    config.redis_url = Some(REDIS.into());
    let app = TestApp::spawn_with(db, config.clone()).await;
    let peer = TestApp::spawn_peer_with(config).await;
    let shop = app.create_merchant("shared-limit").await;
    // 10 reads at once, then one every 10 s: well within a test's time, nothing refills.
    let set = set_plan(
        &app,
        &shop,
        json!({"reads": {"per_second": 0.1, "burst": 10}}),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..30 {
        let base = if i % 2 == 0 {
            app.base.clone()
        } else {
            peer.clone()
        };
        let r = crate::helpers::send(
            &app.client,
            &base,
            Method::GET,
            "/v1/products",
            Some(&shop.key),
            &[],
            crate::helpers::Body::Empty,
        )
        .await
        .expect("answered");
        match r.status.as_u16() {
            200 => admitted += 1,
            429 => refused += 1,
            other => panic!("status {other}: {}", r.body),
        }
    }
    // One limit for both: exactly the burst (Redis checks atomically; the rate adds
    // at most one more over the test's few seconds).
    assert!(
        (10..=11).contains(&admitted),
        "{admitted} admitted, {refused} refused"
    );
    assert_eq!(admitted + refused, 30);
}

#[tokio::test]
async fn with_redis_unreachable_requests_are_admitted_and_the_failure_counted() {
    let db = crate::helpers::TestDatabase::create().await;
    let mut config = db.config();
    // Nothing listens here.
    config.redis_url = Some("redis://127.0.0.1:1".into());
    let app = TestApp::spawn_with(db, config).await;
    let shop = app.create_merchant("fail-open").await;
    let set = set_plan(&app, &shop, json!({"reads": {"per_second": 1, "burst": 1}})).await;
    assert_eq!(set.status, 200, "{}", set.body);
    for _ in 0..5 {
        let r = app.get("/v1/products", &shop.key).await;
        assert_eq!(r.status, 200, "fail open: {}", r.body);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rate_limit_store_errors_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_daily_checkout_quota_refuses_the_checkout_past_it_with_quota_exceeded() {
    let app = TestApp::spawn().await;
    let shop = app.merchant_with_stock("daily-quota", "MUG", 100).await;
    let set = set_plan(&app, &shop, json!({"daily_checkouts": 2})).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let checkout = || {
        app.post(
            "/v1/checkouts",
            &shop.key,
            json!({"customer": {"email": "ann@example.com"}, "items": [{"sku": "MUG", "quantity": 1}], "payment_method": "pm_card_ok"}),
        )
    };
    for left in [1, 0] {
        let r = checkout().await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"checkout-daily\";q=2;w=86400")
        );
        assert!(header(&r, "ratelimit")
            .is_some_and(|v| v.starts_with(&format!("\"checkout-daily\";r={left};t="))));
    }
    let refused = checkout().await;
    refused.assert_problem(429, "quota-exceeded");
    let retry: u64 = header(&refused, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=86_400).contains(&retry));
    assert_eq!(
        app.count("orders").await,
        2,
        "nothing placed past the quota"
    );
    // Reads are not checkouts.
    assert_eq!(app.get("/v1/products", &shop.key).await.status, 200);
}

#[tokio::test]
async fn a_merchants_bulkhead_queues_its_own_requests_and_no_one_elses() {
    let app = TestApp::spawn().await;
    let flooding = app.merchant_with_stock("bulkhead", "MUG", 100).await;
    let other = app.create_merchant("neighbour").await;
    let set = set_plan(&app, &flooding, json!({"concurrent": 1})).await;
    assert_eq!(set.status, 200, "{}", set.body);
    // Four slow checkouts at once (the sandbox takes 300 ms for pm_card_slow):
    // with one place, each is placed only once the one before was answered.
    let flood = futures_util::future::join_all((0..4).map(|_| {
        app.post(
            "/v1/checkouts",
            &flooding.key,
            json!({"customer": {"email": "bo@example.com"}, "items": [{"sku": "MUG", "quantity": 1}], "payment_method": "pm_card_slow"}),
        )
    }));
    let neighbour = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = app.get("/v1/products", &other.key).await;
        (r.status, std::time::Instant::now())
    };
    let (answers, (neighbour_status, neighbour_done)) = tokio::join!(flood, neighbour);
    let flood_done = std::time::Instant::now();
    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.body);
    }
    assert_eq!(neighbour_status, 200);
    assert!(
        neighbour_done < flood_done,
        "the neighbour was not queued behind the flood"
    );
    let gaps: Vec<f64> = sqlx::query_scalar::<_, Option<f64>>(
        "select extract(epoch from created_at - lag(created_at) over (order by created_at))::float8
         from orders order by created_at",
    )
    .fetch_all(&app.owner)
    .await
    .expect("orders")
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(gaps.len(), 3);
    assert!(
        gaps.iter().all(|g| *g >= 0.25),
        "placed one at a time: {gaps:?}"
    );
}
