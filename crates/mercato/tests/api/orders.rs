//! Orders you can work (issue 36, item 3): find them by filter, refund them
//! by amount, cancel them.

use serde_json::{json, Value};

use mercato::checkout::{explain_order_ids, OrderFilter, RawOrderFilter};
use mercato::pagination::{Page, PageParams};

use crate::helpers::{Body, Merchant, Response, TestApp};

fn checkout_body(email: &str, items: &[(&str, i64)], method: &str) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    json!({"customer": {"email": email}, "items": items, "payment_method": method})
}

/// A confirmed order of `items` for `email`; its body.
async fn order(app: &TestApp, m: &Merchant, email: &str, items: &[(&str, i64)]) -> Value {
    let resp = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout_body(email, items, "pm_card_ok"),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    resp.body
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| o["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn orders_are_found_by_status_fulfillment_email_sku_and_time() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 100).await;
    app.create_product(&m, "MUG", 500).await;
    app.set_stock(&m, "MUG", 100).await;
    let ann = order(&app, &m, "ann@example.com", &[("TEE", 1)]).await;
    let bob = order(&app, &m, "bob@example.com", &[("TEE", 1), ("MUG", 2)]).await;
    let declined = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout_body("Ann@Example.com", &[("MUG", 1)], "pm_card_declined"),
        )
        .await;
    assert_eq!(declined.status, 402);
    let failed: uuid::Uuid = sqlx::query_scalar("select id from orders where status = 'failed'")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    let failed = failed.to_string();
    let (ann, bob) = (
        ann["id"].as_str().unwrap().to_owned(),
        bob["id"].as_str().unwrap().to_owned(),
    );

    let list = |query: &'static str| {
        let app = &app;
        let key = m.key.clone();
        async move {
            let resp = app.get(&format!("/v1/orders?{query}"), &key).await;
            assert_eq!(resp.status, 200, "{query}: {}", resp.body);
            ids(&resp.body)
        }
    };
    assert_eq!(list("").await, [ann.clone(), bob.clone(), failed.clone()]);
    assert_eq!(list("status=confirmed").await, [ann.clone(), bob.clone()]);
    assert_eq!(list("status=failed").await, vec![failed.clone()]);
    assert_eq!(list("fulfillment_status=unfulfilled").await.len(), 3);
    assert!(list("fulfillment_status=fulfilled").await.is_empty());
    assert_eq!(
        list("email=ANN%40example.com").await,
        [ann.clone(), failed.clone()],
        "e-mail matches whatever its case"
    );
    assert_eq!(list("sku=MUG").await, [bob.clone(), failed.clone()]);
    assert_eq!(
        list("sku=MUG&status=confirmed&email=bob%40example.com").await,
        vec![bob.clone()]
    );
    assert_eq!(list("sku=MUG&limit=1").await, vec![bob.clone()]);
    let page = app.get("/v1/orders?sku=MUG&limit=1", &m.key).await.body;
    let cursor = page["next_cursor"].as_str().expect("another page");
    assert_eq!(
        ids(&app
            .get(
                &format!("/v1/orders?sku=MUG&limit=1&cursor={cursor}"),
                &m.key
            )
            .await
            .body),
        vec![failed.clone()]
    );
    assert_eq!(
        list("created_from=2000-01-01T00:00:00Z&created_to=2100-01-01T00:00:00%2B02:00")
            .await
            .len(),
        3
    );
    assert!(list("created_from=2100-01-01T00:00:00Z").await.is_empty());
    assert!(list("created_to=2000-01-01T00:00:00Z").await.is_empty());

    // Another merchant's orders are never listed.
    let other = app.merchant_with_stock("other", "TEE", 5).await;
    order(&app, &other, "ann@example.com", &[("TEE", 1)]).await;
    assert_eq!(list("email=ann%40example.com").await, [ann, failed]);
}

#[tokio::test]
async fn a_bad_filter_is_422_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    for (query, field) in [
        ("status=shipped", "status"),
        ("fulfillment_status=partial", "fulfillment_status"),
        ("email=nobody", "email"),
        ("sku=has%20space", "sku"),
        ("created_from=yesterday", "created_from"),
        ("created_to=2026-12-01", "created_to"),
        (
            "created_from=2026-12-02T00:00:00Z&created_to=2026-12-01T00:00:00Z",
            "created_to",
        ),
        ("limit=0", "limit"),
        ("customer=ann", "customer"),
    ] {
        let resp = app.get(&format!("/v1/orders?{query}"), &m.key).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "{query}");
    }
    let resp = app.get("/v1/orders?status=shipped&limit=x", &m.key).await;
    assert_eq!(resp.error_fields(), ["limit", "status"]);
}

