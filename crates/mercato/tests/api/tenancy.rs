use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, ADMIN_TOKEN};

#[tokio::test]
async fn the_admin_creates_a_merchant_and_gets_its_key_once() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("acme").await;
    assert!(merchant.key.starts_with("mk_"));
    // Only a hash is stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select key_hash from api_keys")
        .fetch_all(&app.owner)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0]
        .windows(8)
        .any(|w| merchant.key.as_bytes().windows(8).any(|k| k == w)));
    assert_eq!(app.get("/v1/products", &merchant.key).await.status, 200);
}

#[tokio::test]
async fn creating_a_merchant_needs_the_admin_token() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "Acme", "slug": "acme"});
    app.request(Method::POST, "/v1/merchants", None, Some(body.clone()))
        .await
        .assert_problem(401, "unauthorized");
    let merchant = app.create_merchant("other").await;
    // A merchant's key is a credential, but the wrong kind: 403, not 401 (issue 10).
    app.post("/v1/merchants", &merchant.key, body)
        .await
        .assert_problem(403, "forbidden");
}

#[tokio::test]
async fn a_taken_or_malformed_slug_is_refused_with_the_field() {
    let app = TestApp::spawn().await;
    app.create_merchant("acme").await;
    let taken = app
        .post(
            "/v1/merchants",
            ADMIN_TOKEN,
            json!({"name": "Acme 2", "slug": "acme"}),
        )
        .await;
    taken.assert_problem(409, "slug-taken");
    assert_eq!(taken.error_fields(), ["slug"]);
    let bad = app
        .post(
            "/v1/merchants",
            ADMIN_TOKEN,
            json!({"name": "", "slug": "Not A Slug"}),
        )
        .await;
    bad.assert_problem(422, "validation-error");
    assert_eq!(bad.error_fields(), ["name", "slug"]);
    let count: i64 = app.count("merchants").await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn forged_or_missing_keys_are_401() {
    let app = TestApp::spawn().await;
    let merchant = app.create_merchant("acme").await;
    // Right merchant id, wrong secret.
    let (prefix, secret) = merchant.key.rsplit_once('_').unwrap();
    let flipped: String = secret.chars().rev().collect();
    let forged = format!("{prefix}_{flipped}");
    for key in [forged.as_str(), "mk_garbage", "", "Basic abc"] {
        app.get("/v1/products", key)
            .await
            .assert_problem(401, "unauthorized");
    }
    app.request(Method::GET, "/v1/products", None, None)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn the_admin_sets_a_merchants_stock_strategy() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let path = format!("/v1/merchants/{}", m.id);
    let app = &app;
    let patch = |key: String, body: serde_json::Value| {
        let path = path.clone();
        async move {
            app.request(Method::PATCH, &path, Some(&key), Some(body))
                .await
        }
    };
    let set = patch(
        ADMIN_TOKEN.to_owned(),
        json!({"stock_strategy": "pessimistic"}),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["stock_strategy"], "pessimistic");
    let reserved = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 1}]}),
        )
        .await;
    assert_eq!(reserved.status, 201);
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"reservations_requested_total{strategy="pessimistic"} 1"#)),
        "the next reservation used it: {metrics}"
    );
    let bad = patch(ADMIN_TOKEN.to_owned(), json!({"stock_strategy": "magic"})).await;
    assert_eq!(bad.error_fields(), ["stock_strategy"]);
    patch(m.key.clone(), json!({"stock_strategy": "optimistic"}))
        .await
        .assert_problem(403, "forbidden");
    app.request(
        Method::PATCH,
        &format!("/v1/merchants/{}", uuid::Uuid::now_v7()),
        Some(ADMIN_TOKEN),
        Some(json!({"stock_strategy": "optimistic"})),
    )
    .await
    .assert_problem(404, "not-found");
}
