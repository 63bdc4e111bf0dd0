//! Safe pricing rollout through HTTP: a candidate revision or calculator in shadow,
//! at a percentage of customers, completed and rolled back; and the anomaly check
//! that raises stored alerts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Merchant, Response, TestApp, TestDatabase};

fn checkout(email: &str) -> Value {
    json!({"customer": {"email": email}, "items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"})
}

fn percent_off(id: &str, percent: u32) -> Value {
    json!({"rules": [{"id": id, "priority": 1, "stackable": true, "then": {"percent_off": percent}}]})
}

async fn put_rules(app: &TestApp, m: &Merchant, rules: Value, activate: bool) -> Value {
    let path = if activate {
        "/v1/pricing/rules"
    } else {
        "/v1/pricing/rules?activate=false"
    };
    let put = app
        .request(Method::PUT, path, Some(&m.key), Some(rules))
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    put.body
}

async fn buy(app: &TestApp, m: &Merchant, email: &str) -> Value {
    let order = app.post("/v1/checkouts", &m.key, checkout(email)).await;
    assert_eq!(order.status, 201, "{}", order.body);
    order.body
}

async fn patch(app: &TestApp, m: &Merchant, id: &str, body: Value) -> Response {
    app.request(
        Method::PATCH,
        &format!("/v1/pricing/rollouts/{id}"),
        Some(&m.key),
        Some(body),
    )
    .await
}

/// Every order priced during a rollout was charged the total of the side it
/// records as charged, and no order of the merchant records two comparisons.
async fn assert_charged_as_recorded(app: &TestApp) {
    let wrong = app
        .count(
            "pricing_rollout_orders r join orders o on o.merchant_id = r.merchant_id and o.id = r.order_id
             where o.total_amount <> case r.charged when 'candidate' then r.candidate_total else r.live_total end",
        )
        .await;
    assert_eq!(wrong, 0, "orders charged another price than recorded");
}

#[tokio::test]
async fn a_candidate_revision_goes_from_shadow_to_a_share_of_customers_to_everyone_and_back() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    app.create_product(&m, "TEE", 2000).await;
    app.set_stock(&m, "TEE", 1000).await;
    put_rules(&app, &m, percent_off("ten", 10), true).await;

    // Written but not in force.
    let staged = put_rules(&app, &m, percent_off("quarter", 25), false).await;
    assert_eq!(staged["revision"], 2);
    assert_eq!(staged["diff"]["added"], json!(["quarter"]));
    assert_eq!(
        app.get("/v1/pricing/rules", &m.key).await.body["revision"],
        1
    );

    // Shadow: priced by both, charged the live price, each order records both.
    let started = app
        .post(
            "/v1/pricing/rollouts",
            &m.key,
            json!({"revision": 2, "stage": "shadow"}),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    assert_eq!(started.body["stage"], "shadow");
    assert_eq!(started.body["previous_revision"], 1);
    let id = started.body["id"].as_str().unwrap().to_owned();
    app.post(
        "/v1/pricing/rollouts",
        &m.key,
        json!({"calculator_version": "v2", "stage": "shadow"}),
    )
    .await
    .assert_problem(409, "rollout-running");

    let quote = app
        .post(
            "/v1/pricing/quote",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 1}], "customer": {"email": "q@example.com"}}),
        )
        .await;
    assert_eq!(quote.body["total"]["amount"], 1800, "{}", quote.body);
    for i in 0..4 {
        let order = buy(&app, &m, &format!("shadow{i}@example.com")).await;
        assert_eq!(order["total"]["amount"], 1800);
        assert_eq!(order["pricing"]["ruleset_revision"], 1);
    }
    let view = app.get(&format!("/v1/pricing/rollouts/{id}"), &m.key).await;
    assert_eq!(view.status, 200, "{}", view.body);
    let summary = &view.body["summary"];
    assert_eq!(summary["orders"], 4, "{}", view.body);
    assert_eq!(summary["different"], 4);
    assert_eq!(summary["charged_candidate"], 0);
    assert_eq!(summary["delta_sum"], 4 * (1500 - 1800));
    let orders = app
        .get(&format!("/v1/pricing/rollouts/{id}/orders?limit=3"), &m.key)
        .await;
    assert_eq!(orders.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(orders.body["data"][0]["delta"], -300);
    assert_eq!(orders.body["data"][0]["charged"], "live");
    assert!(orders.body["next_cursor"].is_string());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("pricing_shadow_priced_total{outcome=\"different\",charged=\"live\"}")
            || metrics
                .contains("pricing_shadow_priced_total{charged=\"live\",outcome=\"different\"}"),
        "{metrics}"
    );

    // A share of customers, stable per customer: each pays the same price twice.
    patch(&app, &m, &id, json!({"stage": "percentage"}))
        .await
        .assert_problem(422, "validation-error");
    let half = patch(&app, &m, &id, json!({"stage": "percentage", "percent": 50})).await;
    assert_eq!(half.status, 200, "{}", half.body);
    let mut candidate = 0;
    for i in 0..40 {
        let email = format!("c{i}@example.com");
        let first = buy(&app, &m, &email).await["total"]["amount"].clone();
        let again = buy(&app, &m, &email.to_uppercase()).await["total"]["amount"].clone();
        assert_eq!(first, again, "{email} was charged two prices");
        assert!(first == 1500 || first == 1800, "{first}");
        candidate += i32::from(first == 1500);
    }
    assert!(
        (5..=35).contains(&candidate),
        "{candidate} of 40 customers in a 50 % share"
    );
    assert_charged_as_recorded(&app).await;
    assert_eq!(
        app.count("pricing_rollout_orders where charged = 'candidate'")
            .await,
        i64::from(candidate) * 2
    );

    // Everyone: the candidate is in force; nothing more is compared.
    let done = patch(&app, &m, &id, json!({"stage": "complete"})).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["percent"], 100);
    assert_eq!(
        app.get("/v1/pricing/rules", &m.key).await.body["revision"],
        2
    );
    let compared = app.count("pricing_rollout_orders").await;
    assert_eq!(
        buy(&app, &m, "after@example.com").await["total"]["amount"],
        1500
    );
    assert_eq!(app.count("pricing_rollout_orders").await, compared);

    // And back at once: the revision before it is in force again.
    let back = patch(&app, &m, &id, json!({"stage": "rolled_back"})).await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(
        app.get("/v1/pricing/rules", &m.key).await.body["revision"],
        1
    );
    assert_eq!(
        buy(&app, &m, "later@example.com").await["total"]["amount"],
        1800
    );
    patch(&app, &m, &id, json!({"stage": "shadow"}))
        .await
        .assert_problem(409, "rollout-finished");
    let list = app.get("/v1/pricing/rollouts", &m.key).await;
    assert_eq!(list.body["data"][0]["stage"], "rolled_back");

    // Another merchant sees none of it.
    let other = app.create_merchant("other").await;
    app.get(&format!("/v1/pricing/rollouts/{id}"), &other.key)
        .await
        .assert_problem(404, "not-found");
    patch(&app, &other, &id, json!({"stage": "rolled_back"}))
        .await
        .assert_problem(404, "not-found");
    assert_eq!(
        app.get("/v1/pricing/rollouts", &other.key).await.body["data"],
        json!([])
    );
}