/// Seeds `orders` orders for the merchant straight in SQL (with their
/// reservations and items), spread over a year, of every status.
async fn seed_orders(app: &TestApp, merchant: &Merchant, orders: i64) {
    // uuid v7 from the row's time, so that id order is time order as in production.
    let seeded = sqlx::query(
        "with o as (
             select n, now() - make_interval(secs => ($2 - n) * 600) as at,
                    (lpad(to_hex((extract(epoch from now() - make_interval(secs => ($2 - n) * 600)) * 1000)::bigint), 12, '0')
                     || '7' || substr(md5(n::text || $1::text), 1, 3) || '8'
                     || substr(md5(n::text || $1::text), 4, 15))::uuid as id
             from generate_series(1, $2) n
         ), r as (
             insert into reservations (merchant_id, id, status, expires_at, created_at, settled_at)
             select $1, o.id, 'consumed', o.at, o.at, o.at from o
         ), ins as (
             insert into orders (merchant_id, id, status, saga_step, customer_email, payment_method,
                                 reservation_id, total_amount, currency, created_at, updated_at,
                                 fulfillment_status, customer_id)
             select $1, o.id,
                    case when n % 50 = 0 then 'cancelled' when n % 20 = 0 then 'failed'
                         when n % 97 = 0 then 'pending' else 'confirmed' end,
                    case when n % 50 = 0 then 'confirmed' when n % 20 = 0 then 'compensated'
                         when n % 97 = 0 then 'reserved' else 'confirmed' end,
                    'buyer' || (n % 3000) || '@example.com', 'pm_card_ok', o.id, 1000, 'EUR', o.at, o.at,
                    case when n % 7 = 0 then 'partially_fulfilled' when n % 3 = 0 then 'fulfilled'
                         else 'unfulfilled' end,
                    md5('customer' || (n % 3000) || $1::text)::uuid
             from o
         )
         insert into order_items (merchant_id, order_id, sku, quantity, unit_amount)
         select $1, o.id, 'SKU-' || ((n + k * 131) % 400), 1, 1000
         from o, generate_series(1, 2) k",
    )
    .bind(merchant.id.0)
    .bind(orders)
    .execute(&app.owner)
    .await;
    seeded.expect("orders seeded");
    sqlx::raw_sql("analyze orders; analyze order_items;")
        .execute(&app.owner)
        .await
        .expect("analyze");
}

/// The indexes (any of them) a selective filter must be served by.
fn indexes_for(what: &str) -> &'static [&'static str] {
    match what {
        "a rare status" => &["orders_by_status"],
        "fulfillment status" => &["orders_by_fulfillment_status"],
        "email" => &["orders_by_customer_key"],
        "customer" => &["orders_by_customer_id"],
        "sku" => &["order_items_by_sku"],
        "the last day" => &["orders_by_time", "orders_recent"],
        _ => &[],
    }
}

