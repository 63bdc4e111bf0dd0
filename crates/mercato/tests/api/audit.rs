//! The audit trail: every change made for a key or the admin is recorded in
//! its transaction, with who, what, from where and the diff; checkouts write
//! none; a merchant reads only its own; the service cannot rewrite history.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Body, TestApp, ADMIN_TOKEN};

async fn trail(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit-log?{query}"), key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"].as_array().expect("data").clone()
}

#[tokio::test]
async fn a_change_is_recorded_with_who_what_where_and_the_diff() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let product = app.create_product(&m, "TEE", 1500).await;
    let renamed = app
        .request_with(
            Method::PATCH,
            &format!("/v1/products/{product}"),
            Some(&m.key),
            &[
                ("User-Agent", "audit-test/1.0"),
                ("X-Request-Id", "req-rename-1"),
            ],
            Body::Json(json!({"name": "Better tee"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let stocked = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": 40})),
        )
        .await;
    assert_eq!(stocked.status, 200, "{}", stocked.body);

    let records = trail(&app, &m.key, &format!("target=products/{product}")).await;
    let actions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or(""),
                r["operation"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("product.update", "update"), ("product.create", "insert")]
    );
    let update = &records[0];
    assert_eq!(
        update["changes"],
        json!({"name": {"from": "Product TEE", "to": "Better tee"}})
    );
    assert_eq!(update["actor_kind"], "key");
    assert!(
        update["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("key:")),
        "{update}"
    );
    assert_ne!(
        update["actor"],
        m.key.as_str(),
        "a fingerprint, never the key"
    );
    assert_eq!(update["user_agent"], "audit-test/1.0");
    assert_eq!(update["request_id"], "req-rename-1");
    assert_eq!(update["address"], "127.0.0.1");
    // The stock overwrites: the first makes the row, the second changes its count.
    let again = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": 25})),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let stock = trail(&app, &m.key, "action=stock.set").await;
    assert_eq!(stock.len(), 2, "{stock:?}");
    assert!(stock
        .iter()
        .all(|r| r["target_type"] == "stock" && r["target_id"] == "TEE"));
    assert_eq!(stock[0]["operation"], "update");
    assert_eq!(
        stock[0]["changes"],
        json!({"on_hand": {"from": 40, "to": 25}})
    );
    assert_eq!(stock[1]["operation"], "insert");
    assert_eq!(stock[1]["changes"]["on_hand"], 40);
    // Filters and paging: one record a page, newest first, all of them once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=1&cursor={c}"),
            None => "limit=1".to_owned(),
        };
        let r = app.get(&format!("/v1/audit-log?{query}"), &m.key).await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.extend(
            r.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|r| r["id"].clone()),
        );
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let all = trail(&app, &m.key, "limit=500").await;
    assert_eq!(
        seen,
        all.iter().map(|r| r["id"].clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        app.count(&format!("audit_log where merchant_id = '{}'", m.id.0))
            .await,
        all.len() as i64
    );
    let later = trail(&app, &m.key, "from=2999-01-01T00:00:00Z").await;
    assert!(later.is_empty());

    // Another merchant reads none of it; a bad filter names its parameter.
    let other = app.create_merchant("other").await;
    let theirs = trail(&app, &other.key, &format!("target=products/{product}")).await;
    assert!(theirs.is_empty(), "{theirs:?}");
    let bad = app
        .get("/v1/audit-log?from=yesterday&target=/x", &m.key)
        .await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["target", "from"]);
}

#[tokio::test]
async fn checkouts_write_no_audit_record_but_the_merchants_steps_on_an_order_do() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let before = app.count("audit_log").await;
    let placed = app
        .post(
            "/v1/checkouts",
            &m.key,
            json!({"customer": {"email": "ann@example.com"}, "items": [{"sku": "TEE", "quantity": 2}], "payment_method": "pm_card_ok"}),
        )
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(
        app.count("audit_log").await,
        before,
        "the order is its own record"
    );
    let order = placed.body["id"].as_str().expect("id");
    let cancelled = app
        .post(
            &format!("/v1/orders/{order}/cancel"),
            &m.key,
            json!({"reason": "customer asked"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let records = trail(&app, &m.key, "action=order.cancel").await;
    let order_change = records
        .iter()
        .find(|r| r["target_type"] == "orders" && r["target_id"] == order)
        .expect("the order's change is recorded");
    assert_eq!(
        order_change["changes"]["status"],
        json!({"from": "confirmed", "to": "cancelled"})
    );
    // The units it gave back and its refund are part of the same record set.
    assert!(
        records.iter().any(|r| r["target_type"] == "order_refunds"),
        "{records:?}"
    );
    // The shopper's address is kept out of the trail.
    let text = serde_json::to_string(&trail(&app, &m.key, "limit=500").await).expect("json");
    assert!(!text.contains("ann@example.com"), "{text}");
}

#[tokio::test]
async fn the_admins_changes_are_in_the_merchants_trail() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let issued = app
        .post(
            &format!("/v1/merchants/{}/api-keys", m.id.0),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let patched = app
        .request(
            Method::PATCH,
            &format!("/v1/merchants/{}", m.id.0),
            Some(ADMIN_TOKEN),
            Some(json!({"stock_strategy": "pessimistic"})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let records = trail(&app, &m.key, "actor=admin").await;
    let actions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or(""),
                r["target_type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("merchant.update", "merchants"),
            ("api_key.create", "api_keys"),
            ("merchant.create", "api_keys"),
            ("merchant.create", "merchants"),
        ]
    );
    assert!(records.iter().all(|r| r["actor_kind"] == "admin"));
    assert_eq!(
        records[0]["changes"],
        json!({"stock_strategy": {"from": "reservation", "to": "pessimistic"}})
    );
    // The key's hash is not in the trail.
    assert_eq!(records[1]["changes"]["key_hash"], "[redacted]");
}

#[tokio::test]
async fn the_service_can_add_records_but_never_change_or_remove_one() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    app.create_product(&m, "TEE", 1500).await;
    let recorded = format!("audit_log where merchant_id = '{}'", m.id.0);
    let before = app.count(&recorded).await;
    assert!(before > 0);
    for statement in [
        "update audit_log set actor = 'someone else'",
        "delete from audit_log",
        "truncate audit_log",
    ] {
        let mut tx = app.tenant_tx(&m).await;
        let err = sqlx::query(statement)
            .execute(tx.conn())
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: {err}"
        );
    }
    assert_eq!(
        app.count(&recorded).await,
        before,
        "the records are untouched"
    );
}
