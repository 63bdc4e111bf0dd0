use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_inventory_consistent, post_to, wait_until_zero, TestApp};

#[tokio::test]
async fn stock_is_set_and_read_and_never_below_reserved() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let level = app.get("/v1/inventory/TEE", &m.key).await;
    assert_eq!(
        level.body,
        json!({"sku": "TEE", "on_hand": 5, "reserved": 0, "available": 5})
    );
    let r = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 3}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let below = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": 2})),
        )
        .await;
    below.assert_problem(409, "below-reserved");
    let level = app.get("/v1/inventory/TEE", &m.key).await;
    assert_eq!(level.body["available"], 2);
    app.get("/v1/inventory/NOPE", &m.key)
        .await
        .assert_problem(404, "not-found");
    let negative = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": -1})),
        )
        .await;
    negative.assert_problem(422, "validation-error");
    assert_eq!(negative.error_fields(), ["on_hand"]);
}

#[tokio::test]
async fn a_reservation_takes_all_items_or_none() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "A", 5).await;
    app.create_product(&m, "B", 100).await;
    app.set_stock(&m, "B", 1).await;
    let resp = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 2}]}),
        )
        .await;
    resp.assert_problem(409, "out-of-stock");
    assert_eq!(resp.error_fields(), ["items[1].sku"]);
    assert_eq!(
        app.get("/v1/inventory/A", &m.key).await.body["reserved"],
        0,
        "A was not kept"
    );
    assert_inventory_consistent(&app.owner, &[("A", 5), ("B", 1)]).await;
}

#[tokio::test]
async fn release_is_idempotent_and_returns_the_units() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "A", 5).await;
    let r = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "A", "quantity": 4}]}),
        )
        .await;
    assert_eq!(r.body["status"], "active");
    let path = format!(
        "/v1/reservations/{}/release",
        r.body["id"].as_str().unwrap()
    );
    for _ in 0..2 {
        let released = app.post(&path, &m.key, json!({})).await;
        assert_eq!(released.status, 200, "{}", released.body);
        assert_eq!(released.body["status"], "released");
    }
    assert_eq!(
        app.get("/v1/inventory/A", &m.key).await.body["available"],
        5
    );
    assert_inventory_consistent(&app.owner, &[("A", 5)]).await;
}

#[tokio::test]
async fn expired_reservations_are_released_by_the_worker() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "A", 5).await;
    let r = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "A", "quantity": 5}], "ttl_seconds": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let left = wait_until_zero(&app.owner, "reservations where status = 'active'", 10).await;
    assert_eq!(left, 0, "the worker expired the reservation");
    assert_eq!(
        app.get("/v1/inventory/A", &m.key).await.body["available"],
        5
    );
    assert_inventory_consistent(&app.owner, &[("A", 5)]).await;
}

#[tokio::test]
async fn another_merchants_reservation_is_404() {
    let app = TestApp::spawn().await;
    let a = app.merchant_with_stock("shop-a", "A", 5).await;
    let b = app.create_merchant("shop-b").await;
    let r = app
        .post(
            "/v1/reservations",
            &a.key,
            json!({"items": [{"sku": "A", "quantity": 1}]}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap();
    app.get(&format!("/v1/reservations/{id}"), &b.key)
        .await
        .assert_problem(404, "not-found");
    app.post(&format!("/v1/reservations/{id}/release"), &b.key, json!({}))
        .await
        .assert_problem(404, "not-found");
    assert_eq!(
        app.get(&format!("/v1/reservations/{id}"), &a.key)
            .await
            .body["status"],
        "active"
    );
    // B's view of the same SKU name is its own (it has none).
    app.post(
        "/v1/reservations",
        &b.key,
        json!({"items": [{"sku": "A", "quantity": 1}]}),
    )
    .await
    .assert_problem(422, "validation-error");
}

#[tokio::test]
async fn bad_reservation_input_names_the_field_and_reserves_nothing() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "A", 5).await;
    let cases = [
        (
            json!({"items": [{"sku": "A", "quantity": 0}]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [{"sku": "A", "quantity": -1}]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [{"sku": "A", "quantity": 10001}]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [{"sku": "NOPE", "quantity": 1}]}),
            "items[0].sku",
        ),
        (
            json!({"items": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}]}),
            "items[1].sku",
        ),
        (
            json!({"items": [{"sku": "A", "quantity": 1}], "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            json!({"items": [{"sku": "A", "quantity": 1}], "ttl_seconds": 3601}),
            "ttl_seconds",
        ),
        (json!({"items": []}), "items"),
    ];
    for (body, field) in cases {
        let resp = app.post("/v1/reservations", &m.key, body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "for {body}");
    }
    let bad_strategy = app
        .post(
            "/v1/reservations?strategy=magic",
            &m.key,
            json!({"items": [{"sku": "A", "quantity": 1}]}),
        )
        .await;
    assert_eq!(bad_strategy.error_fields(), ["strategy"]);
    let count: i64 = app.count("reservations").await;
    assert_eq!(count, 0);
}