#[tokio::test]
async fn every_order_filter_is_index_backed_under_row_level_security() {
    let app = TestApp::spawn().await;
    let big = app.create_merchant("big").await;
    let small = app.create_merchant("small").await;
    seed_orders(&app, &big, 40_000).await;
    seed_orders(&app, &small, 2_000).await;
    let page = Page::parse(&PageParams {
        limit: None,
        cursor: None,
    })
    .unwrap();
    let cases: &[(&str, RawOrderFilter)] = &[
        ("nothing", RawOrderFilter::default()),
        (
            "a common status",
            RawOrderFilter {
                status: Some("confirmed"),
                ..Default::default()
            },
        ),
        (
            "a rare status",
            RawOrderFilter {
                status: Some("cancelled"),
                ..Default::default()
            },
        ),
        (
            "fulfillment status",
            RawOrderFilter {
                fulfillment_status: Some("partially_fulfilled"),
                ..Default::default()
            },
        ),
        (
            "email",
            RawOrderFilter {
                email: Some("Buyer42@example.com"),
                ..Default::default()
            },
        ),
        (
            "sku",
            RawOrderFilter {
                sku: Some("SKU-17"),
                ..Default::default()
            },
        ),
        (
            "a day",
            RawOrderFilter {
                created_from: Some("2000-01-01T00:00:00Z"),
                created_to: Some("2000-01-02T00:00:00Z"),
                ..Default::default()
            },
        ),
        (
            "the last day",
            RawOrderFilter {
                created_from: Some(Box::leak(
                    (chrono::Utc::now() - chrono::Duration::days(1))
                        .to_rfc3339()
                        .into_boxed_str(),
                )),
                ..Default::default()
            },
        ),
        (
            "everything at once",
            RawOrderFilter {
                status: Some("confirmed"),
                fulfillment_status: Some("fulfilled"),
                email: Some("buyer42@example.com"),
                sku: Some("SKU-84"),
                created_from: Some("2000-01-01T00:00:00Z"),
                created_to: Some("2100-01-01T00:00:00Z"),
                customer_id: None,
            },
        ),
        (
            "customer",
            RawOrderFilter {
                // Any one customer: each has ~1/3000 of a merchant's orders
                // (the seed's `md5(…)::uuid`), and the plan is an equality on
                // an indexed column whatever the value.
                customer_id: Some("0f5e2b7c-93a1-4c2e-8d5b-2a6f1c9e4b7d"),
                ..Default::default()
            },
        ),
    ];
    for merchant in [&big, &small] {
        for (what, raw) in cases {
            let filter = OrderFilter::parse(raw).expect("a valid filter");
            // As the service runs it: role mercato_app, the tenant set, RLS forced.
            let mut tx = app.tenant_tx(merchant).await;
            let plan = explain_order_ids(&mut tx, &filter, page)
                .await
                .expect("explain");
            eprintln!("{what}:\n{plan}\n");
            let indexes = indexes_for(what);
            assert!(
                indexes.is_empty() || indexes.iter().any(|index| plan.contains(index)),
                "{what}: one of {indexes:?} serves it:\n{plan}"
            );
            for table in ["orders", "order_items"] {
                assert!(
                    !plan.contains(&format!("Seq Scan on {table}")),
                    "{what}: a sequential scan of {table}:\n{plan}"
                );
            }
        }
    }
}

async fn post_refund(app: &TestApp, m: &Merchant, order: &str, body: Value) -> Response {
    app.post(&format!("/v1/orders/{order}/refunds"), &m.key, body)
        .await
}

#[tokio::test]
async fn refunds_of_amounts_and_of_lines_never_return_more_than_was_paid() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 2)]).await;
    let id = placed["id"].as_str().unwrap();
    assert_eq!(placed["refunded"], json!({"amount": 0, "currency": "EUR"}));

    let amount = |amount: i64| json!({"amount": {"amount": amount, "currency": "EUR"}, "reason": "scratched"});
    let first = post_refund(&app, &m, id, amount(500)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(
        first.body["amount"],
        json!({"amount": 500, "currency": "EUR"})
    );
    assert_eq!(first.body["reason"], "scratched");
    assert_eq!(first.body["status"], "succeeded");
    assert_eq!(first.body["lines"], json!([]));

    for (body, field) in [
        (amount(1501), "amount.amount"),
        (amount(-5), "amount.amount"),
        (
            json!({"amount": {"amount": 5, "currency": "USD"}, "reason": "x"}),
            "amount.currency",
        ),
        (
            json!({"amount": {"amount": 5, "currency": "EUR"}}),
            "reason",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
            "lines[0].sku",
        ),
        (
            json!({"lines": [{"sku": "TEE", "quantity": 3}]}),
            "lines[0].quantity",
        ),
        (json!({}), "lines"),
    ] {
        let resp = post_refund(&app, &m, id, body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "{body}");
    }

    // The units' share is 2,000; 500 of it went back already.
    let lines = post_refund(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 2}]}),
    )
    .await;
    assert_eq!(lines.status, 201, "{}", lines.body);
    assert_eq!(lines.body["amount"]["amount"], 1500);
    let nothing_left = post_refund(&app, &m, id, amount(1)).await;
    assert_eq!(nothing_left.error_fields(), ["amount.amount"]);

    let listed = app.get(&format!("/v1/orders/{id}/refunds"), &m.key).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let refunds = listed.body["data"].as_array().unwrap();
    assert_eq!(refunds.len(), 2);
    assert_eq!(refunds[0]["id"], first.body["id"]);
    assert_eq!(refunds[1]["lines"][0]["sku"], "TEE");
    let now = app.get(&format!("/v1/orders/{id}"), &m.key).await.body;
    assert_eq!(now["refunded"], json!({"amount": 2000, "currency": "EUR"}));
    assert_eq!(now["refunds"].as_array().unwrap().len(), 2);
    let refunded_events = app.count("events where type = 'order.refunded'").await;
    assert_eq!(refunded_events, 2);

    // Another merchant's order is not found, to list or to refund.
    let other = app.create_merchant("other").await;
    post_refund(&app, &other, id, amount(1))
        .await
        .assert_problem(404, "not-found");
    app.get(&format!("/v1/orders/{id}/refunds"), &other.key)
        .await
        .assert_problem(404, "not-found");
}

