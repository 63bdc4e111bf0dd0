//! The store API (issue 38, items 1 and 2): publishable keys, the shop
//! resolved by key or host name, CORS, and the shoppers' catalog (cached,
//! with entity tags).

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Body, Merchant, Response, TestApp, ADMIN_TOKEN};

const ORIGIN: &str = "https://shop.acme.test";

async fn publishable_key(app: &TestApp, m: &Merchant, origins: &[&str]) -> String {
    let r = app
        .post(
            "/v1/publishable-keys",
            &m.key,
            json!({"allowed_origins": origins}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["key"].as_str().expect("key").to_owned()
}

async fn store(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Response {
    app.request_with(Method::GET, path, None, headers, Body::Empty)
        .await
}

#[tokio::test]
async fn a_publishable_key_reads_the_active_catalog_with_availability_and_nothing_else() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let mug = app.create_product(&m, "MUG", 900).await;
    app.set_stock(&m, "MUG", 4).await;
    let gone = app.create_product(&m, "OLD", 100).await;
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/products/{gone}"),
            Some(&m.key),
            Some(json!({"status": "archived"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Units held by a checkout in progress are not available.
    let r = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "MUG", "quantity": 3}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Bad origins are named; a good key is made.
    let r = app
        .post(
            "/v1/publishable-keys",
            &m.key,
            json!({"allowed_origins": ["https://ok.test", "shop.example.com"]}),
        )
        .await;
    r.assert_problem(422, "validation-error");
    assert_eq!(r.error_fields(), ["allowed_origins[1]"]);
    let pk = publishable_key(&app, &m, &[ORIGIN]).await;
    assert!(pk.starts_with("pk_"));

    let r = store(&app, "/store/v1/products", &[("X-Publishable-Key", &pk)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let products = r.body["data"].as_array().expect("data");
    let skus: Vec<(&str, i64)> = products
        .iter()
        .flat_map(|p| p["variants"].as_array().into_iter().flatten())
        .map(|v| {
            (
                v["sku"].as_str().unwrap_or(""),
                v["available"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        skus,
        [("TEE", 10), ("MUG", 1)],
        "active products only, net of reservations"
    );
    let inventory = app.get("/v1/inventory/MUG", &m.key).await;
    assert_eq!(inventory.body["available"], 1, "{}", inventory.body);
    let one = store(
        &app,
        &format!("/store/v1/products/{mug}"),
        &[("Authorization", &format!("Bearer {pk}"))],
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["variants"][0]["price"]["amount"], 900);
    store(
        &app,
        &format!("/store/v1/products/{gone}"),
        &[("X-Publishable-Key", &pk)],
    )
    .await
    .assert_problem(404, "not-found");

    // A publishable key is no merchant key; no key at all is no shop.
    app.get("/v1/products", &pk)
        .await
        .assert_problem(401, "unauthorized");
    store(&app, "/store/v1/products", &[])
        .await
        .assert_problem(401, "unauthorized");
    store(
        &app,
        "/store/v1/products",
        &[("X-Publishable-Key", "pk_forged")],
    )
    .await
    .assert_problem(401, "unauthorized");
    // Another merchant's product is not found through this shop.
    let other = app.merchant_with_stock("globex", "HAT", 5).await;
    let hat = app.create_product(&other, "CAP", 100).await;
    store(
        &app,
        &format!("/store/v1/products/{hat}"),
        &[("X-Publishable-Key", &pk)],
    )
    .await
    .assert_problem(404, "not-found");

    // Revoked: refused at once.
    let keys = app.get("/v1/publishable-keys", &m.key).await;
    let id = keys.body["data"][0]["id"].as_str().expect("id").to_owned();
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/publishable-keys/{id}"),
            Some(&m.key),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    store(&app, "/store/v1/products", &[("X-Publishable-Key", &pk)])
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn the_shop_is_found_by_its_host_name_and_a_key_of_another_shop_is_refused() {
    let app = TestApp::spawn().await;
    let acme = app.merchant_with_stock("acme", "TEE", 10).await;
    let globex = app.merchant_with_stock("globex", "HAT", 5).await;
    let globex_pk = publishable_key(&app, &globex, &["*"]).await;
    let r = store(
        &app,
        "/store/v1/products",
        &[("Host", "acme.shop.localhost")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"][0]["variants"][0]["sku"], "TEE");
    let r = store(
        &app,
        "/store/v1/products",
        &[
            ("Host", "acme.shop.localhost:8080"),
            ("X-Publishable-Key", &globex_pk),
        ],
    )
    .await;
    r.assert_problem(422, "validation-error");
    assert_eq!(r.error_fields(), ["X-Publishable-Key"]);
    store(
        &app,
        "/store/v1/products",
        &[("Host", "nobody.shop.localhost")],
    )
    .await
    .assert_problem(404, "not-found");
    // A suspended merchant's shop is closed.
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/merchants/{}", acme.id.0),
            Some(ADMIN_TOKEN),
            Some(json!({"status": "suspended", "reason": "fraud review"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    store(
        &app,
        "/store/v1/products",
        &[("Host", "acme.shop.localhost")],
    )
    .await
    .assert_problem(403, "merchant-suspended");
}

async fn preflight(app: &TestApp, origin: &str) -> Response {
    app.request_with(
        Method::OPTIONS,
        "/store/v1/products",
        None,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-publishable-key"),
        ],
        Body::Empty,
    )
    .await
}

#[tokio::test]
async fn cors_lets_the_keys_origins_read_and_nobody_else() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let pk = publishable_key(&app, &m, &[ORIGIN]).await;
    let ok = preflight(&app, ORIGIN).await;
    assert_eq!(ok.status, 204, "{}", ok.body);
    assert_eq!(ok.headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(ok.headers["access-control-allow-credentials"], "true");
    assert!(ok.headers["access-control-allow-headers"]
        .to_str()
        .unwrap_or("")
        .contains("x-publishable-key"));
    let foreign = preflight(&app, "https://evil.test").await;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert!(!foreign.headers.contains_key("access-control-allow-origin"));

    let r = store(
        &app,
        "/store/v1/products",
        &[("X-Publishable-Key", &pk), ("Origin", ORIGIN)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["access-control-allow-origin"], ORIGIN);
    let r = store(
        &app,
        "/store/v1/products",
        &[("X-Publishable-Key", &pk), ("Origin", "https://evil.test")],
    )
    .await;
    r.assert_problem(403, "forbidden");
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    // A key for any origin: `*`, never with credentials.
    let any = publishable_key(&app, &m, &["*"]).await;
    let r = store(
        &app,
        "/store/v1/products",
        &[("X-Publishable-Key", &any), ("Origin", "https://else.test")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
}

#[tokio::test]
async fn a_product_page_is_served_from_memory_with_an_entity_tag() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let pk = publishable_key(&app, &m, &[ORIGIN]).await;
    let first = store(&app, "/store/v1/products", &[("X-Publishable-Key", &pk)]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let etag = first.headers["etag"].to_str().expect("etag").to_owned();
    assert!(first.headers["cache-control"]
        .to_str()
        .unwrap_or("")
        .contains("max-age="));
    // Changed behind the cache's back (no event, no request): the page
    // served next is the one in memory, so no query was made for it.
    sqlx::query("update stock set on_hand = 3 where sku = 'TEE'")
        .execute(&app.owner)
        .await
        .expect("stock");
    let second = store(&app, "/store/v1/products", &[("X-Publishable-Key", &pk)]).await;
    assert_eq!(second.headers["etag"].to_str().ok(), Some(etag.as_str()));
    assert_eq!(second.body["data"][0]["variants"][0]["available"], 10);
    let not_modified = store(
        &app,
        "/store/v1/products",
        &[("X-Publishable-Key", &pk), ("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    // After its time in memory (2 s), the page is read again.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let third = store(&app, "/store/v1/products", &[("X-Publishable-Key", &pk)]).await;
    assert_eq!(third.body["data"][0]["variants"][0]["available"], 3);
    assert_ne!(third.headers["etag"].to_str().ok(), Some(etag.as_str()));
}
