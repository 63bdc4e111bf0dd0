//! Hostile cases: webhooks (see `hostile/mod.rs`). A merchant chooses where
//! its webhooks go and reads what came back; a receiver chooses what it
//! answers. Neither may make the shared process a tool against itself or
//! against the machine's network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::{Merchant, TestApp, TestDatabase};

/// Receiver URLs that name an internal address: loopback and metadata, then
/// the forms once accepted (201) without the flag: IPv4-compatible, NAT64 and
/// 6to4 carrying loopback or metadata, Teredo, site-local, the benchmarking,
/// IETF, reserved and documentation ranges.
const INTERNAL_URLS: &[&str] = &[
    "http://127.0.0.1:9/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[64:ff9b::127.0.0.1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
    "http://[2002:7f00:1::]/hook",
    "http://[2002:a9fe:a9fe::1]/latest/meta-data",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
    "http://[fec0::1]/hook",
    "http://[3fff::1]/hook",
    "http://198.18.0.1/hook",
    "http://192.0.0.8/hook",
    "http://240.0.0.1/hook",
    "http://203.0.113.9/hook",
];

async fn app_with(allow_internal: bool, timeout: Duration) -> TestApp {
    let db = TestDatabase::create().await;
    let mut config = db.config();
    config.webhooks_allow_internal = allow_internal;
    config.webhook_schedule = vec![Duration::ZERO];
    config.webhook_timeout = timeout;
    TestApp::spawn_with(db, config).await
}

/// POSTs each of `INTERNAL_URLS` as a receiver and expects 422 naming `url`.
async fn each_internal_url_is_refused(client: &reqwest::Client, base: &str, key: &str) {
    for url in INTERNAL_URLS {
        let resp = client
            .post(format!("{base}/v1/webhook-endpoints"))
            .bearer_auth(key)
            .json(&json!({"url": url, "event_types": ["order.created"]}))
            .send()
            .await
            .expect("the app answers");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("problem+json");
        assert_eq!(status, 422, "{url}: {body}");
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert_eq!(fields, ["url"], "{url}: {body}");
    }
}