/// What the database says of every order's refunds and its payment, as
/// violations: refunds (pending or paid) within the order's total, the card's
/// refunds within its capture, and the provider's record equal to the refunds paid.
pub async fn refund_violations(owner: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select format('order %s: refunds %s of a total %s, card refunded %s of %s, provider records %s',
                       o.id, r.refunded, o.total_amount, p.refunded_amount, p.amount, pr.recorded)
         from orders o
         join payments p on p.merchant_id = o.merchant_id and p.id = o.payment_id
         cross join lateral (
             select coalesce(sum(amount), 0) as refunded from order_refunds r
             where r.merchant_id = o.merchant_id and r.order_id = o.id and r.status <> 'failed') r
         cross join lateral (
             select coalesce(sum(amount), 0) as recorded from payment_refunds x
             where x.merchant_id = p.merchant_id and x.payment_id = p.id) pr
         where r.refunded > o.total_amount or p.refunded_amount > p.amount
            or pr.recorded <> p.refunded_amount",
    )
    .fetch_all(owner)
    .await
    .expect("refund invariants")
}

#[tokio::test]
async fn concurrent_refunds_worth_more_than_the_capture_pay_back_at_most_the_capture() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 10)]).await;
    let id = placed["id"].as_str().unwrap().to_owned();
    assert_eq!(placed["total"]["amount"], 10_000);
    // 24 refunds of 700 (16,800 asked of 10,000 paid) and refunds of lines, at once.
    let bodies: Vec<Value> = (0..28)
        .map(|i| {
            if i % 7 == 3 {
                json!({"lines": [{"sku": "TEE", "quantity": 1}]})
            } else {
                json!({"amount": {"amount": 700, "currency": "EUR"}, "reason": format!("race {i}")})
            }
        })
        .collect();
    let path = format!("/v1/orders/{id}/refunds");
    let keys: Vec<String> = (0..bodies.len()).map(|i| format!("race-{i}")).collect();
    let answers = futures_util::future::join_all(
        bodies
            .iter()
            .zip(&keys)
            .map(|(body, key)| app.post_idempotent(&path, &m.key, key, Body::Json(body.clone()))),
    )
    .await;
    let mut paid = 0;
    for answer in &answers {
        match answer.status.as_u16() {
            201 => paid += answer.body["amount"]["amount"].as_i64().unwrap(),
            422 => assert_eq!(answer.error_fields(), ["amount.amount"], "{}", answer.body),
            other => panic!("{other}: {}", answer.body),
        }
    }
    assert!(paid <= 10_000, "paid back {paid} of 10,000");
    assert!(
        paid > 10_000 - 700,
        "every refund that fitted was paid: {paid}"
    );
    assert_eq!(refund_violations(&app.owner).await, Vec::<String>::new());
    let (refunded, recorded): (i64, i64) = sqlx::query_as(
        "select (select coalesce(sum(amount), 0)::bigint from order_refunds where status = 'succeeded'),
                (select refunded_amount + 0 from payments)",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!((refunded, recorded), (paid, paid));
    let order = app.get(&format!("/v1/orders/{id}"), &m.key).await.body;
    assert_eq!(order["refunded"]["amount"], paid);
}

async fn cancel(app: &TestApp, m: &Merchant, order: &str, reason: &str) -> Response {
    app.post(
        &format!("/v1/orders/{order}/cancel"),
        &m.key,
        json!({"reason": reason}),
    )
    .await
}