#[tokio::test]
async fn a_calculator_version_in_shadow_shows_its_cent_and_rolls_back_at_once() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    // 5 % of 50 cents is 2.5: v1 rounds half to even (2), v2 half up (3).
    app.create_product(&m, "TEE", 50).await;
    app.set_stock(&m, "TEE", 100).await;
    put_rules(&app, &m, percent_off("five", 5), true).await;
    let started = app
        .post(
            "/v1/pricing/rollouts",
            &m.key,
            json!({"calculator_version": "v2", "stage": "percentage", "percent": 99}),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.body);
    assert_eq!(started.body["candidate_version"], "v2");
    assert_eq!(started.body["candidate_revision"], 1);
    let id = started.body["id"].as_str().unwrap().to_owned();
    for i in 0..10 {
        let order = buy(&app, &m, &format!("c{i}@example.com")).await;
        let (version, total) = (&order["pricing"]["version"], &order["total"]["amount"]);
        assert!(
            (version == "v2" && total == 47) || (version == "v1" && total == 48),
            "{order}"
        );
    }
    assert_charged_as_recorded(&app).await;
    let summary = app
        .get(&format!("/v1/pricing/rollouts/{id}"), &m.key)
        .await
        .body["summary"]
        .clone();
    assert_eq!(summary["orders"], 10);
    assert_eq!(summary["delta_sum"], -10, "{summary}");

    let back = patch(&app, &m, &id, json!({"stage": "rolled_back"})).await;
    assert_eq!(back.status, 200, "{}", back.body);
    for i in 0..3 {
        let order = buy(&app, &m, &format!("c{i}@example.com")).await;
        assert_eq!(order["pricing"]["version"], "v1");
        assert_eq!(order["total"]["amount"], 48);
    }
    assert_eq!(app.count("pricing_rollout_orders").await, 10);
}

