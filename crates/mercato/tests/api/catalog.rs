use reqwest::Method;
use serde_json::json;

use crate::helpers::{Body, TestApp};

#[tokio::test]
async fn a_product_is_created_read_updated_and_deleted() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let created = app
        .post(
            "/v1/products",
            &m.key,
            json!({"name": "T-shirt", "description": "cotton", "variants": [
                {"sku": "TEE-S", "price": {"amount": 1999, "currency": "EUR"}},
                {"sku": "TEE-M", "price": {"amount": 2199, "currency": "EUR"}}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(
        created.body["variants"][1]["price"],
        json!({"amount": 2199, "currency": "EUR"})
    );
    assert!(created.body["variants"][0]["id"].is_string());

    let fetched = app.get(&format!("/v1/products/{id}"), &m.key).await;
    assert_eq!(fetched.body, created.body);

    let patched = app
        .request(
            Method::PATCH,
            &format!("/v1/products/{id}"),
            Some(&m.key),
            Some(json!({"name": "Tee", "description": null})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "Tee");
    assert!(patched.body["description"].is_null());

    let deleted = app
        .request(
            Method::DELETE,
            &format!("/v1/products/{id}"),
            Some(&m.key),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    app.get(&format!("/v1/products/{id}"), &m.key)
        .await
        .assert_problem(404, "not-found");
    let variants: i64 = app.count("variants").await;
    assert_eq!(variants, 0, "variants go with their product");
}

#[tokio::test]
async fn the_list_pages_through_every_product_once() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    for i in 0..5 {
        app.create_product(&m, &format!("SKU-{i}"), 100).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/products?limit=2&cursor={c}"),
            None => "/v1/products?limit=2".to_owned(),
        };
        let page = app.get(&path, &m.key).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for p in page.body["data"].as_array().unwrap() {
            seen.push(p["variants"][0]["sku"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["SKU-0", "SKU-1", "SKU-2", "SKU-3", "SKU-4"]);
}

#[tokio::test]
async fn a_duplicate_sku_is_409_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    app.create_product(&m, "TEE-S", 1999).await;
    let dup = app
        .post(
            "/v1/products",
            &m.key,
            json!({"name": "Other", "variants": [
                {"sku": "NEW-1", "price": {"amount": 1, "currency": "EUR"}},
                {"sku": "TEE-S", "price": {"amount": 1, "currency": "EUR"}}]}),
        )
        .await;
    dup.assert_problem(409, "duplicate-sku");
    assert_eq!(dup.error_fields(), ["variants[1].sku"]);
    let (products, variants): (i64, i64) =
        sqlx::query_as("select (select count(*) from products), (select count(*) from variants)")
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(
        (products, variants),
        (1, 1),
        "the failed create left nothing behind"
    );
}

#[tokio::test]
async fn two_merchants_may_use_the_same_sku() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("shop-a").await;
    let b = app.create_merchant("shop-b").await;
    app.create_product(&a, "TEE-S", 1999).await;
    app.create_product(&b, "TEE-S", 2999).await;
}

#[tokio::test]
async fn another_merchants_product_is_404_and_stays_untouched() {
    let app = TestApp::spawn().await;
    let a = app.create_merchant("shop-a").await;
    let b = app.create_merchant("shop-b").await;
    let id = app.create_product(&a, "TEE-S", 1999).await;
    let path = format!("/v1/products/{id}");
    app.get(&path, &b.key)
        .await
        .assert_problem(404, "not-found");
    app.request(
        Method::PATCH,
        &path,
        Some(&b.key),
        Some(json!({"name": "pwned"})),
    )
    .await
    .assert_problem(404, "not-found");
    app.request(Method::DELETE, &path, Some(&b.key), None)
        .await
        .assert_problem(404, "not-found");
    let list = app.get("/v1/products", &b.key).await;
    assert_eq!(list.body["data"], json!([]));
    let still = app.get(&path, &a.key).await;
    assert_eq!(still.body["name"], "Product TEE-S");
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let variant = |sku: serde_json::Value, amount: serde_json::Value, currency: &str| json!({"name": "X", "variants": [{"sku": sku, "price": {"amount": amount, "currency": currency}}]});
    let cases = [
        (
            variant(json!("OK"), json!(-1), "EUR"),
            "variants[0].price.amount",
        ),
        (
            variant(json!("OK"), json!(1e30), "EUR"),
            "variants[0].price.amount",
        ),
        (
            variant(json!("OK"), json!(9223372036854775808u64), "EUR"),
            "variants[0].price.amount",
        ),
        (
            variant(json!("OK"), json!(1), "eur"),
            "variants[0].price.currency",
        ),
        (
            variant(json!("OK"), json!(1), "EURO"),
            "variants[0].price.currency",
        ),
        (
            variant(json!("OK"), json!(1), "XYZ"),
            "variants[0].price.currency",
        ),
        (variant(json!(""), json!(1), "EUR"), "variants[0].sku"),
        (
            variant(json!("A".repeat(65)), json!(1), "EUR"),
            "variants[0].sku",
        ),
        (json!({"name": "X", "variants": []}), "variants"),
        (json!({"variants": []}), "name"),
        (
            json!({"name": "X", "variants": [], "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post("/v1/products", &m.key, body.clone()).await;
        resp.assert_problem(422, "validation-error");
        assert_eq!(resp.error_fields(), [field], "for {body}");
    }
    app.post_raw("/v1/products", &m.key, r#"{"name": "X", "#)
        .await
        .assert_problem(400, "malformed-json");
    let limit = app.get("/v1/products?limit=501", &m.key).await;
    limit.assert_problem(422, "validation-error");
    assert_eq!(limit.error_fields(), ["limit"]);
    let cursor = app.get("/v1/products?cursor=not-a-cursor", &m.key).await;
    assert_eq!(cursor.error_fields(), ["cursor"]);
    let count: i64 = app.count("products").await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_product_with_reserved_units_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let id = app.get("/v1/products", &m.key).await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "TEE", "quantity": 1}]}),
        )
        .await;
    let path = format!("/v1/products/{id}");
    app.request(Method::DELETE, &path, Some(&m.key), None)
        .await
        .assert_problem(409, "product-has-reservations");
    let release = format!(
        "/v1/reservations/{}/release",
        r.body["id"].as_str().unwrap()
    );
    app.post(&release, &m.key, json!({})).await;
    assert_eq!(
        app.request(Method::DELETE, &path, Some(&m.key), None)
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn edge_requests_get_problems_too() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    // Prices are capped so no order total can overflow.
    let huge = app
        .post(
            "/v1/products",
            &m.key,
            json!({"name": "Yacht", "variants": [{"sku": "Y", "price": {"amount": 4611686018427388104i64, "currency": "EUR"}}]}),
        )
        .await;
    huge.assert_problem(422, "validation-error");
    assert_eq!(huge.error_fields(), ["variants[0].price.amount"]);
    let id = app.create_product(&m, "TEE", 100).await;
    let null_name = app
        .request(
            Method::PATCH,
            &format!("/v1/products/{id}"),
            Some(&m.key),
            Some(json!({"name": null})),
        )
        .await;
    assert_eq!(null_name.error_fields(), ["name"]);
    app.request(Method::PUT, "/v1/products", Some(&m.key), Some(json!({})))
        .await
        .assert_problem(405, "method-not-allowed");
    let big = format!(r#"{{"name": "{}", "variants": []}}"#, "x".repeat(3 << 20));
    app.post_raw("/v1/products", &m.key, &big)
        .await
        .assert_problem(413, "payload-too-large");
    // The auth scheme is case-insensitive.
    let lower_case = format!("bearer {}", m.key);
    let lower = app
        .request_with(
            Method::GET,
            "/v1/products",
            None,
            &[("authorization", &lower_case)],
            Body::Empty,
        )
        .await;
    assert_eq!(lower.status, 200);
}