#[tokio::test]
async fn cancelling_gives_back_the_money_the_units_the_promotion_and_the_store_credit_once() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let rules = json!({"rules": [{"id": "ten-off", "priority": 1, "stackable": true,
        "when": {"promo_code": "LIMITED"}, "then": {"percent_off": 10}, "limits": {"uses": 1}}]});
    let put = app
        .request(
            reqwest::Method::PUT,
            "/v1/pricing/rules",
            Some(&m.key),
            Some(rules),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let mut tx = app.tenant_tx(&m).await;
    mercato::wallet::credit(&mut tx, "ann@example.com", 500, "EUR", "gift")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let with_code = |email: &str| {
        let mut body = checkout_body(email, &[("TEE", 2)], "pm_card_ok");
        body["promo_code"] = json!("LIMITED");
        body
    };
    let placed = app
        .post("/v1/checkouts", &m.key, with_code("ann@example.com"))
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_owned();
    let total = placed.body["total"]["amount"].as_i64().unwrap();
    assert_eq!(placed.body["store_credit"]["amount"], 500);
    assert!(total < 2000, "the code applied: {total}");
    app.post("/v1/checkouts", &m.key, with_code("bob@example.com"))
        .await
        .assert_problem(409, "promo-code-exhausted");
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["available"],
        8
    );

    cancel(&app, &m, &id, "  ")
        .await
        .assert_problem(422, "validation-error");
    let cancelled = cancel(&app, &m, &id, "customer asked").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["refunded"]["amount"], total);
    assert_eq!(cancelled.body["refunds"][0]["status"], "succeeded");
    // Units back, store credit back to the wallet, the card refunded its part.
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["available"],
        10
    );
    let mut tx = app.tenant_tx(&m).await;
    let balance = mercato::wallet::balance(&mut tx, "ann@example.com")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balance, Some((500, "EUR".to_owned())));
    let card_refunded: i64 = sqlx::query_scalar("select refunded_amount from payments")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(card_refunded, total - 500);
    // The code's use is free again.
    let again = app
        .post("/v1/checkouts", &m.key, with_code("bob@example.com"))
        .await;
    assert_eq!(again.status, 201, "{}", again.body);

    // Twice is once; then it is neither refundable nor fulfillable money.
    let twice = cancel(&app, &m, &id, "customer asked").await;
    assert_eq!(twice.status, 200, "{}", twice.body);
    assert_eq!(twice.body["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(app.count("events where type = 'order.cancelled'").await, 1);
    assert_eq!(app.count("events where type = 'order.refunded'").await, 1);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["available"],
        8,
        "bob's order took 2; the second cancel put nothing back"
    );
    post_refund(
        &app,
        &m,
        &id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
    )
    .await
    .assert_problem(409, "order-not-refundable");
    assert_eq!(refund_violations(&app.owner).await, Vec::<String>::new());
    let listed = app.get("/v1/orders?status=cancelled", &m.key).await.body;
    assert_eq!(ids(&listed), vec![id.clone()]);

    let other = app.create_merchant("other").await;
    cancel(&app, &other, &id, "not mine")
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn a_shipped_or_unpaid_order_is_not_cancelled() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let shipped = order(&app, &m, "ann@example.com", &[("TEE", 2)]).await;
    let shipped = shipped["id"].as_str().unwrap();
    sqlx::query("update orders set fulfillment_status = 'partially_fulfilled' where id = $1::uuid")
        .bind(shipped)
        .execute(&app.owner)
        .await
        .unwrap();
    cancel(&app, &m, shipped, "too late")
        .await
        .assert_problem(409, "order-already-fulfilled");
    let declined = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout_body("ann@example.com", &[("TEE", 1)], "pm_card_declined"),
        )
        .await;
    assert_eq!(declined.status, 402);
    let failed: uuid::Uuid = sqlx::query_scalar("select id from orders where status = 'failed'")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    cancel(&app, &m, &failed.to_string(), "never paid")
        .await
        .assert_problem(409, "order-not-cancellable");
    assert_eq!(app.count("events where type = 'order.cancelled'").await, 0);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["available"],
        8
    );
}

async fn fulfil(app: &TestApp, m: &Merchant, order: &str, body: Value) -> Response {
    app.post(&format!("/v1/orders/{order}/fulfillments"), &m.key, body)
        .await
}

