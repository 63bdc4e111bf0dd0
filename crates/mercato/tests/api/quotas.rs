//! Per-merchant rate limits: a plan set by the admin, 429 with `Retry-After`
//! over it, the IETF `RateLimit-Policy` / `RateLimit` fields on every answer,
//! bursts, route classes counted apart, and another merchant untouched.

use std::time::Duration;

use mercato::db::TenantTx;
use mercato::tenancy::{MerchantId, Rotation};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{assert_inventory_consistent, Merchant, TestApp, TestDatabase, ADMIN_TOKEN};

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

// Background workers take turns across merchants: each batch gives every
// merchant with work an equal share, so one merchant's backlog never holds
// back another's. The tests run the batches themselves (workers idle).

fn idle_workers(db: &TestDatabase) -> mercato::config::Config {
    let mut config = db.config();
    config.worker_interval = Duration::from_secs(3600);
    config.payment_delay = Duration::ZERO;
    config
}

async fn expire_batch(owner: &PgPool, limit: i64, rotation: &mut Rotation) -> (u64, usize) {
    let mut tx = owner.begin().await.unwrap();
    let batch = mercato::inventory::expire_due_reservations(&mut tx, limit, rotation)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    batch
}

async fn active_reservations(owner: &PgPool, merchant: &Merchant) -> i64 {
    sqlx::query_scalar(
        "select count(*) from reservations where merchant_id = $1 and status = 'active'",
    )
    .bind(merchant.id.0)
    .fetch_one(owner)
    .await
    .unwrap()
}

