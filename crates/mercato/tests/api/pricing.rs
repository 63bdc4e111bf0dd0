//! Pricing through HTTP: rule revisions and their audit, quotes, checkout totals,
//! limited rules that never overrun, and exact re-pricing of a stored order.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_inventory_consistent, post_to, Merchant, TestApp};

const SUMMER10: &str = r#"{"rules":[{"id":"summer10","priority":10,"stackable":false,"when":{"promo_code":"SUMMER10","min_subtotal":{"amount":5000,"currency":"EUR"}},"then":{"percent_off":10}}]}"#;

fn checkout(sku: &str, quantity: i64, promo: Option<&str>, method: &str, email: &str) -> Value {
    let mut body = json!({"customer": {"email": email}, "items": [{"sku": sku, "quantity": quantity}], "payment_method": method});
    if let Some(code) = promo {
        body["promo_code"] = json!(code);
    }
    body
}

async fn put_rules(app: &TestApp, m: &Merchant, rules: Value) -> crate::helpers::Response {
    app.request(Method::PUT, "/v1/pricing/rules", Some(&m.key), Some(rules))
        .await
}

#[tokio::test]
async fn rules_are_revisions_with_an_audit_trail_and_bad_rules_change_nothing() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let empty = app.get("/v1/pricing/rules", &m.key).await;
    assert_eq!(empty.body["revision"], 0);
    assert_eq!(empty.body["rules"], json!([]));

    let first = put_rules(&app, &m, serde_json::from_str(SUMMER10).unwrap()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["revision"], 1);
    assert_eq!(first.body["diff"]["added"], json!(["summer10"]));
    assert!(first.body["actor"].as_str().unwrap().starts_with("key:"));

    let mut changed: Value = serde_json::from_str(SUMMER10).unwrap();
    changed["rules"][0]["then"]["percent_off"] = json!(15);
    changed["rules"].as_array_mut().unwrap().push(
        json!({"id": "ship", "priority": 1, "stackable": true, "then": {"free_shipping": true}}),
    );
    let second = put_rules(&app, &m, changed).await;
    assert_eq!(second.body["revision"], 2, "{}", second.body);
    assert_eq!(second.body["diff"]["changed"], json!(["summer10"]));
    assert_eq!(second.body["diff"]["added"], json!(["ship"]));

    // Every mistake is named by rule and field, and the revision in force stays.
    let bad = put_rules(
        &app,
        &m,
        json!({"rules": [
            {"id": "a", "priority": 1, "stackable": true, "then": {"percent_off": 150}},
            {"id": "a", "priority": 1, "stackable": true, "then": {"amount_off": {"amount": -5, "currency": "EUR"}}},
            {"id": "b", "priority": 1, "stackable": true, "when": {"nope": 1}, "then": {"free_shipping": true}},
            {"id": "c", "priority": 1, "stackable": true, "then": {"amount_off": {"amount": 5, "currency": "USD"}}}
        ]}),
    )
    .await;
    bad.assert_problem(422, "validation-error");
    let fields = bad.error_fields();
    for field in [
        "rules[0].then.percent_off",
        "rules[1].then.amount_off.amount",
        "rules[2].when.nope",
        "rules[3].then.amount_off.currency",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    let twice = put_rules(
        &app,
        &m,
        json!({"rules": [
            {"id": "a", "priority": 1, "stackable": true, "then": {"percent_off": 5}},
            {"id": "a", "priority": 2, "stackable": true, "then": {"free_shipping": true}}
        ]}),
    )
    .await;
    twice.assert_problem(422, "validation-error");
    assert_eq!(twice.error_fields(), ["rules[1].id"], "{}", twice.body);
    assert_eq!(
        app.get("/v1/pricing/rules", &m.key).await.body["revision"],
        2
    );

    let log = app.get("/v1/pricing/rules/revisions", &m.key).await;
    let revisions: Vec<i64> = log.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions, [2, 1]);
    let one = app.get("/v1/pricing/rules/revisions/1", &m.key).await;
    assert_eq!(one.body["rules"][0]["then"]["percent_off"], 10);
    app.get("/v1/pricing/rules/revisions/9", &m.key)
        .await
        .assert_problem(404, "not-found");
    // Another merchant sees none of it.
    let other = app.create_merchant("other").await;
    assert_eq!(
        app.get("/v1/pricing/rules", &other.key).await.body["revision"],
        0
    );
}