#[tokio::test]
async fn fulfilments_move_the_order_to_partially_then_fully_fulfilled_and_never_beyond() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    app.create_product(&m, "MUG", 500).await;
    app.set_stock(&m, "MUG", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 3), ("MUG", 1)]).await;
    let id = placed["id"].as_str().unwrap();
    assert_eq!(placed["fulfillment_status"], "unfulfilled");
    // One TEE refunded before shipping: two are left to ship.
    let refund = post_refund(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
    )
    .await;
    assert_eq!(refund.status, 201, "{}", refund.body);

    for (body, field) in [
        (
            json!({"lines": [{"sku": "TEE", "quantity": 3}]}),
            "lines[0].quantity",
        ),
        (
            json!({"lines": [{"sku": "HAT", "quantity": 1}]}),
            "lines[0].sku",
        ),
        (
            json!({"lines": [{"sku": "TEE", "quantity": -1}]}),
            "lines[0].quantity",
        ),
        (
            json!({"lines": [{"sku": "TEE", "quantity": 1}], "carrier": ""}),
            "carrier",
        ),
    ] {
        let resp = fulfil(&app, &m, id, body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "{body}");
    }
    let first = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 2}], "carrier": "DHL", "tracking_number": "JD0001"}),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["fulfillment_status"], "partially_fulfilled");
    assert_eq!(first.body["provider"], "manual");
    assert_eq!(first.body["tracking_number"], "JD0001");
    let listed = app
        .get("/v1/orders?fulfillment_status=partially_fulfilled", &m.key)
        .await;
    assert_eq!(ids(&listed.body), vec![id.to_owned()]);
    // Shipped: no cancel any more.
    cancel(&app, &m, id, "too late")
        .await
        .assert_problem(409, "order-already-fulfilled");
    let last = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
    )
    .await;
    assert_eq!(last.status, 201, "{}", last.body);
    assert_eq!(last.body["fulfillment_status"], "fulfilled");
    fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
    )
    .await
    .assert_problem(422, "validation-error");
    let order_now = app.get(&format!("/v1/orders/{id}"), &m.key).await.body;
    assert_eq!(order_now["fulfillment_status"], "fulfilled");
    let shipments = app
        .get(&format!("/v1/orders/{id}/fulfillments"), &m.key)
        .await;
    assert_eq!(shipments.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(app.count("events where type = 'order.fulfilled'").await, 2);

    let other = app.create_merchant("other").await;
    fulfil(
        &app,
        &other,
        id,
        json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
    )
    .await
    .assert_problem(404, "not-found");
    app.get(&format!("/v1/orders/{id}/fulfillments"), &other.key)
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn concurrent_fulfilments_ship_no_more_than_was_bought() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 10)]).await;
    let id = placed["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{id}/fulfillments");
    let keys: Vec<String> = (0..30).map(|i| format!("ship-{i}")).collect();
    let body = json!({"lines": [{"sku": "TEE", "quantity": 1}]});
    let answers = futures_util::future::join_all(
        keys.iter()
            .map(|key| app.post_idempotent(&path, &m.key, key, Body::Json(body.clone()))),
    )
    .await;
    let shipped = answers.iter().filter(|a| a.status == 201).count();
    for a in answers.iter().filter(|a| a.status != 201) {
        a.assert_problem(422, "validation-error");
        assert_eq!(a.error_fields(), ["lines[0].quantity"]);
    }
    assert_eq!(shipped, 10, "every unit shipped once");
    let (units, fulfilled): (i64, i64) = sqlx::query_as(
        "select (select coalesce(sum(quantity), 0)::bigint from order_fulfillment_lines),
                (select count(*) from orders where fulfillment_status = 'fulfilled')",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!((units, fulfilled), (10, 1));
    // The same key again answers the same shipment.
    let again = app
        .post_idempotent(&path, &m.key, "ship-0", Body::Json(body))
        .await;
    assert_eq!(again.status, answers[0].status);
}

/// A provider that assigns tracking numbers and refuses to ship to carrier "nowhere".
struct TrackingProvider;

impl mercato::checkout::FulfillmentProvider for TrackingProvider {
    fn name(&self) -> &str {
        "tracking"
    }

