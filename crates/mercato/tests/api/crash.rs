//! Kill the server with SIGKILL in the middle of a checkout storm, restart it,
//! and check that recovery leaves every invariant intact.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{
    assert_inventory_consistent, count, post_to, wait_until_zero, TestDatabase, ADMIN_TOKEN,
};

/// The `mercato` binary serving the test database; killed (SIGKILL) on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(db: &TestDatabase, port: u16) -> Server {
        Server::start_with(db, port, &[]).await
    }

    async fn start_with(db: &TestDatabase, port: u16, extra: &[&str]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_mercato"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args([
                "--checkout-ttl",
                "2",
                "--recovery-grace",
                "1",
                "--worker-interval",
                "0.1",
            ])
            .args(["--payment-delay", "0.3", "--db-pool", "20"])
            .args(extra)
            .env("DATABASE_URL", &db.owner_url)
            .env("MERCATO_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mercato binary starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(resp) = client.get(format!("{}/readyz", server.base)).send().await {
                if resp.status() == 200 {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SKUS: [&str; 3] = ["HOT-A", "HOT-B", "HOT-C"];
const STOCK: i64 = 40;

/// A merchant with a product and `stock` units for each of `skus`; its API key.
async fn merchant_with_stock(
    client: &reqwest::Client,
    base: &str,
    skus: &[&str],
    stock: i64,
) -> String {
    let (_, merchant) = post_to(
        client,
        base,
        "/v1/merchants",
        ADMIN_TOKEN,
        &json!({"name": "Acme", "slug": "acme"}),
    )
    .await;
    let key = merchant["api_key"]
        .as_str()
        .expect("merchant created")
        .to_owned();
    for sku in skus {
        let product = json!({"name": sku, "variants": [{"sku": sku, "price": {"amount": 500, "currency": "EUR"}}]});
        assert_eq!(
            post_to(client, base, "/v1/products", &key, &product)
                .await
                .0,
            201
        );
        let stock = client
            .put(format!("{base}/v1/inventory/{sku}"))
            .bearer_auth(&key)
            .json(&json!({"on_hand": stock}))
            .send()
            .await
            .unwrap();
        assert_eq!(stock.status(), 200);
    }
    key
}

#[tokio::test]
async fn a_server_killed_mid_storm_recovers_every_checkout() {
    let db = TestDatabase::create().await;
    let port = free_port();
    let mut server = Server::start(&db, port).await;
    let client = reqwest::Client::new();

    let key = merchant_with_stock(&client, &server.base, &SKUS, STOCK).await;

    // 300 buyers, every payment behaviour, fired at once; the server dies part-way.
    let methods = [
        "pm_card_ok",
        "pm_card_ok",
        "pm_card_slow",
        "pm_card_declined",
        "pm_card_timeout",
    ];
    let bodies: Vec<Value> = (0..300)
        .map(|i| {
            json!({"customer": {"email": format!("buyer{i}@example.com")},
                   "items": [{"sku": SKUS[i % SKUS.len()], "quantity": 1 + (i % 2) as i64}],
                   "payment_method": methods[i % methods.len()]})
        })
        .collect();
    let base = server.base.clone();
    let answers = AtomicUsize::new(0);
    let storm = join_all(bodies.iter().map(|b| async {
        let answer = post_to(&client, &base, "/v1/checkouts", &key, b).await;
        answers.fetch_add(1, Ordering::SeqCst);
        answer
    }));
    // Kill once the first answers are out, so the rest are caught mid-way.
    let kill = async {
        for _ in 0..500 {
            if answers.load(Ordering::SeqCst) >= 60 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
    };
    let (results, ()) = tokio::join!(storm, kill);
    let answered = results.iter().filter(|(status, _)| *status != 0).count();
    assert!(
        answered < 300,
        "the kill landed mid-storm ({answered} of 300 answered)"
    );

    let owner = sqlx::PgPool::connect(&db.owner_url).await.unwrap();
    let in_flight: i64 = count(&owner, "orders where status = 'pending'").await;
    eprintln!("killed with {answered} answered, {in_flight} checkouts pending");

    let _restarted = Server::start(&db, free_port()).await;
    let pending = wait_until_zero(&owner, "orders where status = 'pending'", 60).await;
    assert_eq!(pending, 0, "recovery finished every checkout");
    let active = wait_until_zero(&owner, "reservations where status = 'active'", 60).await;
    assert_eq!(active, 0, "orphaned reservations expired");
    let initial: Vec<(&str, i64)> = SKUS.iter().map(|s| (*s, STOCK)).collect();
    assert_inventory_consistent(&owner, &initial).await;
    let authorized: i64 = count(&owner, "payments where status = 'authorized'").await;
    assert_eq!(
        authorized, 0,
        "no payment is left holding money: captured, voided or refunded"
    );
}

/// One hot SKU sold through the FIFO admission, the server killed while
/// batches of confirms are in flight (sales written, not yet folded into the
/// stock row): after a restart every checkout is finished, every sale is folded
/// exactly once, and the stock row itself adds up.
#[tokio::test]
async fn a_server_killed_mid_batched_confirms_folds_every_sale_once() {
    const HOT: &str = "HOT";
    const UNITS: i64 = 150;
    let db = TestDatabase::create().await;
    let mut server = Server::start(&db, free_port()).await;
    let client = reqwest::Client::new();
    let key = merchant_with_stock(&client, &server.base, &[HOT], UNITS).await;
    let bodies: Vec<Value> = (0..200)
        .map(|i| {
            json!({"customer": {"email": format!("buyer{i}@example.com")},
                   "items": [{"sku": HOT, "quantity": 1}], "payment_method": "pm_card_ok"})
        })
        .collect();
    let base = server.base.clone();
    let owner = sqlx::PgPool::connect(&db.owner_url).await.unwrap();
    let answers = AtomicUsize::new(0);
    let storm = join_all(bodies.iter().map(|b| async {
        let answer = post_to(
            &client,
            &base,
            "/v1/checkouts?strategy=reservation",
            &key,
            b,
        )
        .await;
        answers.fetch_add(1, Ordering::SeqCst);
        answer
    }));
    // Kill once confirms have written sales that no batch has folded yet.
    let kill = async {
        let mut unfolded = 0;
        for _ in 0..1_000 {
            unfolded = count(&owner, "stock_sales").await;
            if unfolded > 0 && answers.load(Ordering::SeqCst) >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill();
        unfolded
    };
    let (results, unfolded) = tokio::join!(storm, kill);
    let answered = results.iter().filter(|(status, _)| *status != 0).count();
    assert!(
        answered < 200,
        "the kill landed mid-storm ({answered} of 200 answered)"
    );
    assert!(
        unfolded > 0,
        "sales were waiting to be folded when the server died"
    );
    eprintln!("killed with {answered} answered, {unfolded} sales unfolded");

    let _restarted = Server::start(&db, free_port()).await;
    assert_eq!(
        wait_until_zero(&owner, "orders where status = 'pending'", 60).await,
        0
    );
    assert_eq!(
        wait_until_zero(&owner, "reservations where status = 'active'", 60).await,
        0
    );
    assert_eq!(
        wait_until_zero(&owner, "stock_sales", 30).await,
        0,
        "every sale folded"
    );
    assert_inventory_consistent(&owner, &[(HOT, UNITS)]).await;
    let (on_hand, reserved): (i64, i64) =
        sqlx::query_as("select on_hand, reserved from stock where sku = $1")
            .bind(HOT)
            .fetch_one(&owner)
            .await
            .unwrap();
    let confirmed = count(&owner, "orders where status = 'confirmed'").await;
    assert_eq!(
        (on_hand, reserved),
        (UNITS - confirmed, 0),
        "the stock row itself: each confirmed unit folded out exactly once"
    );
}

#[tokio::test]
async fn a_server_killed_mid_delivery_loses_no_webhook() {
    let db = TestDatabase::create().await;
    let port = free_port();
    // A timeout well above the receiver's delay, so that only the kill (not a
    // loaded machine) makes attempts fail: a failure waits 5 s for its retry, two 5 min.
    let args = ["--webhooks-allow-internal", "--webhook-timeout", "3"];
    let mut server = Server::start_with(&db, port, &args).await;
    let client = reqwest::Client::new();
    let (_, merchant) = post_to(
        &client,
        &server.base,
        "/v1/merchants",
        ADMIN_TOKEN,
        &json!({"name": "Acme", "slug": "acme"}),
    )
    .await;
    let key = merchant["api_key"].as_str().expect("merchant").to_owned();
    let receiver = crate::webhooks::Receiver::start().await;
    let (status, endpoint) = post_to(
        &client,
        &server.base,
        "/v1/webhook-endpoints",
        &key,
        &json!({"url": receiver.hook(), "event_types": ["pricing.rules_changed"]}),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    receiver
        .control("/_secrets", json!({"secrets": [endpoint["secret"]]}))
        .await;
    // A receiver slow enough that deliveries are in flight when the server dies.
    receiver.control("/_mode", json!({"delay": 0.5})).await;
    for i in 0..20 {
        let resp = client
            .put(format!("{}/v1/pricing/rules", server.base))
            .bearer_auth(&key)
            .json(&json!({"rules": [{"id": format!("r{i}"), "priority": 1, "stackable": true, "then": {"percent_off": 1}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    for _ in 0..100 {
        if !receiver.received().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    receiver.control("/_mode", json!({"delay": 0.0})).await;
    let server = Server::start_with(&db, port, &args).await;

    let events: Value = client
        .get(format!("{}/v1/events?limit=100", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: std::collections::BTreeSet<String> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 20);
    let mut delivered = std::collections::BTreeSet::new();
    // Deliveries leased by the dead server come due when their lease lapses
    // (twice the timeout + 5 s).
    for _ in 0..600 {
        delivered = receiver
            .received()
            .await
            .iter()
            .filter(|r| r["status"] == 204 && r["verified"] == true)
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        if delivered == ids {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        delivered, ids,
        "every event reached the receiver, signed, after the crash"
    );
    drop(server);
}

/// A POST with an `Idempotency-Key`: status and body, 0 when no answer came.
async fn post_keyed(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    idempotency_key: &str,
    body: &Value,
) -> (u16, Value) {
    let headers = [("Idempotency-Key", idempotency_key)];
    let body = crate::helpers::Body::Json(body.clone());
    match crate::helpers::send(
        client,
        base,
        reqwest::Method::POST,
        path,
        Some(key),
        &headers,
        body,
    )
    .await
    {
        Some(resp) => (resp.status.as_u16(), resp.body),
        None => (0, Value::Null),
    }
}

/// Cancels and refunds of amounts in flight when the server dies: after a
/// restart the recovery worker pays every refund left pending, and every
/// request retried with its Idempotency-Key answers what was done: each
/// refund paid back once, each order cancelled once, its units back once.
#[tokio::test]
async fn a_server_killed_mid_cancels_and_refunds_pays_each_back_exactly_once() {
    const ORDERS: usize = 120;
    let db = TestDatabase::create().await;
    let mut server = Server::start(&db, free_port()).await;
    let client = reqwest::Client::new();
    let key = merchant_with_stock(&client, &server.base, &["TEE"], 1_000).await;
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let body = json!({"customer": {"email": format!("buyer{i}@example.com")},
                          "items": [{"sku": "TEE", "quantity": 2}], "payment_method": "pm_card_ok"});
        let (status, order) = post_to(&client, &server.base, "/v1/checkouts", &key, &body).await;
        assert_eq!(status, 201, "{order}");
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    // Every third order cancelled; the others refunded 400 at a time, three
    // times (1,200 asked of 1,000 paid: one of the three must be refused).
    let mut requests: Vec<(String, String, Value)> = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        if i % 3 == 0 {
            requests.push((
                format!("/v1/orders/{order}/cancel"),
                format!("cancel-{i}"),
                json!({"reason": "changed their mind"}),
            ));
        } else {
            for n in 0..3 {
                requests.push((
                    format!("/v1/orders/{order}/refunds"),
                    format!("refund-{i}-{n}"),
                    json!({"amount": {"amount": 400, "currency": "EUR"}, "reason": "goodwill"}),
                ));
            }
        }
    }
    let base = server.base.clone();
    let answers = AtomicUsize::new(0);
    let storm = join_all(requests.iter().map(|(path, idem, body)| {
        let (client, base, key, answers) = (&client, &base, &key, &answers);
        async move {
            let answer = post_keyed(client, base, path, key, idem, body).await;
            answers.fetch_add(1, Ordering::SeqCst);
            answer
        }
    }));
    let kill = async {
        for _ in 0..2_000 {
            if answers.load(Ordering::SeqCst) >= 40 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.kill();
    };
    let (results, ()) = tokio::join!(storm, kill);
    let answered = results.iter().filter(|(status, _)| *status != 0).count();
    assert!(
        answered < requests.len(),
        "the kill landed mid-storm ({answered} of {} answered)",
        requests.len()
    );
    let owner = sqlx::PgPool::connect(&db.owner_url).await.unwrap();
    let pending = count(&owner, "order_refunds where status = 'pending'").await;
    eprintln!("killed with {answered} answered, {pending} refunds pending");

    let restarted = Server::start(&db, free_port()).await;
    assert_eq!(
        wait_until_zero(&owner, "order_refunds where status = 'pending'", 60).await,
        0,
        "the recovery worker paid every refund left pending"
    );
    // Every request again, with its key: keys the dead server held count as
    // in flight until they are abandoned (a minute), then run and answer.
    let retried = join_all(requests.iter().map(|(path, idem, body)| {
        let (client, base, key) = (&client, &restarted.base, &key);
        async move {
            for _ in 0..100 {
                let (status, answer) = post_keyed(client, base, path, key, idem, body).await;
                if status == 409
                    && answer["type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("/idempotency-key-in-flight"))
                {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                return (status, answer);
            }
            panic!("{idem} stayed in flight");
        }
    }))
    .await;
    for ((path, idem, _), (status, answer)) in requests.iter().zip(&retried) {
        if path.ends_with("/cancel") {
            assert_eq!(*status, 200, "{idem}: {answer}");
            assert_eq!(answer["status"], "cancelled", "{idem}");
        } else {
            assert!(matches!(status, 201 | 422), "{idem}: {status} {answer}");
        }
    }

    let violations = crate::orders::refund_violations(&owner).await;
    assert!(violations.is_empty(), "{violations:#?}");
    let scalar = |sql: &'static str| {
        let owner = owner.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&owner)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    let cancels = ORDERS.div_ceil(3) as i64;
    assert_eq!(
        scalar("select count(*) from orders where status = 'cancelled'").await,
        cancels
    );
    assert_eq!(
        scalar("select count(*) from events where type = 'order.cancelled'").await,
        cancels,
        "one order.cancelled per cancelled order"
    );
    assert_eq!(
        scalar(
            "select count(*) from orders o where o.status = 'cancelled' and 1 <> (
                 select count(*) from order_refunds r where r.merchant_id = o.merchant_id
                   and r.order_id = o.id and r.status = 'succeeded' and r.amount = o.total_amount)"
        )
        .await,
        0,
        "each cancelled order refunded in full, once"
    );
    assert_eq!(
        scalar("select count(*) from orders where status = 'confirmed' and id in (select order_id from order_refunds) and 800 <> (select sum(amount) from order_refunds r where r.order_id = orders.id and r.status = 'succeeded')").await,
        0,
        "two of each order's three refunds of 400 were paid, the third refused"
    );
    assert_eq!(
        scalar("select count(*) from order_refunds where status = 'succeeded'").await,
        scalar("select count(*) from payment_refunds").await,
        "the provider paid each refund once"
    );
    assert_eq!(
        scalar("select count(*) from events where type = 'order.refunded'").await,
        scalar("select count(*) from order_refunds where status = 'succeeded'").await,
        "one order.refunded per refund paid"
    );
    let (on_hand, reserved): (i64, i64) =
        sqlx::query_as("select on_hand, reserved from stock_levels where sku = 'TEE'")
            .fetch_one(&owner)
            .await
            .unwrap();
    let kept = 2 * (ORDERS as i64 - cancels);
    assert_eq!(
        (on_hand, reserved),
        (1_000 - kept, 0),
        "each cancelled order's units back once"
    );
}

/// Returns in flight when the server dies: after a restart every return's
/// refund is paid once, every retry with its key answers the same return,
/// and no order takes back more units than it shipped, nor restocks twice.
#[tokio::test]
async fn a_server_killed_mid_returns_takes_each_back_and_refunds_it_once() {
    const ORDERS: usize = 60;
    let db = TestDatabase::create().await;
    let mut server = Server::start(&db, free_port()).await;
    let client = reqwest::Client::new();
    let key = merchant_with_stock(&client, &server.base, &["TEE"], 1_000).await;
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let body = json!({"customer": {"email": format!("buyer{i}@example.com")},
                          "items": [{"sku": "TEE", "quantity": 2}], "payment_method": "pm_card_ok"});
        let (status, order) = post_to(&client, &server.base, "/v1/checkouts", &key, &body).await;
        assert_eq!(status, 201, "{order}");
        let id = order["id"].as_str().unwrap().to_owned();
        let ship = json!({"lines": [{"sku": "TEE", "quantity": 2}]});
        let path = format!("/v1/orders/{id}/fulfillments");
        let (status, shipped) = post_to(&client, &server.base, &path, &key, &ship).await;
        assert_eq!(status, 201, "{shipped}");
        orders.push(id);
    }
    // Three returns of one unit per order of two shipped: one must be refused.
    let mut requests: Vec<(String, String, Value)> = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        for n in 0..3 {
            requests.push((
                format!("/v1/orders/{order}/returns"),
                format!("return-{i}-{n}"),
                json!({"lines": [{"sku": "TEE", "quantity": 1}], "restock": true}),
            ));
        }
    }
    let base = server.base.clone();
    let answers = AtomicUsize::new(0);
    let storm = join_all(requests.iter().map(|(path, idem, body)| {
        let (client, base, key, answers) = (&client, &base, &key, &answers);
        async move {
            let answer = post_keyed(client, base, path, key, idem, body).await;
            answers.fetch_add(1, Ordering::SeqCst);
            answer
        }
    }));
    let kill = async {
        for _ in 0..2_000 {
            if answers.load(Ordering::SeqCst) >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.kill();
    };
    let (results, ()) = tokio::join!(storm, kill);
    let answered = results.iter().filter(|(status, _)| *status != 0).count();
    assert!(
        answered < requests.len(),
        "the kill landed mid-storm ({answered} of {} answered)",
        requests.len()
    );
    let owner = sqlx::PgPool::connect(&db.owner_url).await.unwrap();
    let pending = count(&owner, "order_refunds where status = 'pending'").await;
    eprintln!("killed with {answered} answered, {pending} refunds pending");

    let restarted = Server::start(&db, free_port()).await;
    assert_eq!(
        wait_until_zero(&owner, "order_refunds where status = 'pending'", 60).await,
        0,
        "the recovery worker paid every refund left pending"
    );
    let retried = join_all(requests.iter().map(|(path, idem, body)| {
        let (client, base, key) = (&client, &restarted.base, &key);
        async move {
            for _ in 0..100 {
                let (status, answer) = post_keyed(client, base, path, key, idem, body).await;
                let in_flight = answer["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/idempotency-key-in-flight"));
                if status == 409 && in_flight {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                return (status, answer);
            }
            panic!("{idem} stayed in flight");
        }
    }))
    .await;
    let taken = retried.iter().filter(|(status, _)| *status == 201).count();
    for (status, answer) in &retried {
        assert!(matches!(status, 201 | 422), "{status} {answer}");
    }
    assert_eq!(taken, 2 * ORDERS, "two returns of each order answer 201");
    let violations = crate::orders::refund_violations(&owner).await;
    assert!(violations.is_empty(), "{violations:#?}");
    let scalar = |sql: &'static str| {
        let owner = owner.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&owner)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    assert_eq!(
        scalar("select count(*) from order_returns").await,
        2 * ORDERS as i64,
        "one return per unit shipped"
    );
    assert_eq!(
        scalar(
            "select count(*) from order_returns r where not exists (
                 select 1 from order_refunds f where f.merchant_id = r.merchant_id
                   and f.id = r.refund_id and f.status = 'succeeded' and f.amount = 500)"
        )
        .await,
        0,
        "each return's refund paid: what one unit cost"
    );
    assert_eq!(
        scalar("select count(*) from order_refunds where status = 'succeeded'").await,
        scalar("select count(*) from payment_refunds").await,
        "the provider paid each refund once"
    );
    assert_eq!(
        scalar("select count(*) from events where type = 'order.returned'").await,
        2 * ORDERS as i64
    );
    let on_hand = scalar("select on_hand from stock_levels where sku = 'TEE'").await;
    assert_eq!(on_hand, 1_000, "every unit back on hand once");
}

/// Issue 37, item 5: no change without its record, and no record without
/// its change. A storm of audited writes (products with their variants,
/// stock set), the server killed mid-storm with SIGKILL; then every row
/// those writes made has its insert record, and every insert record names a
/// row that exists.
#[tokio::test]
async fn a_server_killed_mid_request_leaves_no_change_without_its_audit_record() {
    let db = TestDatabase::create().await;
    let port = free_port();
    let mut server = Server::start(&db, port).await;
    let client = reqwest::Client::new();
    let (_, merchant) = post_to(
        &client,
        &server.base,
        "/v1/merchants",
        ADMIN_TOKEN,
        &json!({"name": "Acme", "slug": "acme"}),
    )
    .await;
    let key = merchant["api_key"].as_str().expect("merchant").to_owned();
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let progress = done.clone();
    let base = server.base.clone();
    let writes = (0..3000).map(move |i| {
        let (client, base, key, done) = (client.clone(), base.clone(), key.clone(), done.clone());
        async move {
            let sku = format!("SKU-{i}");
            let product = json!({"name": format!("Product {i}"), "variants": [{"sku": sku, "price": {"amount": 100 + i, "currency": "EUR"}}]});
            let made = client
                .post(format!("{base}/v1/products"))
                .bearer_auth(&key)
                .json(&product)
                .send()
                .await;
            if made.is_ok_and(|r| r.status() == 201) {
                let _ = client
                    .put(format!("{base}/v1/inventory/{sku}"))
                    .bearer_auth(&key)
                    .json(&json!({"on_hand": i}))
                    .send()
                    .await;
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
    });
    // 40 at a time: the storm lasts, and the kill finds writes in flight.
    let storm = tokio::spawn(
        futures_util::stream::iter(writes)
            .buffer_unordered(40)
            .collect::<Vec<()>>(),
    );
    while progress.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let _ = storm.await;

    let owner = sqlx::PgPool::connect(&db.owner_url).await.unwrap();
    let products = count(&owner, "products").await;
    assert!(
        products >= 30,
        "only {products} products were made before the kill"
    );
    assert!(
        products < 3000,
        "the kill came after every write ({products})"
    );
    for (table, key) in [
        ("products", "id::text"),
        ("variants", "sku"),
        ("stock", "sku"),
    ] {
        let unrecorded = count(
            &owner,
            &format!(
                "{table} t where not exists (select 1 from audit_log a where a.merchant_id = t.merchant_id
                 and a.target_type = '{table}' and a.target_id = t.{key} and a.operation = 'insert')"
            ),
        )
        .await;
        assert_eq!(unrecorded, 0, "{table} rows without their audit record");
        let phantom = count(
            &owner,
            &format!(
                "audit_log a where a.target_type = '{table}' and a.operation = 'insert'
                 and not exists (select 1 from {table} t where t.merchant_id = a.merchant_id and t.{key} = a.target_id)"
            ),
        )
        .await;
        assert_eq!(
            phantom, 0,
            "{table} records of changes that never committed"
        );
    }
}