#[tokio::test]
async fn a_quote_explains_the_price_and_a_checkout_charges_exactly_it() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await; // 1000 cents each
    put_rules(&app, &m, serde_json::from_str(SUMMER10).unwrap()).await;

    let quote = |promo: Option<&str>| {
        let mut body = json!({"items": [{"sku": "TEE", "quantity": 6}]});
        if let Some(code) = promo {
            body["promo_code"] = json!(code);
        }
        app.post("/v1/pricing/quote", &m.key, body)
    };
    let plain = quote(None).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.body["total"]["amount"], 6000);
    assert_eq!(plain.body["not_applied"][0]["rule_id"], "summer10");
    let coded = quote(Some("summer10")).await;
    assert_eq!(coded.body["total"]["amount"], 5400);
    assert_eq!(coded.body["applied"], json!(["summer10"]));
    assert_eq!(coded.body["ruleset_revision"], 1);
    // A quote has no side effects.
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["reserved"],
        0
    );
    let unknown = app
        .post(
            "/v1/pricing/quote",
            &m.key,
            json!({"items": [{"sku": "NOPE", "quantity": 1}]}),
        )
        .await;
    unknown.assert_problem(422, "validation-error");
    assert_eq!(unknown.error_fields(), ["items[0].sku"]);

    let order = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", 6, Some("SUMMER10"), "pm_card_ok", "ann@example.com"),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["total"]["amount"], 5400);
    assert_eq!(order.body["pricing"]["version"], "v1");
    assert_eq!(order.body["pricing"]["ruleset_revision"], 1);
    assert_eq!(order.body["pricing"]["breakdown"]["total"]["amount"], 5400);
    let charged: i64 = sqlx::query_scalar("select amount from payments where status = 'captured'")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(
        charged, 5400,
        "the amount captured is the breakdown's total"
    );

    // Re-pricing the stored order with its recorded version and revision gives the
    // recorded breakdown exactly.
    let (recorded, rules): (String, String) = sqlx::query_as(
        "select o.pricing::text, r.rules::text from orders o
         join pricing_rule_revisions r on r.merchant_id = o.merchant_id and r.revision = o.ruleset_revision",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    let recorded: mercato::pricing::PricedOrder = serde_json::from_str(&recorded).unwrap();
    let rules = ::pricing::RuleSet::parse(&rules, ::pricing::Currency::EUR)
        .unwrap()
        .with_revision(1);
    assert_eq!(
        recorded
            .reprice(&rules, recorded.calculator_version)
            .unwrap(),
        recorded.breakdown
    );
}