    fn ship<'a>(
        &'a self,
        request: mercato::checkout::ShipmentRequest<'a>,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<mercato::checkout::Shipment, mercato::checkout::ShipmentError>,
    > {
        Box::pin(async move {
            if request.carrier == Some("nowhere") {
                return Err(mercato::checkout::ShipmentError::Refused(
                    "no route to nowhere".into(),
                ));
            }
            Ok(mercato::checkout::Shipment {
                carrier: Some("TrackCo".into()),
                tracking_number: Some(format!("TRK-{}", request.fulfillment_id.simple())),
            })
        })
    }
}

#[tokio::test]
async fn a_merchant_chooses_its_fulfilment_provider_and_it_ships_or_refuses() {
    let db = crate::helpers::TestDatabase::create().await;
    let config = db.config();
    let plugins = mercato::app::Plugins {
        fulfillment: vec![std::sync::Arc::new(TrackingProvider)],
    };
    let app = TestApp::spawn_with_plugins(db, config, plugins).await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 2)]).await;
    let id = placed["id"].as_str().unwrap();
    assert_eq!(
        app.get("/v1/fulfillment-settings", &m.key).await.body,
        json!({"provider": "manual"})
    );
    let unknown = app
        .request(
            reqwest::Method::PUT,
            "/v1/fulfillment-settings",
            Some(&m.key),
            Some(json!({"provider": "pigeon"})),
        )
        .await;
    assert_eq!(unknown.error_fields(), ["provider"]);
    let chosen = app
        .request(
            reqwest::Method::PUT,
            "/v1/fulfillment-settings",
            Some(&m.key),
            Some(json!({"provider": "tracking"})),
        )
        .await;
    assert_eq!(chosen.status, 200, "{}", chosen.body);
    fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}], "carrier": "nowhere"}),
    )
    .await
    .assert_problem(409, "fulfillment-refused");
    let shipped = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
    )
    .await;
    assert_eq!(shipped.status, 201, "{}", shipped.body);
    assert_eq!(shipped.body["provider"], "tracking");
    assert_eq!(shipped.body["carrier"], "TrackCo");
    assert!(shipped.body["tracking_number"]
        .as_str()
        .unwrap()
        .starts_with("TRK-"));
    // Another merchant keeps the built-in one.
    let other = app.merchant_with_stock("other", "TEE", 5).await;
    let theirs = order(&app, &other, "bob@example.com", &[("TEE", 1)]).await;
    let theirs = fulfil(
        &app,
        &other,
        theirs["id"].as_str().unwrap(),
        json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
    )
    .await;
    assert_eq!(theirs.body["provider"], "manual");
}

async fn take_back(app: &TestApp, m: &Merchant, order: &str, body: Value) -> Response {
    app.post(&format!("/v1/orders/{order}/returns"), &m.key, body)
        .await
}