/// Hundreds of buyers race for a few units; exactly that many win, whatever the strategy.
async fn race_for_the_last_units(strategy: &str, buyers: usize, units: i64) {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "HOT", units).await;
    let body = json!({"items": [{"sku": "HOT", "quantity": 1}]});
    let path = format!("/v1/reservations?strategy={strategy}");
    let results =
        join_all((0..buyers).map(|_| post_to(&app.client, &app.base, &path, &m.key, &body))).await;
    let won = results.iter().filter(|(s, _)| *s == 201).count();
    let refused = results
        .iter()
        .filter(|(s, b)| *s == 409 && b["type"].as_str().unwrap_or("").ends_with("out-of-stock"))
        .count();
    assert_eq!(won as i64, units, "{strategy}: exactly the stock was sold");
    assert_eq!(
        won + refused,
        buyers,
        "{strategy}: every other buyer was told out-of-stock"
    );
    let reservations: i64 = app.count("reservations where status = 'active'").await;
    assert_eq!(reservations, units);
    assert_inventory_consistent(&app.owner, &[("HOT", units)]).await;
}

#[tokio::test]
async fn buyers_race_for_the_last_units_pessimistic() {
    race_for_the_last_units("pessimistic", 300, 5).await;
}

#[tokio::test]
async fn buyers_race_for_the_last_units_optimistic() {
    race_for_the_last_units("optimistic", 300, 5).await;
}

#[tokio::test]
async fn buyers_race_for_the_last_units_fifo_admission() {
    race_for_the_last_units("reservation", 300, 5).await;
}

#[tokio::test]
async fn two_instances_on_one_database_never_oversell() {
    let app = TestApp::spawn().await;
    let peer = app.spawn_peer().await;
    let m = app.merchant_with_stock("acme", "HOT", 7).await;
    let body = json!({"items": [{"sku": "HOT", "quantity": 1}]});
    let results = join_all((0..300).map(|i| {
        let base = if i % 2 == 0 {
            app.base.as_str()
        } else {
            peer.as_str()
        };
        post_to(&app.client, base, "/v1/reservations", &m.key, &body)
    }))
    .await;
    let won = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(won, 7);
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 409));
    assert_inventory_consistent(&app.owner, &[("HOT", 7)]).await;
}

/// Carts of two SKUs and single-SKU requests racing through the FIFO admission
/// (batched together): never more than the stock of either SKU, every granted
/// cart holds both its lines, and the invariants hold.
#[tokio::test]
async fn carts_of_several_skus_race_through_fifo_admission_all_or_nothing() {
    let app = TestApp::spawn().await;
    // A never runs out, B does: the carts refused for B must not take their A.
    let m = app.merchant_with_stock("acme", "A", 200).await;
    app.create_product(&m, "B", 100).await;
    app.set_stock(&m, "B", 4).await;
    let bodies: Vec<Value> = (0..90)
        .map(|i| match i % 3 {
            0 => json!({"items": [{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}]}),
            1 => json!({"items": [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2}]}),
            _ => json!({"items": [{"sku": "A", "quantity": 1}]}),
        })
        .collect();
    let results = join_all(bodies.iter().map(|b| {
        post_to(
            &app.client,
            &app.base,
            "/v1/reservations?strategy=reservation",
            &m.key,
            b,
        )
    }))
    .await;
    assert!(
        results.iter().all(|(s, _)| *s == 201 || *s == 409),
        "granted or out of stock"
    );
    let (mut a, mut b) = (0, 0);
    for ((status, body), request) in results.iter().zip(&bodies) {
        if *status == 201 {
            let items = body["items"].as_array().unwrap();
            assert_eq!(
                items.len(),
                request["items"].as_array().unwrap().len(),
                "{body}"
            );
            for item in items {
                let n = item["quantity"].as_i64().unwrap();
                match item["sku"].as_str().unwrap() {
                    "A" => a += n,
                    _ => b += n,
                }
            }
        }
    }
    assert_eq!(b, 4, "B sells out, never over: 60 carts want it");
    let singles = 30;
    let carts_granted = results.iter().filter(|(s, _)| *s == 201).count() - singles;
    assert_eq!(carts_granted, 4, "only the carts that got their B");
    assert!(a <= singles as i64 + 4 * 2, "a refused cart took no A: {a}");
    assert_inventory_consistent(&app.owner, &[("A", 200), ("B", 4)]).await;
}