#[tokio::test]
async fn bad_rollouts_are_refused_with_the_field_at_fault() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    put_rules(&app, &m, percent_off("ten", 10), true).await;
    let post = |body: Value| app.post("/v1/pricing/rollouts", &m.key, body);
    let cases = [
        (json!({"revision": 9, "stage": "shadow"}), vec!["revision"]),
        (json!({"stage": "bogus"}), vec!["stage"]),
        (json!({"revision": 1, "stage": "complete"}), vec!["stage"]),
        (
            json!({"calculator_version": "v9", "stage": "shadow"}),
            vec!["calculator_version"],
        ),
        (
            json!({"calculator_version": "v2", "stage": "percentage"}),
            vec!["percent"],
        ),
        (
            json!({"calculator_version": "v2", "stage": "percentage", "percent": 100}),
            vec!["percent"],
        ),
        (
            json!({"revision": 1, "calculator_version": "v1", "stage": "shadow"}),
            vec!["revision", "calculator_version"],
        ),
    ];
    for (body, fields) in cases {
        let resp = post(body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), fields, "{body}: {}", resp.body);
    }
    post(json!({"stage": "shadow", "percent": 5, "extra": 1}))
        .await
        .assert_problem(422, "validation-error");
    assert_eq!(app.count("pricing_rollouts").await, 0);
    app.get("/v1/pricing/rollouts/not-a-uuid", &m.key)
        .await
        .assert_problem(404, "not-found");
    app.get(
        "/v1/pricing/rollouts/0195f3a0-0000-7000-8000-000000000000/orders",
        &m.key,
    )
    .await
    .assert_problem(404, "not-found");
    let bad = app
        .request(
            Method::PUT,
            "/v1/pricing/rules?activate=maybe",
            Some(&m.key),
            Some(percent_off("x", 1)),
        )
        .await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["activate"]);
}

#[tokio::test]
async fn the_anomaly_worker_raises_a_stored_alert_when_discounts_jump() {
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.anomaly_interval = Duration::from_secs(1);
    let app = TestApp::spawn_with(db, config).await;
    let m = app.merchant_with_stock("acme", "TEE", 100).await;
    // The baseline: 20 orders at full price, an hour and more ago.
    for i in 0..20 {
        buy(&app, &m, &format!("base{i}@example.com")).await;
    }
    sqlx::query("update orders set created_at = now() - interval '3 hours'")
        .execute(&app.owner)
        .await
        .unwrap();
    // Then a rule that gives half away.
    put_rules(&app, &m, percent_off("half", 50), true).await;
    for i in 0..5 {
        buy(&app, &m, &format!("now{i}@example.com")).await;
    }
    let mut alerts = Value::Null;
    for _ in 0..100 {
        alerts = app.get("/v1/pricing/alerts", &m.key).await.body["data"].clone();
        if alerts.as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kinds: Vec<&str> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"discount_rate") && kinds.contains(&"average_order_value"),
        "{alerts}"
    );
    let rate = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "discount_rate")
        .unwrap();
    assert_eq!(rate["observed"], 5000, "{rate}");
    assert_eq!(rate["expected"], 0);
    assert_eq!(rate["window_orders"], 5);
    assert_eq!(rate["baseline_orders"], 20);
    assert!(app.metrics().await.contains("pricing_anomalies_total"));

    // Checked again, the same incident is not raised twice.
    let check = app
        .post("/v1/pricing/anomaly-check", &m.key, json!({}))
        .await;
    assert_eq!(check.status, 200, "{}", check.body);
    assert_eq!(check.body["raised"], json!([]));
    assert_eq!(check.body["measured"][0]["window"]["orders"], 5);
    assert_eq!(app.count("pricing_alerts").await, 2);
    // Another merchant has none, and a period out of range is refused.
    let other = app.create_merchant("other").await;
    assert_eq!(
        app.get("/v1/pricing/alerts", &other.key).await.body["data"],
        json!([])
    );
    let bad = app
        .post(
            "/v1/pricing/anomaly-check",
            &m.key,
            json!({"window_seconds": 0}),
        )
        .await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["window_seconds"]);
}

#[tokio::test]
async fn an_anomaly_check_on_demand_compares_the_periods_asked() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 100).await;
    for i in 0..20 {
        buy(&app, &m, &format!("base{i}@example.com")).await;
    }
    sqlx::query("update orders set created_at = now() - interval '10 minutes'")
        .execute(&app.owner)
        .await
        .unwrap();
    // The same trade again: nothing to report.
    for i in 0..5 {
        buy(&app, &m, &format!("same{i}@example.com")).await;
    }
    let periods = json!({"window_seconds": 300, "baseline_seconds": 3600});
    let quiet = app
        .post("/v1/pricing/anomaly-check", &m.key, periods.clone())
        .await;
    assert_eq!(quiet.status, 200, "{}", quiet.body);
    assert_eq!(quiet.body["raised"], json!([]), "{}", quiet.body);
    assert_eq!(quiet.body["measured"][0]["baseline"]["orders"], 20);
    // A discount that applies to everything from now on.
    put_rules(&app, &m, percent_off("forty", 40), true).await;
    for i in 0..5 {
        buy(&app, &m, &format!("now{i}@example.com")).await;
    }
    let loud = app.post("/v1/pricing/anomaly-check", &m.key, periods).await;
    let kinds: Vec<&str> = loud.body["raised"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    // Window: 10 orders, 5 at 40 % off: a 20 % discount rate against 0 %.
    assert_eq!(kinds, ["discount_rate"], "{}", loud.body);
    assert_eq!(loud.body["raised"][0]["observed"], 2000);
}