#[tokio::test]
async fn a_return_refunds_the_units_share_restocks_if_asked_and_never_exceeds_what_shipped() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 3)]).await;
    let id = placed["id"].as_str().unwrap();
    let tee = |q: i64, restock: bool| json!({"lines": [{"sku": "TEE", "quantity": q}], "restock": restock});
    // Nothing shipped yet: nothing to take back.
    let early = take_back(&app, &m, id, tee(1, true)).await;
    early.assert_problem(422, "validation-error");
    assert_eq!(early.error_fields(), ["lines[0].quantity"]);
    let shipped = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 2}]}),
    )
    .await;
    assert_eq!(shipped.status, 201, "{}", shipped.body);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["on_hand"],
        7
    );

    for (body, field) in [
        (tee(3, true), "lines[0].quantity"),
        (
            json!({"lines": [{"sku": "HAT", "quantity": 1}], "restock": true}),
            "lines[0].sku",
        ),
        (json!({"lines": [{"sku": "TEE", "quantity": 1}]}), "restock"),
    ] {
        let resp = take_back(&app, &m, id, body.clone()).await;
        assert_eq!(resp.status, 422, "{body}: {}", resp.body);
        assert_eq!(resp.error_fields(), [field], "{body}");
    }
    let first = take_back(&app, &m, id, tee(1, true)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["refund"]["amount"]["amount"], 1000);
    assert_eq!(first.body["refund"]["status"], "succeeded");
    assert_eq!(first.body["restock"], true);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["on_hand"],
        8
    );
    let second = take_back(&app, &m, id, tee(1, false)).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["on_hand"],
        8,
        "not restocked"
    );
    let third = take_back(&app, &m, id, tee(1, true)).await;
    assert_eq!(
        third.error_fields(),
        ["lines[0].quantity"],
        "only two shipped"
    );
    // The unit never shipped can still ship; the returned ones cannot again.
    let again = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 2}]}),
    )
    .await;
    assert_eq!(again.error_fields(), ["lines[0].quantity"]);
    let last = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
    )
    .await;
    assert_eq!(last.status, 201, "{}", last.body);
    assert_eq!(last.body["fulfillment_status"], "fulfilled");
    assert_eq!(app.count("events where type = 'order.returned'").await, 2);
    let order_now = app.get(&format!("/v1/orders/{id}"), &m.key).await.body;
    assert_eq!(order_now["refunded"]["amount"], 2000);
    assert_eq!(refund_violations(&app.owner).await, Vec::<String>::new());

    let other = app.create_merchant("other").await;
    take_back(&app, &other, id, tee(1, true))
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn concurrent_returns_take_back_no_more_than_was_shipped() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 8)]).await;
    let id = placed["id"].as_str().unwrap().to_owned();
    let shipped = fulfil(
        &app,
        &m,
        &id,
        json!({"lines": [{"sku": "TEE", "quantity": 5}]}),
    )
    .await;
    assert_eq!(shipped.status, 201, "{}", shipped.body);
    let path = format!("/v1/orders/{id}/returns");
    let keys: Vec<String> = (0..20).map(|i| format!("return-{i}")).collect();
    let body = json!({"lines": [{"sku": "TEE", "quantity": 1}], "restock": true});
    let answers = futures_util::future::join_all(
        keys.iter()
            .map(|key| app.post_idempotent(&path, &m.key, key, Body::Json(body.clone()))),
    )
    .await;
    let taken = answers.iter().filter(|a| a.status == 201).count();
    assert_eq!(
        taken,
        5,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let (returned, on_hand): (i64, i64) = sqlx::query_as(
        "select (select coalesce(sum(quantity), 0)::bigint from order_return_lines),
                (select on_hand from stock_levels where sku = 'TEE')",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!((returned, on_hand), (5, 10 - 8 + 5));
    assert_eq!(refund_violations(&app.owner).await, Vec::<String>::new());
}

fn timeline_types(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_orders_timeline_is_its_events_oldest_first() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let placed = order(&app, &m, "ann@example.com", &[("TEE", 2)]).await;
    let id = placed["id"].as_str().unwrap();
    let refund = post_refund(
        &app,
        &m,
        id,
        json!({"amount": {"amount": 100, "currency": "EUR"}, "reason": "late"}),
    )
    .await;
    assert_eq!(refund.status, 201, "{}", refund.body);
    let shipped = fulfil(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}], "tracking_number": "T1"}),
    )
    .await;
    assert_eq!(shipped.status, 201, "{}", shipped.body);
    let back = take_back(
        &app,
        &m,
        id,
        json!({"lines": [{"sku": "TEE", "quantity": 1}], "restock": true}),
    )
    .await;
    assert_eq!(back.status, 201, "{}", back.body);
    // Another order's events stay out of it.
    let cancelled = order(&app, &m, "bob@example.com", &[("TEE", 1)]).await;
    let cancelled = cancelled["id"].as_str().unwrap();
    assert_eq!(cancel(&app, &m, cancelled, "oops").await.status, 200);

    let timeline = app.get(&format!("/v1/orders/{id}/timeline"), &m.key).await;
    assert_eq!(timeline.status, 200, "{}", timeline.body);
    assert_eq!(
        timeline_types(&timeline.body),
        [
            "order.created",
            "order.confirmed",
            "order.refunded",
            "order.fulfilled",
            "order.returned",
            "order.refunded"
        ]
    );
    assert_eq!(timeline.body["data"][3]["data"]["tracking_number"], "T1");
    let times: Vec<&str> = timeline.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let theirs = app
        .get(&format!("/v1/orders/{cancelled}/timeline"), &m.key)
        .await;
    assert_eq!(
        timeline_types(&theirs.body),
        [
            "order.created",
            "order.confirmed",
            "order.cancelled",
            "order.refunded"
        ]
    );
    let other = app.create_merchant("other").await;
    app.get(&format!("/v1/orders/{id}/timeline"), &other.key)
        .await
        .assert_problem(404, "not-found");
}