#[tokio::test]
async fn settings_choose_tax_and_shipping_without_code() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let settings = json!({
        "currency": "EUR", "calculator_version": "v1",
        "tax": {"inclusive": false, "default_rate_bps": 1900, "rates_bps": {}, "shipping_taxable": false},
        "shipping": {"kind": "free_over", "amount": {"amount": 490, "currency": "EUR"}, "threshold": {"amount": 5000, "currency": "EUR"}}
    });
    let put = app
        .request(
            Method::PUT,
            "/v1/pricing/settings",
            Some(&m.key),
            Some(settings.clone()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(app.get("/v1/pricing/settings", &m.key).await.body, settings);
    let small = app
        .post(
            "/v1/pricing/quote",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 1}]}),
        )
        .await;
    // 1000 + 490 shipping, 19 % tax on the goods only (shipping not taxable).
    assert_eq!(
        small.body["shipping"]["amount"]["amount"], 490,
        "{}",
        small.body
    );
    assert_eq!(small.body["tax"]["amount"]["amount"], 190);
    assert_eq!(small.body["total"]["amount"], 1000 + 490 + 190);
    let big = app
        .post(
            "/v1/pricing/quote",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 5}]}),
        )
        .await;
    assert_eq!(big.body["shipping"]["amount"]["amount"], 0);
    let bad = app
        .request(
            Method::PUT,
            "/v1/pricing/settings",
            Some(&m.key),
            Some(json!({"currency": "XXX", "calculator_version": "v9",
                        "tax": {"inclusive": true, "default_rate_bps": 20000},
                        "shipping": {"kind": "flat"}})),
        )
        .await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(
        bad.error_fields(),
        [
            "currency",
            "calculator_version",
            "tax.default_rate_bps",
            "shipping.amount"
        ]
    );
}

/// Answers that are neither a 201 nor the 409 of an exhausted code: requests
/// that ended before their order did (503, or 202 pending).
fn statuses_other(statuses: &std::collections::BTreeMap<String, usize>) -> usize {
    statuses
        .iter()
        .filter(|(k, _)| k.starts_with("503") || k.starts_with("202"))
        .map(|(_, n)| n)
        .sum()
}

async fn limited_code(app: &TestApp, m: &Merchant, uses: u64) {
    let rules = json!({"rules": [{"id": "ten-off", "priority": 1, "stackable": true,
        "when": {"promo_code": "LIMITED"}, "then": {"percent_off": 10}, "limits": {"uses": uses}}]});
    let put = put_rules(app, m, rules).await;
    assert_eq!(put.status, 200, "{}", put.body);
}

#[tokio::test]
async fn three_hundred_buyers_race_for_a_code_limited_to_ten_uses() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 300).await;
    limited_code(&app, &m, 10).await;
    let bodies: Vec<Value> = (0..300)
        .map(|i| {
            checkout(
                "TEE",
                1,
                Some("limited"),
                "pm_card_ok",
                &format!("c{i}@example.com"),
            )
        })
        .collect();
    let results = join_all(
        bodies
            .iter()
            .map(|b| post_to(&app.client, &app.base, "/v1/checkouts", &m.key, b)),
    )
    .await;
    let discounted = results
        .iter()
        .filter(|(s, b)| *s == 201 && b["total"]["amount"] == 900)
        .count();
    let refused = results
        .iter()
        .filter(|(s, b)| {
            *s == 409 && b["type"] == "https://mercato.dev/problems/promo-code-exhausted"
        })
        .count();
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    for (status, body) in &results {
        *statuses
            .entry(format!("{status} {}", body["type"].as_str().unwrap_or("")))
            .or_default() += 1;
    }
    // Under this load a request can end before its order does (a 503 when no
    // connection came in time, or a 202 while the payment is reconciled): such an
    // order is finished by the recovery worker. What counts is what the orders end
    // as; every answer is a discounted order, a refusal, or one of those.
    assert!(
        discounted <= 10
            && refused >= 280
            && discounted + refused + statuses_other(&statuses) == 300,
        "{statuses:?}"
    );
    assert_eq!(
        crate::helpers::wait_until_zero(&app.owner, "orders where status = 'pending'", 30).await,
        0
    );
    assert_eq!(
        app.count("orders where status = 'confirmed' and total_amount = 900")
            .await,
        10,
        "exactly the limit got the discount: {statuses:?}"
    );
    assert_eq!(app.count("orders where status = 'confirmed'").await, 10);
    let uses: i64 =
        sqlx::query_scalar("select uses from pricing_rule_usage where rule_id = 'ten-off'")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(uses, 10);
    assert_eq!(app.count("pricing_order_uses").await, 10);
    assert_eq!(app.count("reservations where status = 'active'").await, 0);
    assert_inventory_consistent(&app.owner, &[("TEE", 300)]).await;
}

