//! Events and webhooks through HTTP, delivered to a real receiver that verifies
//! every signature with the `standardwebhooks` package from PyPI (an
//! implementation independent of Mercato's; `scripts/test` installs it).

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{Merchant, TestApp, TestDatabase};

/// The Python webhook receiver (`tests/peers/webhook_receiver.py`).
pub struct Receiver {
    _child: tokio::process::Child,
    base: String,
    client: reqwest::Client,
}

pub fn python() -> String {
    if let Ok(python) = std::env::var("MERCATO_TEST_PYTHON") {
        return python;
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the webhook tests need Python with `standardwebhooks`: run scripts/test \
         (it sets MERCATO_TEST_PYTHON to a venv it makes)"
    );
    "python3".into()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/webhook_receiver.py"
        );
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the receiver starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("the receiver prints its port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .expect("PORT line")
            .to_owned();
        Receiver {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    pub fn hook(&self) -> String {
        format!("{}/hook", self.base)
    }

    pub async fn control(&self, path: &str, body: Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("receiver control");
        assert!(resp.status().is_success());
    }

    pub async fn received(&self) -> Vec<Value> {
        self.client
            .get(format!("{}/_received", self.base))
            .send()
            .await
            .expect("receiver")
            .json()
            .await
            .expect("json")
    }

    /// Waits until `n` requests were answered with a success.
    async fn wait_for_successes(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let got = self.received().await;
            if got.iter().filter(|r| r["status"] == 204).count() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} deliveries never arrived: {:?}", self.received().await);
    }
}

/// An app whose webhooks retry fast and may reach this machine's receivers.
async fn app_with(schedule_ms: &[u64], disable_after: i32, allow_internal: bool) -> TestApp {
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.webhooks_allow_internal = allow_internal;
    config.webhook_schedule = schedule_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    config.webhook_disable_after = disable_after;
    config.webhook_timeout = Duration::from_secs(2);
    TestApp::spawn_with(db, config).await
}

async fn endpoint(app: &TestApp, m: &Merchant, url: &str, types: &[&str]) -> Value {
    let resp = app
        .post(
            "/v1/webhook-endpoints",
            &m.key,
            json!({"url": url, "event_types": types, "description": "test receiver"}),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    resp.body
}

async fn buy(app: &TestApp, m: &Merchant, email: &str, method: &str) -> crate::helpers::Response {
    app.post(
        "/v1/checkouts",
        &m.key,
        json!({"customer": {"email": email}, "items": [{"sku": "TEE", "quantity": 1}], "payment_method": method}),
    )
    .await
}

/// The endpoint's newest delivery once it is in `status` (the receiver may
/// have answered before the attempt is recorded).
async fn newest_delivery_in(app: &TestApp, m: &Merchant, endpoint: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let d = app
            .get(
                &format!("/v1/webhook-endpoints/{endpoint}/deliveries"),
                &m.key,
            )
            .await;
        last = d.body["data"][0].clone();
        if last["status"] == status {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the newest delivery never became {status}: {last}");
}

fn types(events: &Value) -> Vec<String> {
    events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn events_are_written_with_the_change_they_describe() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let order = buy(&app, &m, "a@example.com", "pm_card_ok").await;
    assert_eq!(order.status, 201);
    let declined = buy(&app, &m, "b@example.com", "pm_card_declined").await;
    assert_eq!(declined.status, 402);
    app.request(
        Method::PUT,
        "/v1/pricing/rules",
        Some(&m.key),
        Some(json!({"rules": []})),
    )
    .await;
    let all = app.get("/v1/events", &m.key).await;
    assert_eq!(
        types(&all.body),
        [
            "product.created",
            "order.created",
            "order.confirmed",
            "order.created",
            "order.failed",
            "pricing.rules_changed"
        ],
        "{}",
        all.body
    );
    let confirmed = app.get("/v1/events?type=order.confirmed", &m.key).await;
    assert_eq!(types(&confirmed.body), ["order.confirmed"]);
    let event = &confirmed.body["data"][0];
    assert_eq!(event["data"]["order_id"], order.body["id"]);
    assert_eq!(event["version"], 1);
    let id = event["id"].as_str().unwrap();
    let one = app.get(&format!("/v1/events/{id}"), &m.key).await;
    assert_eq!(one.body["type"], "order.confirmed");
    let page = app.get("/v1/events?limit=2", &m.key).await;
    assert_eq!(page.body["data"].as_array().unwrap().len(), 2);
    let next = page.body["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/v1/events?limit=10&cursor={next}"), &m.key)
        .await;
    assert_eq!(rest.body["data"].as_array().unwrap().len(), 4);
    let bad = app.get("/v1/events?type=order.exploded", &m.key).await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["type"]);
    // No event without its change: a refused checkout writes none.
    let before = app.count("events").await;
    let refused = app
        .post(
            "/v1/checkouts",
            &m.key,
            json!({"customer": {"email": "c@example.com"}, "items": [{"sku": "TEE", "quantity": 99}], "payment_method": "pm_card_ok"}),
        )
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(app.count("events").await, before);
    let other = app.create_merchant("other").await;
    app.get(&format!("/v1/events/{id}"), &other.key)
        .await
        .assert_problem(404, "not-found");
    assert_eq!(
        app.get("/v1/events", &other.key).await.body["data"],
        json!([])
    );
}

