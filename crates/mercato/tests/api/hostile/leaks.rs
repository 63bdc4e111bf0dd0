//! Hostile cases: the smaller leaks of issue 35 item 9 — a key spelled
//! another way, a link page another site frames or reads the referrer of,
//! marts any local user can read, mail sent in clear where TLS was asked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mercato::cells::Cells;
use mercato::mail::{OutgoingMail, Sender, Transport};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::TestApp;

#[tokio::test]
async fn an_api_key_authenticates_spelled_one_way_only() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("spelled").await;
    assert_eq!(app.get("/v1/products", &m.key).await.status, StatusCode::OK);
    let secret = m.key.rsplit('_').next().expect("secret");
    let id = m.id.0;
    for other in [
        format!("mk_{}_{secret}", id.hyphenated()),
        format!("mk_{}_{secret}", id.simple().to_string().to_uppercase()),
        format!("mk_{{{}}}_{secret}", id.simple()),
        format!("mk_urn:uuid:{}_{secret}", id.hyphenated()),
    ] {
        let r = app.get("/v1/products", &other).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{other} was let in");
    }
}

#[tokio::test]
async fn a_customers_link_page_cannot_be_framed_leak_its_token_or_run_other_script() {
    let app = TestApp::spawn().await;
    let url = format!(
        "{}/v1/adjustments/{}/choice?token=secret-token&choice=credit",
        app.base,
        Uuid::now_v7()
    );
    let page = app.client.get(&url).send().await.expect("the page answers");
    assert_eq!(page.status(), StatusCode::OK);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let policy = header("content-security-policy");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let nonce = policy
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a script nonce")
        .to_owned();
    let html = page.text().await.expect("html");
    assert!(
        html.contains(&format!("<script nonce=\"{nonce}\">")),
        "{html}"
    );
    // A second page gets another nonce.
    let again = app.client.get(&url).send().await.expect("again");
    let policy_again = again
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_ne!(policy, policy_again);
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the marts") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            walk(&path, out);
        }
        out.push(path);
    }
}

#[tokio::test]
async fn the_marts_are_readable_by_the_service_alone() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("private-marts").await;
    crate::analytics::trade(&app, &m).await;
    let summary = crate::analytics::export(&app).await;
    assert!(summary.events > 0, "{summary:?}");
    let root = &app.db.analytics_dir;
    let mut paths = vec![root.clone()];
    walk(root, &mut paths);
    assert!(paths.len() > 3, "{paths:?}");
    for path in paths {
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", path.display(), mode & 0o777);
    }
}

#[tokio::test]
async fn mail_that_must_go_over_tls_is_not_sent_in_clear() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("tls-mail").await;
    // A server that speaks plain SMTP only (offers no STARTTLS).
    let sink = crate::remediation::SmtpSink::start().await;
    let plain = sink.url.clone();
    let required = plain.replace("smtp://", "smtp+starttls://");
    let db = Cells::of_owners(app.owner.clone(), [])
        .merchant_db_for_job(m.id)
        .await
        .expect("routed");
    let queue = |key: &'static str| {
        let app = &app;
        let m = &m;
        async move {
            let mut tx = app.tenant_tx(m).await;
            mercato::mail::enqueue(
                &mut tx,
                &OutgoingMail {
                    key: key.into(),
                    from: None,
                    to: "ann@example.com".into(),
                    subject: "Your order".into(),
                    text: "the secret is in this text".into(),
                    html: "<p>the secret is in this text</p>".into(),
                },
            )
            .await
            .expect("queued");
            tx.commit().await.expect("commit");
        }
    };
    queue("over-tls").await;
    let tls_only = Sender::new(
        Transport::from_config(Some(&required), PathBuf::new(), "shop@example.com")
            .expect("a STARTTLS transport"),
    );
    let sent = tls_only.send_queued(&db, 10).await.expect("tried");
    assert_eq!(sent, 0, "sent without the TLS it required");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(sink.messages().is_empty(), "the sink got it in clear");
    // The same server, asked for plain SMTP, takes mail: the sink works.
    queue("in-clear").await;
    let clear = Sender::new(
        Transport::from_config(Some(&plain), PathBuf::new(), "shop@example.com")
            .expect("a plain transport"),
    );
    assert!(clear.send_queued(&db, 10).await.expect("sent") >= 1);
}

#[tokio::test]
async fn a_report_does_not_show_the_cells_transaction_counter() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("no-xid").await;
    crate::analytics::trade(&app, &m).await;
    crate::analytics::export(&app).await;
    let r = app.get("/v1/analytics/revenue", &m.key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let as_of = r.body["as_of"].as_array().expect("as_of").clone();
    assert!(!as_of.is_empty(), "{}", r.body);
    for cell in as_of {
        assert!(cell.get("position").is_none(), "{cell}");
        assert!(cell["exported_at"].is_string(), "{cell}");
    }
}