#[tokio::test]
async fn a_failed_checkout_gives_its_use_back_once() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    limited_code(&app, &m, 1).await;
    let declined = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout(
                "TEE",
                1,
                Some("LIMITED"),
                "pm_card_declined",
                "ann@example.com",
            ),
        )
        .await;
    declined.assert_problem(402, "payment-failed");
    let uses: i64 =
        sqlx::query_scalar("select uses from pricing_rule_usage where rule_id = 'ten-off'")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(uses, 0, "the failed checkout gave its use back");
    let ok = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", 1, Some("LIMITED"), "pm_card_ok", "bob@example.com"),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert_eq!(ok.body["total"]["amount"], 900);
    app.post(
        "/v1/checkouts",
        &m.key,
        checkout("TEE", 1, Some("LIMITED"), "pm_card_ok", "cy@example.com"),
    )
    .await
    .assert_problem(409, "promo-code-exhausted");
    // Without the code, the same buyer is served at full price.
    let full = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", 1, None, "pm_card_ok", "cy@example.com"),
        )
        .await;
    assert_eq!(full.body["total"]["amount"], 1000);
    assert_inventory_consistent(&app.owner, &[("TEE", 10)]).await;
}

async fn ten_percent_off(app: &TestApp, m: &Merchant, limits: Option<Value>) {
    let mut rule =
        json!({"id": "ten", "priority": 1, "stackable": true, "then": {"percent_off": 10}});
    if let Some(limits) = limits {
        rule["when"] = json!({"promo_code": "TEN"});
        rule["limits"] = limits;
    }
    let put = put_rules(app, m, json!({ "rules": [rule] })).await;
    assert_eq!(put.status, 200, "{}", put.body);
}

#[tokio::test]
async fn partial_refunds_return_what_was_paid_and_never_more_than_captured() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    app.create_product(&m, "ODD", 333).await;
    app.set_stock(&m, "ODD", 10).await;
    ten_percent_off(&app, &m, None).await;
    let order = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("ODD", 3, None, "pm_card_ok", "ann@example.com"),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    let total = order.body["total"]["amount"].as_i64().unwrap();
    assert_eq!(total, 999 - 100, "10 % of 999, rounded half to even");
    let id = order.body["id"].as_str().unwrap();
    let path = format!("/v1/orders/{id}/refunds");
    let refund = |quantity: i64| {
        app.post(
            &path,
            &m.key,
            json!({"lines": [{"sku": "ODD", "quantity": quantity}]}),
        )
    };
    let mut returned = 0;
    for _ in 0..3 {
        let one = refund(1).await;
        assert_eq!(one.status, 201, "{}", one.body);
        assert_eq!(one.body["status"], "succeeded");
        returned += one.body["amount"]["amount"].as_i64().unwrap();
    }
    assert_eq!(
        returned, total,
        "three one-unit refunds return exactly what was paid"
    );
    let (captured, refunded, status): (i64, i64, String) =
        sqlx::query_as("select amount, refunded_amount, status from payments")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(
        (captured, refunded, status.as_str()),
        (total, total, "refunded")
    );
    let more = refund(1).await;
    more.assert_problem(422, "validation-error");
    assert_eq!(more.error_fields(), ["lines[0].quantity"]);
    let other_sku = app
        .post(
            &path,
            &m.key,
            json!({"lines": [{"sku": "NOPE", "quantity": 1}]}),
        )
        .await;
    assert_eq!(other_sku.error_fields(), ["lines[0].sku"]);
    let stranger = app.create_merchant("stranger").await;
    app.post(
        &path,
        &stranger.key,
        json!({"lines": [{"sku": "ODD", "quantity": 1}]}),
    )
    .await
    .assert_problem(404, "not-found");
}