#[tokio::test]
async fn deliveries_are_signed_per_standard_webhooks_and_verify_during_a_rotation() {
    let app = app_with(&[0, 100, 100], 100, true).await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let receiver = Receiver::start().await;
    let created = endpoint(
        &app,
        &m,
        &receiver.hook(),
        &["order.created", "order.confirmed"],
    )
    .await;
    let old_secret = created["secret"].as_str().unwrap().to_owned();
    assert!(old_secret.starts_with("whsec_"));
    receiver
        .control("/_secrets", json!({"secrets": [old_secret]}))
        .await;

    assert_eq!(
        buy(&app, &m, "a@example.com", "pm_card_ok").await.status,
        201
    );
    let got = receiver.wait_for_successes(2).await;
    assert!(got.iter().all(|r| r["verified"] == true), "{got:?}");
    // Deliveries run concurrently: no order between events is promised.
    let mut kinds: Vec<&str> = got.iter().map(|r| r["type"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["order.confirmed", "order.created"]);
    // The secret is shown once; never when listed.
    let id = created["id"].as_str().unwrap();
    let shown = app
        .get(&format!("/v1/webhook-endpoints/{id}"), &m.key)
        .await;
    assert!(shown.body.get("secret").is_none(), "{}", shown.body);

    // Rotation: for a while each delivery carries both signatures, so a
    // receiver still on the old secret and one on the new both verify.
    let rotated = app
        .post(
            &format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            &m.key,
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert_eq!(
        buy(&app, &m, "b@example.com", "pm_card_ok").await.status,
        201
    );
    let got = receiver.wait_for_successes(4).await;
    assert!(
        got[2..]
            .iter()
            .all(|r| r["verified"] == true && r["signatures"] == 2),
        "{got:?}"
    );
    receiver
        .control("/_secrets", json!({"secrets": [new_secret]}))
        .await;
    assert_eq!(
        buy(&app, &m, "c@example.com", "pm_card_ok").await.status,
        201
    );
    let got = receiver.wait_for_successes(6).await;
    assert!(got[4..].iter().all(|r| r["verified"] == true), "{got:?}");
    // A receiver with a secret that is neither refuses the delivery.
    receiver
        .control(
            "/_secrets",
            json!({"secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}),
        )
        .await;
    assert_eq!(
        buy(&app, &m, "d@example.com", "pm_card_ok").await.status,
        201
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received().await;
    assert!(got[6..].iter().all(|r| r["verified"] == false), "{got:?}");
}

#[tokio::test]
async fn failures_are_retried_with_the_same_id_then_dead_lettered_and_recovered() {
    let app = app_with(&[0, 100, 100, 100], 100, true).await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let receiver = Receiver::start().await;
    let created = endpoint(&app, &m, &receiver.hook(), &["order.confirmed"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    receiver
        .control("/_secrets", json!({"secrets": [created["secret"]]}))
        .await;

    // Two 500s, then accepted: three attempts, one webhook-id.
    receiver
        .control("/_mode", json!({"fail_next": 2, "fail_status": 500}))
        .await;
    assert_eq!(
        buy(&app, &m, "a@example.com", "pm_card_ok").await.status,
        201
    );
    let got = receiver.wait_for_successes(1).await;
    let statuses: Vec<i64> = got.iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [500, 500, 204]);
    assert!(got.iter().all(|r| r["id"] == got[0]["id"]), "{got:?}");
    let first = &newest_delivery_in(&app, &m, &id, "succeeded").await;
    let codes: Vec<i64> = first["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 204]);
    // The receiver is on loopback: what an internal address answers is never
    // kept (tests/api/hostile/webhooks.rs).
    assert_eq!(first["attempts"][0]["response"], Value::Null);

    // Down for longer than the schedule: a dead letter, sent again by recover.
    let since = chrono::Utc::now().to_rfc3339();
    receiver
        .control("/_mode", json!({"fail_next": 1000, "fail_status": 503}))
        .await;
    assert_eq!(
        buy(&app, &m, "b@example.com", "pm_card_ok").await.status,
        201
    );
    let dead = newest_delivery_in(&app, &m, &id, "dead").await;
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 4, "{dead}");
    receiver.control("/_mode", json!({"fail_next": 0})).await;
    let recovered = app
        .post(
            &format!("/v1/webhook-endpoints/{id}/recover"),
            &m.key,
            json!({"since": since}),
        )
        .await;
    assert_eq!(recovered.body["recovered"], 1, "{}", recovered.body);
    let got = receiver.wait_for_successes(2).await;
    let last = got.last().unwrap();
    assert_eq!(
        last["id"], got[3]["id"],
        "a replay keeps the event's webhook-id"
    );
    let bad = app
        .post(
            &format!("/v1/webhook-endpoints/{id}/recover"),
            &m.key,
            json!({"since": "yesterday"}),
        )
        .await;
    bad.assert_problem(422, "validation-error");
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_disabled_and_the_merchant_told() {
    let app = app_with(&[0, 50, 50, 50, 50, 50], 3, true).await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let receiver = Receiver::start().await;
    let created = endpoint(&app, &m, &receiver.hook(), &["order.created"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    receiver
        .control("/_secrets", json!({"secrets": [created["secret"]]}))
        .await;
    receiver
        .control("/_mode", json!({"fail_next": 1000, "fail_status": 500}))
        .await;
    assert_eq!(
        buy(&app, &m, "a@example.com", "pm_card_ok").await.status,
        201
    );
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = app
            .get(&format!("/v1/webhook-endpoints/{id}"), &m.key)
            .await
            .body;
        if shown["status"] == "disabled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["status"], "disabled", "{shown}");
    assert!(shown["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("3 failed attempts"));
    let told = app
        .get("/v1/events?type=webhook_endpoint.disabled", &m.key)
        .await;
    assert_eq!(told.body["data"][0]["data"]["endpoint_id"], id.as_str());
    // Disabled: nothing more is sent. Enabled again: deliveries resume.
    let attempts = receiver.received().await.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().await.len(), attempts);
    receiver.control("/_mode", json!({"fail_next": 0})).await;
    let enabled = app
        .request(
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{id}"),
            Some(&m.key),
            Some(json!({"status": "enabled"})),
        )
        .await;
    assert_eq!(enabled.body["status"], "enabled", "{}", enabled.body);
    receiver.wait_for_successes(1).await;
}

#[tokio::test]
async fn bad_endpoints_and_internal_receivers_are_refused() {
    let app = app_with(&[0], 100, false).await;
    let m = app.create_merchant("acme").await;
    let post = |body: Value| app.post("/v1/webhook-endpoints", &m.key, body);
    for (body, field) in [
        (
            json!({"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"]}),
            "url",
        ),
        (
            json!({"url": "http://localhost/hook", "event_types": ["order.created"]}),
            "url",
        ),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data", "event_types": ["order.created"]}),
            "url",
        ),
        (
            json!({"url": "http://[::1]/hook", "event_types": ["order.created"]}),
            "url",
        ),
        (
            json!({"url": "ftp://example.com/hook", "event_types": ["order.created"]}),
            "url",
        ),
        (
            json!({"url": "not a url", "event_types": ["order.created"]}),
            "url",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "event_types": []}),
            "event_types",
        ),
        (
            json!({"url": "https://93.184.216.34/hook", "event_types": ["order.exploded"]}),
            "event_types[0]",
        ),
    ] {
        let resp = post(body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "{body}: {}", resp.body);
    }
    assert_eq!(app.count("webhook_endpoints").await, 0);

    // Another merchant's endpoint is not found, whatever is asked of it.
    let dev = app_with(&[0], 100, true).await;
    let a = dev.create_merchant("alpha").await;
    let b = dev.create_merchant("bravo").await;
    let created = endpoint(&dev, &a, "http://127.0.0.1:9/hook", &["order.created"]).await;
    let id = created["id"].as_str().unwrap();
    for (method, path, body) in [
        (Method::GET, format!("/v1/webhook-endpoints/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/webhook-endpoints/{id}"),
            Some(json!({"status": "disabled"})),
        ),
        (
            Method::GET,
            format!("/v1/webhook-endpoints/{id}/deliveries"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/v1/webhook-endpoints/{id}"), None),
    ] {
        dev.request(method, &path, Some(&b.key), body)
            .await
            .assert_problem(404, "not-found");
    }
    assert_eq!(
        dev.get("/v1/webhook-endpoints", &b.key).await.body["data"],
        json!([])
    );
    let deleted = dev
        .request(
            Method::DELETE,
            &format!("/v1/webhook-endpoints/{id}"),
            Some(&a.key),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
}

#[tokio::test]
async fn a_slow_receiver_does_not_delay_another_merchants_deliveries() {
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.webhooks_allow_internal = true;
    config.webhook_timeout = Duration::from_secs(10);
    let app = TestApp::spawn_with(db, config).await;
    let (slow, fast) = (Receiver::start().await, Receiver::start().await);
    let a = app.create_merchant("slow-shop").await;
    let b = app.create_merchant("fast-shop").await;
    for (m, r) in [(&a, &slow), (&b, &fast)] {
        let created = endpoint(&app, m, &r.hook(), &["pricing.rules_changed"]).await;
        r.control("/_secrets", json!({"secrets": [created["secret"]]}))
            .await;
    }
    // A's receiver takes 5 s per request, with 1,000 events queued for it.
    slow.control("/_mode", json!({"delay": 5.0})).await;
    let emit = |m: &Merchant, n: usize| {
        let app = &app;
        let id = m.id;
        async move {
            let mut tx = mercato::db::TenantTx::begin(&app.app_pool, id)
                .await
                .unwrap();
            for i in 0..n {
                mercato::events::emit(
                    &mut tx,
                    mercato::events::EventType::PricingRulesChanged,
                    json!({"revision": i}),
                )
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }
    };
    emit(&a, 1_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let enqueued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    emit(&b, 100).await;
    let got = fast.wait_for_successes(100).await;
    let mut latencies: Vec<f64> = got
        .iter()
        .map(|r| r["at"].as_f64().unwrap() - enqueued)
        .collect();
    latencies.sort_by(f64::total_cmp);
    // Not a timed assertion (the machine may be busy): B finished while A's
    // queue had barely started, so B was never queued behind it.
    println!("B's enqueue→delivered p99: {:.3} s", latencies[98]);
    let a_done = slow.received().await.len();
    assert!(
        a_done < 100,
        "B waited for A: {a_done} of A's deliveries went first"
    );
    // A's receiver never had more than its bound in flight.
    let in_flight: i64 = sqlx::query_scalar(
        "select count(*) from webhook_deliveries
         where merchant_id = $1 and status = 'pending' and leased_until > now()",
    )
    .bind(a.id.0)
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert!(
        in_flight <= 8,
        "{in_flight} of A's deliveries in flight at once"
    );
}

#[tokio::test]
async fn stock_running_low_and_reservations_expiring_are_events_too() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let set = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": 5, "low_stock_threshold": 3})),
        )
        .await;
    assert_eq!(set.body["low_stock_threshold"], 3, "{}", set.body);
    let bad = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": 5, "low_stock_threshold": -1})),
        )
        .await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["low_stock_threshold"]);
    // 5 → 2 over three sales: one event when on hand reaches the threshold,
    // none again while it stays below. Sales reach the stock row when they are
    // folded into it (in batches, by the background worker here), so the event
    // comes then, with the units on hand after that fold.
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        assert_eq!(buy(&app, &m, email, "pm_card_ok").await.status, 201);
    }
    let mut folded = false;
    for _ in 0..100 {
        if app.count("stock_sales").await == 0 {
            folded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(folded, "the worker folds the sales into the stock row");
    let low = app.get("/v1/events?type=inventory.low_stock", &m.key).await;
    assert_eq!(
        low.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        low.body
    );
    let on_hand = low.body["data"][0]["data"]["on_hand"].as_i64().unwrap();
    assert!((2..=3).contains(&on_hand), "{}", low.body);
    assert_eq!(low.body["data"][0]["data"]["threshold"], 3);
    assert_eq!(
        app.get("/v1/inventory/TEE", &m.key).await.body["on_hand"],
        2,
        "three sold of five"
    );

    let held = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 1}], "ttl_seconds": 1}),
        )
        .await;
    assert_eq!(held.status, 201, "{}", held.body);
    let mut expired = Value::Null;
    for _ in 0..100 {
        expired = app
            .get("/v1/events?type=reservation.expired", &m.key)
            .await
            .body["data"]
            .clone();
        if expired.as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        expired[0]["data"]["reservation_id"], held.body["id"],
        "{expired}"
    );
}

#[tokio::test]
async fn events_are_published_to_nats_jetstream_once_per_id() {
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.nats_url = Some("nats://127.0.0.1:4222".into());
    let app = TestApp::spawn_with(db, config).await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let order = buy(&app, &m, "a@example.com", "pm_card_ok").await;
    assert_eq!(order.status, 201);
    let events = app.get("/v1/events?type=order.confirmed", &m.key).await;
    let event_id = events.body["data"][0]["id"].as_str().unwrap().to_owned();

    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS with JetStream at 127.0.0.1:4222 (.ci/run starts it)");
    let js = async_nats::jetstream::new(client);
    let subject = format!("mercato.{}.order.confirmed", m.id.0);
    let mut found = None;
    for _ in 0..100 {
        if let Ok(stream) = js.get_stream(mercato::events::bus::STREAM).await {
            if let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await {
                found = Some(message);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = found.expect("the event reached JetStream");
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["type"], "order.confirmed");
    assert_eq!(body["data"]["order_id"], order.body["id"]);
    let msg_id = message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.to_string());
    assert_eq!(msg_id.as_deref(), Some(event_id.as_str()));
    // A repeat of the same event (a publisher that died before marking it) is
    // dropped by the stream's de-duplication.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
    let ack = js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate);
    // Everything the outbox holds was published.
    assert_eq!(
        crate::helpers::wait_until_zero(&app.owner, "events where bus_pending", 10).await,
        0
    );
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused_at_the_source() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let mut tx = mercato::db::TenantTx::begin(&app.app_pool, m.id)
        .await
        .unwrap();
    let big = "x".repeat(mercato::events::MAX_PAYLOAD_BYTES);
    let refused = mercato::events::emit(
        &mut tx,
        mercato::events::EventType::PricingRulesChanged,
        json!({"blob": big}),
    )
    .await;
    assert!(refused.is_err(), "an oversized payload was accepted");
    let fits = mercato::events::emit(
        &mut tx,
        mercato::events::EventType::PricingRulesChanged,
        json!({"blob": "x".repeat(1_000)}),
    )
    .await;
    assert!(fits.is_ok());
    tx.commit().await.unwrap();
    assert_eq!(app.count("events").await, 1);
}