#[tokio::test]
async fn a_replayed_answer_never_hands_out_a_webhook_secret_again() {
    let db = crate::helpers::TestDatabase::create().await;
    let mut config = db.config();
    config.webhooks_allow_internal = true;
    let app = TestApp::spawn_with(db, config).await;
    let m = app.create_merchant("secret-replay").await;
    let body =
        serde_json::json!({"url": "http://127.0.0.1:9/hook", "event_types": ["order.confirmed"]});
    let created = app
        .post_idempotent(
            "/v1/webhook-endpoints",
            &m.key,
            "endpoint-1",
            crate::helpers::Body::Json(body.clone()),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(created.body["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    let id = created.body["id"].as_str().expect("id").to_owned();
    let rotated = app
        .post_idempotent(
            &format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            &m.key,
            "rotate-1",
            crate::helpers::Body::Empty,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert!(rotated.body["secret"].is_string(), "{}", rotated.body);
    // The retries answer as before, without the secret: neither the first
    // (rotated away since) nor the new one comes out of the store.
    for (path, key, body) in [
        (
            "/v1/webhook-endpoints".to_owned(),
            "endpoint-1",
            crate::helpers::Body::Json(body),
        ),
        (
            format!("/v1/webhook-endpoints/{id}/rotate-secret"),
            "rotate-1",
            crate::helpers::Body::Empty,
        ),
    ] {
        let replay = app.post_idempotent(&path, &m.key, key, body).await;
        assert_eq!(
            replay
                .headers
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true"),
            "{path}"
        );
        assert!(replay.body["secret"].is_null(), "{path}: {}", replay.body);
        assert_eq!(replay.body["id"], id.as_str());
    }
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from idempotency_keys where convert_from(response_body, 'UTF8') like '%whsec_%'",
    )
    .fetch_one(&app.owner)
    .await
    .expect("the store");
    assert_eq!(stored, 0, "a secret sits in the idempotency store");
}

#[tokio::test]
async fn the_platforms_figures_are_not_on_the_public_listener() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("metrics-apart").await;
    app.get("/v1/products", &m.key).await;
    let public = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("answers");
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let doc = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("doc");
    let doc: serde_json::Value = doc.json().await.expect("json");
    assert!(
        doc["paths"].get("/metrics").is_none(),
        "still documented on the API"
    );
    // The operator's listener has them.
    assert!(app.metrics().await.contains("http_requests_total"));
}

#[tokio::test]
async fn a_legacy_order_id_does_not_count_the_other_merchants_orders() {
    let app = TestApp::spawn().await;
    let watcher = app.create_merchant("watcher").await;
    let busy = app.create_merchant("busy").await;
    let order = |n: i64| {
        serde_json::json!({
            "customer": {"email": format!("c{n}@example.com"), "name": "C"},
            "total": {"amount": 100, "currency": "EUR"}
        })
    };
    let place = |key: String, n: i64| {
        let app = &app;
        async move {
            let r = app.post("/v1/legacy-orders", &key, order(n)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["id"].as_i64().expect("an integer id")
        }
    };
    let first = place(watcher.key.clone(), 0).await;
    for n in 0..50 {
        place(busy.key.clone(), n).await;
    }
    let second = place(watcher.key.clone(), 1).await;
    // Before migration 0022 the two were 51 apart, whatever the watcher did.
    assert_ne!(
        second - first,
        51,
        "the gap counts the busy merchant's orders"
    );
    let mut own = vec![first, second];
    for n in 2..12 {
        own.push(place(watcher.key.clone(), n).await);
    }
    let mut sorted = own.clone();
    sorted.sort_unstable();
    assert_ne!(
        own, sorted,
        "ids in the order they were given out: a counter"
    );
    assert!(
        own.iter().all(|id| (1..=1 << 52).contains(id)),
        "ids are exact in JavaScript: {own:?}"
    );
    sorted.dedup();
    assert_eq!(sorted.len(), own.len(), "ids are unique");
    // The request role reaches neither the key nor the raw counter.
    for sql in [
        "select key from legacy_order_id_key",
        "select nextval('legacy_orders_id_seq')",
        "select last_value from legacy_orders_id_seq",
    ] {
        let refused = sqlx::query(sql)
            .execute(&app.app_pool)
            .await
            .expect_err(sql);
        assert!(
            refused.to_string().contains("permission denied"),
            "{sql}: {refused}"
        );
    }
}