#[tokio::test]
async fn two_refunds_racing_for_the_last_unit_return_it_once() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let order = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", 2, None, "pm_card_ok", "ann@example.com"),
        )
        .await;
    let id = order.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{id}/refunds");
    assert_eq!(
        app.post(
            &path,
            &m.key,
            json!({"lines": [{"sku": "TEE", "quantity": 1}]})
        )
        .await
        .status,
        201
    );
    let body = json!({"lines": [{"sku": "TEE", "quantity": 1}]});
    let results =
        join_all((0..2).map(|_| post_to(&app.client, &app.base, &path, &m.key, &body))).await;
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        1,
        "{statuses:?}"
    );
    let refunded: i64 = sqlx::query_scalar("select refunded_amount from payments")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(refunded, 2000);
}

#[tokio::test]
async fn a_code_used_up_is_free_again_once_an_order_is_refunded_in_full() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 30).await;
    ten_percent_off(&app, &m, Some(json!({"uses": 10}))).await;
    let mut orders = Vec::new();
    for i in 0..10 {
        let placed = app
            .post(
                "/v1/checkouts",
                &m.key,
                checkout(
                    "TEE",
                    1,
                    Some("TEN"),
                    "pm_card_ok",
                    &format!("c{i}@example.com"),
                ),
            )
            .await;
        assert_eq!(placed.body["total"]["amount"], 900, "{}", placed.body);
        orders.push(placed.body["id"].as_str().unwrap().to_owned());
    }
    app.post(
        "/v1/checkouts",
        &m.key,
        checkout("TEE", 1, Some("TEN"), "pm_card_ok", "late@example.com"),
    )
    .await
    .assert_problem(409, "promo-code-exhausted");
    for id in &orders[..5] {
        let refund = app
            .post(
                &format!("/v1/orders/{id}/refunds"),
                &m.key,
                json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
            )
            .await;
        assert_eq!(refund.status, 201, "{}", refund.body);
        assert_eq!(
            refund.body["includes_shipping"], true,
            "the last units: refunded in full"
        );
    }
    for i in 0..5 {
        let again = app
            .post(
                "/v1/checkouts",
                &m.key,
                checkout(
                    "TEE",
                    1,
                    Some("TEN"),
                    "pm_card_ok",
                    &format!("again{i}@example.com"),
                ),
            )
            .await;
        assert_eq!(again.body["total"]["amount"], 900, "{}", again.body);
    }
    app.post(
        "/v1/checkouts",
        &m.key,
        checkout("TEE", 1, Some("TEN"), "pm_card_ok", "later@example.com"),
    )
    .await
    .assert_problem(409, "promo-code-exhausted");
}

#[tokio::test]
async fn the_tax_rate_follows_the_ship_to_country() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let settings = json!({
        "currency": "EUR", "calculator_version": "v1",
        "tax": {"inclusive": false, "rates_bps": {"DE": 1900, "FR": 2000}, "default_rate_bps": 0},
        "shipping": {"kind": "free"}
    });
    let put = app
        .request(
            Method::PUT,
            "/v1/pricing/settings",
            Some(&m.key),
            Some(settings),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let tax_for = |country: Option<&str>| {
        let mut body = json!({"items": [{"sku": "TEE", "quantity": 1}]});
        if let Some(c) = country {
            body["ship_to_country"] = json!(c);
        }
        app.post("/v1/pricing/quote", &m.key, body)
    };
    assert_eq!(
        tax_for(Some("de")).await.body["tax"]["amount"]["amount"],
        190
    );
    assert_eq!(
        tax_for(Some("FR")).await.body["tax"]["amount"]["amount"],
        200
    );
    assert_eq!(tax_for(None).await.body["tax"]["amount"]["amount"], 0);
    let bad = tax_for(Some("Germany")).await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["ship_to_country"]);
    // A checkout charges the same as its quote.
    let mut body = checkout("TEE", 1, None, "pm_card_ok", "ann@example.com");
    body["ship_to_country"] = json!("FR");
    let order = app.post("/v1/checkouts", &m.key, body).await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["total"]["amount"], 1200);
}