/// An endpoint for `order.created` at `url` (the API must accept it), and an
/// order that makes one delivery to it.
async fn deliver_once_to(app: &TestApp, url: &str) -> (Merchant, String) {
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let resp = app
        .post(
            "/v1/webhook-endpoints",
            &m.key,
            json!({"url": url, "event_types": ["order.created"]}),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let id = resp.body["id"].as_str().expect("id").to_owned();
    let order = app
        .post(
            "/v1/checkouts",
            &m.key,
            json!({"customer": {"email": "a@example.com"}, "items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"}),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    (m, id)
}

/// The endpoint's first delivery attempt, once recorded.
async fn first_attempt(app: &TestApp, m: &Merchant, endpoint: &str, within: Duration) -> Value {
    let started = Instant::now();
    let path = format!("/v1/webhook-endpoints/{endpoint}/deliveries");
    while started.elapsed() < within {
        let attempt = app.get(&path, &m.key).await.body["data"][0]["attempts"][0].clone();
        if !attempt.is_null() {
            return attempt;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no attempt was recorded within {within:?}");
}

/// A receiver on loopback answering 200 with `body`, then (when `endless`)
/// writing more to every connection for as long as it is read; counts the
/// bytes it wrote.
async fn loopback_receiver(body: &'static str, endless: bool) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = conn.read(&mut request).await;
                let head = if endless {
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_owned()
                } else {
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                };
                if conn.write_all(head.as_bytes()).await.is_err()
                    || conn.write_all(body.as_bytes()).await.is_err()
                    || !endless
                {
                    return;
                }
                // Throttled (25 MB/s) so that a client that does read it all
                // hurts the test process, not the machine.
                let chunk = vec![b'x'; 256 * 1024];
                while conn.write_all(&chunk).await.is_ok() {
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    (url, written)
}

/// Resident memory of this process (the app runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident pages");
    pages * 4096
}

#[tokio::test]
async fn a_receiver_answering_an_endless_body_costs_a_kib_and_no_time() {
    // A timeout well above what reading the kept bytes takes: the delivery
    // must end because it stopped reading, not because time ran out.
    let app = app_with(true, Duration::from_secs(6)).await;
    let (url, written) = loopback_receiver("first", true).await;
    let before = rss();
    let (m, endpoint) = deliver_once_to(&app, &url).await;
    let attempt = first_attempt(&app, &m, &endpoint, Duration::from_secs(20)).await;
    assert_eq!(attempt["status_code"], 200, "{attempt}");
    let latency = attempt["latency_ms"].as_i64().expect("latency");
    assert!(latency < 2_000, "the body held the delivery {latency} ms");
    // The closed connection stops the receiver; what it wrote is what the
    // sockets' buffers took, not what it would have sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = written.load(Ordering::Relaxed);
    assert!(sent < 16 << 20, "the receiver wrote {sent} bytes");
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "the process grew by {grown} bytes");
}

#[tokio::test]
async fn the_embedded_database_does_not_open_internal_addresses() {
    // The README's default run: `mercato serve` on its embedded database.
    let dir = std::env::temp_dir().join(format!("mercato-embedded-{}", uuid::Uuid::now_v7()));
    let mut config = mercato::Config::new("127.0.0.1:0".parse().expect("address"));
    config.data_dir = dir.clone();
    config.analytics_dir = Some(dir.join("analytics"));
    let app = mercato::App::build(config)
        .await
        .expect("the embedded app starts");
    let base = format!("http://{}", app.addr);
    let key = app.demo_api_key.clone().expect("the demo merchant's key");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve(async {
        let _ = stopped.await;
    }));
    each_internal_url_is_refused(&reqwest::Client::new(), &base, &key).await;
    // Stopped, so that the private cluster shuts down with the app.
    let _ = stop.send(());
    let _ = served.await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn internal_addresses_in_every_form_are_refused_without_the_flag() {
    let app = app_with(false, Duration::from_secs(2)).await;
    let m = app.create_merchant("acme").await;
    each_internal_url_is_refused(&reqwest::Client::new(), &app.base, &m.key).await;
    assert_eq!(app.count("webhook_endpoints").await, 0);
}

#[tokio::test]
async fn with_the_flag_an_internal_receivers_answer_is_never_shown() {
    let app = app_with(true, Duration::from_secs(2)).await;
    let (url, _) = loopback_receiver("secret of a service on loopback", false).await;
    let (m, endpoint) = deliver_once_to(&app, &url).await;
    let attempt = first_attempt(&app, &m, &endpoint, Duration::from_secs(20)).await;
    assert_eq!(attempt["status_code"], 200, "{attempt}");
    assert_eq!(attempt["response"], Value::Null, "{attempt}");
    let stored: Option<String> =
        sqlx::query_scalar("select response_excerpt from webhook_attempts")
            .fetch_one(&app.owner)
            .await
            .expect("one attempt");
    assert_eq!(stored, None, "nothing of it is stored either");
}

#[tokio::test]
async fn deliveries_ignore_a_proxy_from_the_environment() {
    // A proxy on loopback, named the way an operator's shell would. Each test
    // is its own process under nextest; loopback stays direct for the others.
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxied = Arc::new(AtomicU64::new(0));
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        std::env::set_var(
            name,
            format!("http://{}", proxy.local_addr().expect("addr")),
        );
    }
    let counter = proxied.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = proxy.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut request = vec![0u8; 64 * 1024];
            let _ = conn.read(&mut request).await;
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied";
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let app = app_with(false, Duration::from_secs(2)).await;
    // A public address: the API and the delivery accept it, and whatever
    // happens to the connection, it is not made through the proxy.
    let (m, endpoint) = deliver_once_to(&app, "http://93.184.216.34/hook").await;
    let attempt = first_attempt(&app, &m, &endpoint, Duration::from_secs(20)).await;
    assert_eq!(proxied.load(Ordering::Relaxed), 0, "{attempt}");
}
