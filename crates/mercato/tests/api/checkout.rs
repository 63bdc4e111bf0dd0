use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    assert_inventory_consistent, post_to, stock_violations, wait_until_zero, Body, TestApp,
};

fn checkout(sku: &str, quantity: i64, method: &str) -> Value {
    json!({"customer": {"email": "ann@example.com"}, "items": [{"sku": sku, "quantity": quantity}], "payment_method": method})
}

#[tokio::test]
async fn a_checkout_sells_the_units_and_captures_the_payment() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let order = app
        .post("/v1/checkouts", &m.key, checkout("TEE", 2, "pm_card_ok"))
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["status"], "confirmed");
    assert_eq!(
        order.body["total"],
        json!({"amount": 2000, "currency": "EUR"})
    );
    assert_eq!(order.body["items"][0]["quantity"], 2);
    let level = app.get("/v1/inventory/TEE", &m.key).await.body;
    assert_eq!(
        level,
        json!({"sku": "TEE", "on_hand": 3, "reserved": 0, "available": 3})
    );
    let id = order.body["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/orders/{id}"), &m.key).await.body,
        order.body
    );
    assert_eq!(
        app.get("/v1/orders", &m.key).await.body["data"][0]["id"],
        id
    );
    assert_inventory_consistent(&app.owner, &[("TEE", 5)]).await;
}

#[tokio::test]
async fn a_failed_payment_is_402_and_leaves_nothing_reserved() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    for method in ["pm_card_declined", "pm_card_expired"] {
        let resp = app
            .post("/v1/checkouts", &m.key, checkout("TEE", 2, method))
            .await;
        resp.assert_problem(402, "payment-failed");
    }
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["available"],
        5
    );
    let failed: i64 = app
        .count("orders where status = 'failed' and saga_step = 'compensated'")
        .await;
    assert_eq!(failed, 2);
    assert_inventory_consistent(&app.owner, &[("TEE", 5)]).await;
}

#[tokio::test]
async fn a_payment_timeout_is_reconciled_by_the_recovery_worker() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let resp = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", 1, "pm_card_timeout"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.body);
    assert_eq!(resp.body["status"], "pending");
    let pending = wait_until_zero(&app.owner, "orders where status = 'pending'", 15).await;
    assert_eq!(pending, 0, "recovery settled the order");
    let id = resp.body["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/orders/{id}"), &m.key).await.body["status"],
        "confirmed"
    );
    assert_inventory_consistent(&app.owner, &[("TEE", 5)]).await;
}

#[tokio::test]
async fn out_of_stock_is_409_and_charges_nothing() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 1).await;
    let resp = app
        .post("/v1/checkouts", &m.key, checkout("TEE", 2, "pm_card_ok"))
        .await;
    resp.assert_problem(409, "out-of-stock");
    assert_eq!(resp.error_fields(), ["items[0].sku"]);
    let payments: i64 = app.count("payments").await;
    assert_eq!(payments, 0);
}

#[tokio::test]
async fn an_idempotency_key_replays_refuses_reuse_and_guards_in_flight() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let send =
        |key: &'static str, body: Body| app.post_idempotent("/v1/checkouts", &m.key, key, body);
    let first = send("k1", Body::Json(checkout("TEE", 1, "pm_card_ok"))).await;
    assert_eq!(first.status, 201);
    let again = send("k1", Body::Json(checkout("TEE", 1, "pm_card_ok"))).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    // The same JSON with other spacing is the same request.
    let pretty = serde_json::to_string_pretty(&checkout("TEE", 1, "pm_card_ok")).unwrap();
    let spaced = send("k1", Body::RawJson(pretty)).await;
    assert_eq!(spaced.status, 201);
    assert_eq!(spaced.headers["idempotent-replayed"], "true");
    let reused = send("k1", Body::Json(checkout("TEE", 2, "pm_card_ok"))).await;
    assert_eq!(reused.status, 422);
    assert_eq!(
        reused.body["type"],
        "https://mercato.dev/problems/idempotency-key-reused"
    );
    // A slow payment keeps the first request in flight while the second arrives.
    let slow_checkout = || Body::Json(checkout("TEE", 1, "pm_card_slow"));
    let (slow, racing) = tokio::join!(send("k2", slow_checkout()), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        send("k2", slow_checkout()).await
    });
    assert_eq!(slow.status, 201);
    assert_eq!(racing.status, 409);
    let orders: i64 = app.count("orders").await;
    assert_eq!(orders, 2, "one order per key");
    assert_inventory_consistent(&app.owner, &[("TEE", 5)]).await;
}

#[tokio::test]
async fn another_merchants_order_is_404() {
    let app = TestApp::spawn().await;
    let a = app.merchant_with_stock("shop-a", "TEE", 5).await;
    let b = app.create_merchant("shop-b").await;
    let order = app
        .post("/v1/checkouts", &a.key, checkout("TEE", 1, "pm_card_ok"))
        .await;
    let id = order.body["id"].as_str().unwrap();
    app.get(&format!("/v1/orders/{id}"), &b.key)
        .await
        .assert_problem(404, "not-found");
    assert_eq!(app.get("/v1/orders", &b.key).await.body["data"], json!([]));
}

#[tokio::test]
async fn bad_checkout_input_names_the_field_and_reserves_nothing() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let cases = [
        (checkout("TEE", 0, "pm_card_ok"), "items[0].quantity"),
        (checkout("NOPE", 1, "pm_card_ok"), "items[0].sku"),
        (checkout("TEE", 1, "pm_bitcoin"), "payment_method"),
        (
            json!({"customer": {"email": "nope"}, "items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"}),
            "customer.email",
        ),
        (
            json!({"items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"}),
            "customer",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post("/v1/checkouts", &m.key, body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "for {body}");
    }
    let reservations: i64 = app.count("reservations").await;
    assert_eq!(reservations, 0);
}