#[tokio::test]
async fn reservation_expiry_takes_turns_across_merchants() {
    let db = TestDatabase::create().await;
    let config = idle_workers(&db);
    let app = TestApp::spawn_with(db, config).await;
    let a = app.merchant_with_stock("backlog-shop", "A", 1000).await;
    let b = app.merchant_with_stock("small-shop", "B", 10).await;
    for (m, sku, n) in [(&a, "A", 60), (&b, "B", 3)] {
        for _ in 0..n {
            let r = app
                .post(
                    "/v1/reservations",
                    &m.key,
                    json!({"items": [{"sku": sku, "quantity": 1}], "ttl_seconds": 600}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
    }
    // A's 60 fell due before B's 3.
    sqlx::query(
        "update reservations set expires_at = now() - case when merchant_id = $1 then interval '1 hour' else interval '1 second' end",
    )
    .bind(a.id.0)
    .execute(&app.owner)
    .await
    .unwrap();
    let mut rotation = Rotation::default();
    // Oldest first, a batch of 20 would have been A's alone; in turns each
    // merchant's share is 10, of which B needs 3.
    assert_eq!(expire_batch(&app.owner, 20, &mut rotation).await, (13, 13));
    assert_eq!(
        active_reservations(&app.owner, &b).await,
        0,
        "B's 3 expired in the first batch"
    );
    assert_eq!(active_reservations(&app.owner, &a).await, 50);
    // With B done, A has each batch to itself.
    assert_eq!(expire_batch(&app.owner, 20, &mut rotation).await, (20, 20));
    assert_eq!(expire_batch(&app.owner, 50, &mut rotation).await, (30, 30));
    assert_eq!(expire_batch(&app.owner, 50, &mut rotation).await, (0, 0));
    assert_eq!(active_reservations(&app.owner, &a).await, 0);
    assert_inventory_consistent(&app.owner, &[("A", 1000), ("B", 10)]).await;
}

#[tokio::test]
async fn the_rotation_gives_each_of_many_merchants_a_turn_before_any_gets_two() {
    let db = TestDatabase::create().await;
    let config = idle_workers(&db);
    let app = TestApp::spawn_with(db, config).await;
    let mut merchants = Vec::new();
    for i in 0..5 {
        let m = app
            .merchant_with_stock(&format!("shop-{i}"), "S", 100)
            .await;
        for _ in 0..4 {
            let r = app
                .post(
                    "/v1/reservations",
                    &m.key,
                    json!({"items": [{"sku": "S", "quantity": 1}], "ttl_seconds": 600}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
        merchants.push(m);
    }
    sqlx::query("update reservations set expires_at = now() - interval '1 second'")
        .execute(&app.owner)
        .await
        .unwrap();
    // Batches of 2 among 5 merchants: a share of 1 each, and the rotation
    // moves on, so after 5 batches every merchant has had one expiry.
    let mut rotation = Rotation::default();
    for _ in 0..5 {
        assert_eq!(expire_batch(&app.owner, 2, &mut rotation).await, (2, 2));
    }
    let mut left = Vec::new();
    for m in &merchants {
        left.push(active_reservations(&app.owner, m).await);
    }
    assert_eq!(left, vec![2; 5], "10 expiries, 2 per merchant");
}

#[tokio::test]
async fn checkout_recovery_lists_stalled_orders_in_turns() {
    let db = TestDatabase::create().await;
    let config = idle_workers(&db);
    let app = TestApp::spawn_with(db, config).await;
    let a = app.merchant_with_stock("backlog-shop", "A", 100).await;
    let b = app.merchant_with_stock("small-shop", "B", 100).await;
    for (m, sku, n) in [(&a, "A", 12), (&b, "B", 2)] {
        for i in 0..n {
            let r = app
                .post(
                    "/v1/checkouts",
                    &m.key,
                    json!({"customer": {"email": format!("c{i}@example.com")},
                           "items": [{"sku": sku, "quantity": 1}], "payment_method": "pm_card_ok"}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
    }
    // As if each had stalled mid-way, A's long before B's.
    sqlx::query(
        "update orders set status = 'pending',
           updated_at = now() - case when merchant_id = $1 then interval '1 day' else interval '1 hour' end",
    )
    .bind(a.id.0)
    .execute(&app.owner)
    .await
    .unwrap();
    let mut rotation = Rotation::default();
    let mut conn = app.owner.acquire().await.unwrap();
    let first = mercato::checkout::stalled_orders(&mut conn, 1.0, 6, &mut rotation)
        .await
        .unwrap();
    // A share of 3 each, of which B needs 2.
    let whose: Vec<bool> = first.iter().map(|(m, _)| *m == b.id).collect();
    assert_eq!(whose.len(), 5);
    assert_eq!(
        whose.iter().filter(|is_b| **is_b).count(),
        2,
        "both of B's: {whose:?}"
    );
    assert_ne!(
        whose[0], whose[1],
        "the first two are one of each merchant's: {whose:?}"
    );
    let second = mercato::checkout::stalled_orders(&mut conn, 1.0, 6, &mut rotation)
        .await
        .unwrap();
    // Nothing advanced them, so the same come again, but the first place has
    // moved on: neither merchant is always served first.
    assert_eq!(second.len(), 5);
    assert_ne!(first[0].0, second[0].0, "{first:?} then {second:?}");
}

#[tokio::test]
async fn webhook_claims_give_each_merchant_a_turn_whatever_its_endpoints() {
    let db = TestDatabase::create().await;
    let mut config = idle_workers(&db);
    config.webhooks_allow_internal = true;
    // Built, never served: no delivery worker claims before the test does.
    let app = mercato::app::App::build(config).await.unwrap();
    let owner = PgPool::connect(&db.owner_url).await.unwrap();
    let (a, b) = (MerchantId::new(), MerchantId::new());
    for (m, slug, endpoints) in [(a, "many-endpoints", 12), (b, "one-endpoint", 1)] {
        sqlx::query("insert into merchants (id, slug, name) values ($1, $2, $2)")
            .bind(m.0)
            .bind(slug)
            .execute(&owner)
            .await
            .unwrap();
        for _ in 0..endpoints {
            sqlx::query(
                "insert into webhook_endpoints (merchant_id, id, url, event_types, secret)
                 values ($1, gen_random_uuid(), 'http://127.0.0.1:9/hook', '{pricing.rules_changed}',
                         'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')",
            )
            .bind(m.0)
            .execute(&owner)
            .await
            .unwrap();
        }
        let mut tx = TenantTx::begin(&app.db.app, m).await.unwrap();
        mercato::events::emit(
            &mut tx,
            mercato::events::EventType::PricingRulesChanged,
            json!({"revision": 1}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    // Room for 3 deliveries among 13 ready endpoints: B's one endpoint is in
    // the first turn, every time (taken at random, it would be 3 in 13).
    let mut conn = app.db.worker.acquire().await.unwrap();
    let claimed = mercato::events::claim_due(&mut conn, 3, 8, 60.0, &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed.iter().any(|c| c.merchant_id == b.0),
        "B's delivery waited behind A's endpoints"
    );
}
