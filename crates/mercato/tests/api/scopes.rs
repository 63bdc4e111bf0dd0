//! Scoped API keys: a key does what its scopes allow and nothing else (403
//! `insufficient-scope` naming the scope), makes keys only within its own
//! scopes, stops at its expiry; every merchant route needs a named scope.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Merchant, TestApp};

async fn make_key(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let r = app.post("/v1/api-keys", key, body).await;
    (r.status.as_u16(), r.body)
}

async fn scoped(app: &TestApp, m: &Merchant, scopes: &[&str]) -> String {
    let (status, body) = make_key(app, &m.key, json!({ "scopes": scopes })).await;
    assert_eq!(status, 201, "{body}");
    body["api_key"].as_str().expect("key").to_owned()
}

#[tokio::test]
async fn a_scoped_key_does_what_its_scopes_allow_and_nothing_else() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let reader = scoped(&app, &m, &["catalog:read", "orders:read"]).await;
    assert_eq!(app.get("/v1/products", &reader).await.status, 200);
    assert_eq!(app.get("/v1/orders", &reader).await.status, 200);
    let write = app
        .post(
            "/v1/products",
            &reader,
            json!({"name": "Nope", "variants": []}),
        )
        .await;
    write.assert_problem(403, "insufficient-scope");
    assert!(
        write.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("catalog:write"),
        "{}",
        write.body
    );
    let checkout = app
        .post(
            "/v1/checkouts",
            &reader,
            json!({"customer": {"email": "a@example.com"}, "items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"}),
        )
        .await;
    checkout.assert_problem(403, "insufficient-scope");
    assert!(checkout.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("checkout"));
    assert_eq!(app.count("orders").await, 0, "nothing changed");
    // A write scope includes its read scope.
    let editor = scoped(&app, &m, &["catalog:write"]).await;
    assert_eq!(app.get("/v1/products", &editor).await.status, 200);
    app.get("/v1/inventory/TEE", &editor)
        .await
        .assert_problem(403, "insufficient-scope");
    // The key list shows each key's scopes; the full-access key's are null.
    let keys = app.get("/v1/api-keys", &m.key).await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    let scopes: Vec<Value> = keys.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|k| k["scopes"].clone())
        .collect();
    assert_eq!(
        scopes,
        [
            json!(null),
            json!(["catalog:read", "orders:read"]),
            json!(["catalog:write"])
        ]
    );
}

#[tokio::test]
async fn a_key_makes_keys_only_within_its_own_scopes() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let reader = scoped(&app, &m, &["catalog:read"]).await;
    let (status, body) = make_key(&app, &reader, json!({"scopes": ["catalog:read"]})).await;
    assert_eq!(status, 403, "no keys:write: {body}");
    let maker = scoped(&app, &m, &["keys:write", "catalog:read"]).await;
    let (status, body) = make_key(
        &app,
        &maker,
        json!({"scopes": ["catalog:read", "catalog:write", "root"]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["scopes[1]", "scopes[2]"]);
    // Within its scopes, it may; left out, the new key gets the maker's scopes.
    let (status, body) = make_key(&app, &maker, json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["scopes"], json!(["catalog:read", "keys:write"]));
    let (status, body) = make_key(&app, &m.key, json!({"scopes": []})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) =
        make_key(&app, &m.key, json!({"expires_at": "2001-01-01T00:00:00Z"})).await;
    assert_eq!(status, 422, "{body}");
    // Each key made is in the audit trail, with its scopes and never its hash.
    let trail = app.get("/v1/audit-log?action=api_key.create", &m.key).await;
    let records = trail.body["data"].as_array().expect("data");
    assert_eq!(records.len(), 3, "{}", trail.body);
    assert_eq!(records[0]["changes"]["key_hash"], "[redacted]");
    assert_eq!(
        records[0]["changes"]["scopes"],
        json!(["catalog:read", "keys:write"])
    );
}

#[tokio::test]
async fn an_expired_or_revoked_key_stops_working() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (status, body) = make_key(
        &app,
        &m.key,
        json!({"scopes": ["catalog:read"], "expires_at": soon}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let brief = body["api_key"].as_str().expect("key").to_owned();
    assert_eq!(app.get("/v1/products", &brief).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    // Refused although this process verified it a moment ago (its cache).
    assert_eq!(app.get("/v1/products", &brief).await.status, 401);

    let (_, body) = make_key(&app, &m.key, json!({"scopes": ["catalog:read"]})).await;
    let doomed = body["api_key"].as_str().expect("key").to_owned();
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(app.get("/v1/products", &doomed).await.status, 200);
    let revoked = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&m.key),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    assert_eq!(app.get("/v1/products", &doomed).await.status, 401);
    // Another merchant's key id is not found.
    let other = app.create_merchant("other").await;
    let theirs = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&other.key),
            None,
        )
        .await;
    theirs.assert_problem(404, "not-found");
}

#[tokio::test]
async fn every_merchant_route_names_the_scope_it_needs() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let doc = app.get("/openapi.json", &m.key).await.body;
    let mut unmapped = Vec::new();
    let mut mapped = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let keyed = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
            if !keyed {
                continue;
            }
            let method: Method = method.to_uppercase().parse().expect("method");
            match mercato::tenancy::scopes::required(&method, path) {
                Some(_) => mapped += 1,
                None => unmapped.push(format!("{method} {path}")),
            }
        }
    }
    assert!(mapped > 40, "{mapped}");
    assert!(
        unmapped.is_empty(),
        "routes closed to every scoped key: {unmapped:?}"
    );
}