async fn race_checkouts(strategy: &str) {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "HOT", 3).await;
    let path = format!("/v1/checkouts?strategy={strategy}");
    let bodies: Vec<Value> = (0..150)
        .map(|i| {
            checkout(
                "HOT",
                1,
                if i % 10 == 0 {
                    "pm_card_declined"
                } else {
                    "pm_card_ok"
                },
            )
        })
        .collect();
    let results = join_all(
        bodies
            .iter()
            .map(|b| post_to(&app.client, &app.base, &path, &m.key, b)),
    )
    .await;
    let confirmed = results.iter().filter(|(s, _)| *s == 201).count();
    assert!(
        results.iter().all(|(s, _)| [201, 402, 409].contains(s)),
        "{strategy}: only sold, declined or out of stock"
    );
    // A declined buyer's unit comes back after others were already refused, so
    // fewer than 3 may sell; never more, and the rest is available again.
    assert!(
        (1..=3).contains(&confirmed),
        "{strategy}: sold {confirmed} of 3"
    );
    let available: i64 =
        sqlx::query_scalar("select on_hand - reserved from stock where sku = 'HOT'")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(
        available,
        3 - confirmed as i64,
        "{strategy}: unsold units are available again"
    );
    assert_inventory_consistent(&app.owner, &[("HOT", 3)]).await;
}

#[tokio::test]
async fn checkouts_race_for_the_last_units_pessimistic() {
    race_checkouts("pessimistic").await;
}

#[tokio::test]
async fn checkouts_race_for_the_last_units_optimistic() {
    race_checkouts("optimistic").await;
}

#[tokio::test]
async fn checkouts_race_for_the_last_units_fifo_admission() {
    race_checkouts("reservation").await;
}

/// 64 SKUs of 3 units each, 6 buyers for each (one in ten declined), all at
/// once through the FIFO admission: every SKU sells at most its 3, and the
/// stock invariants hold for every SKU at every instant an observer looks
/// while the checkouts run (each look one snapshot), and after.
#[tokio::test]
async fn checkouts_race_on_64_skus_and_the_stock_invariants_hold_throughout() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let skus: Vec<String> = (0..64).map(|i| format!("SKU-{i:02}")).collect();
    for sku in &skus {
        app.create_product(&m, sku, 1000).await;
        app.set_stock(&m, sku, 3).await;
    }
    let initial: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 3)).collect();
    let bodies: Vec<Value> = (0..skus.len() * 6)
        .map(|i| {
            let method = if i % 10 == 0 { "pm_card_declined" } else { "pm_card_ok" };
            json!({"customer": {"email": format!("buyer{i}@example.com")},
                   "items": [{"sku": skus[i % skus.len()], "quantity": 1}], "payment_method": method})
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let race = async {
        let results = join_all(bodies.iter().map(|b| {
            post_to(
                &app.client,
                &app.base,
                "/v1/checkouts?strategy=reservation",
                &m.key,
                b,
            )
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        results
    };
    let observe = async {
        let mut looks = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let violations = stock_violations(&app.owner, &initial).await;
            assert!(violations.is_empty(), "look {looks}: {violations:#?}");
            looks += 1;
        }
        looks
    };
    let (results, looks) = tokio::join!(race, observe);
    assert!(looks > 0, "the observer looked while checkouts ran");
    assert!(
        results.iter().all(|(s, _)| [201, 402, 409].contains(s)),
        "only sold, declined or out of stock"
    );
    let mut sold = std::collections::HashMap::<String, usize>::new();
    for ((status, body), i) in results.iter().zip(0..) {
        if *status == 201 {
            *sold.entry(skus[i % skus.len()].clone()).or_default() += 1;
            assert_eq!(body["status"], "confirmed");
        }
    }
    assert!(
        sold.values().all(|n| *n <= 3),
        "never more than 3 of a SKU: {sold:?}"
    );
    let total: usize = sold.values().sum();
    assert!(total >= 64 * 2, "most units sell: {total}");
    assert_inventory_consistent(&app.owner, &initial).await;
}

/// Two instances on one database, each batching checkouts across the same 8
/// SKUs (rows locked in SKU order by both): no deadlock, no SKU oversold, and
/// the invariants hold.
#[tokio::test]
async fn two_instances_batching_checkouts_across_skus_never_oversell() {
    let app = TestApp::spawn().await;
    let peer = app.spawn_peer().await;
    let m = app.create_merchant("acme").await;
    let skus: Vec<String> = (0..8).map(|i| format!("SKU-{i}")).collect();
    for sku in &skus {
        app.create_product(&m, sku, 1000).await;
        app.set_stock(&m, sku, 5).await;
    }
    let bodies: Vec<Value> = (0..skus.len() * 12)
        .map(|i| {
            json!({"customer": {"email": format!("buyer{i}@example.com")},
                   "items": [{"sku": skus[i % skus.len()], "quantity": 1}], "payment_method": "pm_card_ok"})
        })
        .collect();
    let results = join_all(bodies.iter().enumerate().map(|(i, b)| {
        let base = if i % 2 == 0 {
            app.base.as_str()
        } else {
            peer.as_str()
        };
        post_to(
            &app.client,
            base,
            "/v1/checkouts?strategy=reservation",
            &m.key,
            b,
        )
    }))
    .await;
    assert!(
        results.iter().all(|(s, _)| *s == 201 || *s == 409),
        "only sold or out of stock"
    );
    let sold = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(sold, 8 * 5, "every unit sold, none twice");
    let initial: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 5)).collect();
    assert_inventory_consistent(&app.owner, &initial).await;
}
