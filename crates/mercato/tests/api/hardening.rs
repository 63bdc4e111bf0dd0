//! Hostile and clumsy input: every bad request is a clear 4xx problem, never a
//! 500, and the errors speak the API's language.

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::helpers::{Body, TestApp, ADMIN_TOKEN};

/// A body that matches `schema` (resolving `$ref`s in `doc`): one item per
/// array, every property present, `"x"` for strings, 1 for numbers.
fn example(doc: &Value, schema: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return example(doc, &doc["components"]["schemas"][name]);
    }
    for alternatives in ["oneOf", "anyOf", "allOf"] {
        if let Some(options) = schema[alternatives].as_array() {
            let chosen = options
                .iter()
                .find(|o| o["type"] != "null")
                .unwrap_or(&Value::Null);
            return example(doc, chosen);
        }
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds
            .iter()
            .find(|k| *k != "null")
            .cloned()
            .unwrap_or(Value::Null),
        other => other.clone(),
    };
    match kind.as_str() {
        Some("object") => {
            let mut object = Map::new();
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                object.insert(name.clone(), example(doc, property));
            }
            Value::Object(object)
        }
        Some("array") => json!([example(doc, &schema["items"])]),
        Some("string") => json!("x"),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        _ => Value::Null,
    }
}

/// The JSON paths of every string in `value` (`customer.email`, `items[0].sku`).
fn string_paths(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::String(_) => out.push(path.to_owned()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                string_paths(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                string_paths(field, &child, out);
            }
        }
        _ => {}
    }
}

/// `value` with the string at `path` replaced by `with`.
fn replace_at(value: &mut Value, path: &str, with: Value) {
    let mut target = value;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        target = &mut target[name];
        if let Some(i) = index {
            target = &mut target[i];
        }
    }
    *target = with;
}

#[tokio::test]
async fn a_nul_character_in_any_string_field_of_any_body_is_a_422_naming_it() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                continue;
            }
            let body = example(&doc, schema);
            let key = if operation["security"].to_string().contains("admin_token") {
                ADMIN_TOKEN
            } else {
                m.key.as_str()
            };
            let target = path
                .replace("{id}", "00000000-0000-0000-0000-000000000000")
                .replace("{sku}", "TEE");
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut fields = Vec::new();
            string_paths(&body, "", &mut fields);
            for field in fields {
                let mut hostile = body.clone();
                replace_at(&mut hostile, &field, json!("a\u{0}b"));
                let resp = app
                    .request(verb.clone(), &target, Some(key), Some(hostile))
                    .await;
                resp.assert_problem(422, "validation-error");
                assert_eq!(
                    resp.error_fields(),
                    [field.as_str()],
                    "{method} {path}: {}",
                    resp.body
                );
                checked += 1;
            }
        }
    }
    // name, description, sku, currency, email, promo_code, slug, ... across the bodies.
    assert!(checked >= 12, "only {checked} string fields were tried");
}

#[tokio::test]
async fn a_json_array_is_not_an_object() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "Q1", 5).await;
    let merchant = app
        .request(
            Method::POST,
            "/v1/merchants",
            Some(ADMIN_TOKEN),
            Some(json!(["Array Co", "arrayco"])),
        )
        .await;
    merchant.assert_problem(422, "validation-error");
    assert_eq!(merchant.error_fields(), ["body"]);
    assert_eq!(
        merchant.body["errors"][0]["message"],
        "must be a JSON object"
    );
    let stock = app
        .request(
            Method::PUT,
            "/v1/inventory/Q1",
            Some(&m.key),
            Some(json!([7])),
        )
        .await;
    stock.assert_problem(422, "validation-error");
    assert_eq!(app.count("merchants where slug = 'arrayco'").await, 0);
    assert_eq!(app.get("/v1/inventory/Q1", &m.key).await.body["on_hand"], 5);
}

#[tokio::test]
async fn twenty_thousand_bad_items_are_one_short_answer() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let items: Vec<Value> = (0..20_000)
        .map(|_| json!({"sku": "TEE", "quantity": 1}))
        .collect();
    let resp = app
        .post("/v1/reservations", &m.key, json!({ "items": items }))
        .await;
    resp.assert_problem(422, "validation-error");
    assert_eq!(resp.error_fields(), ["items"]);
    assert!(resp.body.to_string().len() < 2_000, "{}", resp.body);
    // Many bad fields of a short list: at most 50 listed, the rest counted.
    let variants: Vec<Value> = (0..100)
        .map(|i| json!({"sku": format!("bad sku {i}"), "price": {"amount": -1, "currency": "eur"}}))
        .collect();
    let resp = app
        .post(
            "/v1/products",
            &m.key,
            json!({"name": "Many", "variants": variants}),
        )
        .await;
    resp.assert_problem(422, "validation-error");
    assert_eq!(resp.error_fields().len(), 50);
    assert_eq!(resp.body["errors_omitted"], 250);
}

#[tokio::test]
async fn every_error_is_problem_json() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let repeated = app.get("/v1/products?limit=1&limit=2", &m.key).await;
    repeated.assert_problem(422, "validation-error");
    assert_eq!(repeated.error_fields(), ["limit"]);
    let strategy = app
        .request(
            Method::POST,
            "/v1/reservations?strategy=optimistic&strategy=pessimistic",
            Some(&m.key),
            Some(json!({"items": [{"sku": "TEE", "quantity": 1}]})),
        )
        .await;
    strategy.assert_problem(422, "validation-error");
    assert_eq!(strategy.error_fields(), ["strategy"]);
    let long = format!("/v1/products/{}", "a".repeat(10_000));
    app.get(&long, &m.key)
        .await
        .assert_problem(414, "uri-too-long");
}

#[tokio::test]
async fn messages_speak_the_apis_language_and_bounds_agree() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let not_integer = app
        .request(
            Method::PUT,
            "/v1/inventory/TEE",
            Some(&m.key),
            Some(json!({"on_hand": "ten"})),
        )
        .await;
    not_integer.assert_problem(422, "validation-error");
    assert_eq!(
        not_integer.body["errors"][0]["message"],
        "must be an integer"
    );
    let customer = app
        .post(
            "/v1/checkouts",
            &m.key,
            json!({"customer": "ann@example.com", "items": [{"sku": "TEE", "quantity": 1}], "payment_method": "pm_card_ok"}),
        )
        .await;
    customer.assert_problem(422, "validation-error");
    assert_eq!(customer.error_fields(), ["customer"]);
    assert_eq!(
        customer.body["errors"][0]["message"],
        "must be a JSON object"
    );
    for truncated in [r#"{"name": "#, r#"{"nam"#, r#"{"name": "\u12"}"#] {
        app.post_raw("/v1/products", &m.key, truncated)
            .await
            .assert_problem(400, "malformed-json");
    }
    // One bound for money, said once.
    let too_much = app
        .post(
            "/v1/legacy-orders",
            &m.key,
            json!({"customer": {"email": "ann@example.com", "name": "Ann"}, "total": {"amount": 1_000_000_000_000i64, "currency": "EUR"}}),
        )
        .await;
    too_much.assert_problem(422, "validation-error");
    assert_eq!(too_much.error_fields(), ["total.amount"]);
    let product = app
        .post(
            "/v1/products",
            &m.key,
            json!({"name": "Dear", "variants": [{"sku": "GOLD", "price": {"amount": 1_000_000_000_000i64, "currency": "EUR"}}]}),
        )
        .await;
    product.assert_problem(422, "validation-error");
    assert_eq!(
        product.body["errors"][0]["message"],
        too_much.body["errors"][0]["message"]
    );
}

#[tokio::test]
async fn a_merchant_key_on_an_admin_endpoint_is_403() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let resp = app
        .post(
            "/v1/merchants",
            &m.key,
            json!({"name": "Other", "slug": "other"}),
        )
        .await;
    resp.assert_problem(403, "forbidden");
    assert!(resp.body["detail"]
        .as_str()
        .unwrap()
        .contains("admin token"));
    app.post(
        "/v1/merchants",
        "nonsense",
        json!({"name": "Other", "slug": "other"}),
    )
    .await
    .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn the_openapi_document_names_idempotency_keys_and_common_problems() {
    let app = TestApp::spawn().await;
    let doc = app
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "401", "429"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lists {status}"
                );
            }
            if !op["requestBody"].is_null() {
                for status in ["413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lists {status}"
                    );
                }
            }
            let takes_key = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header");
            assert_eq!(
                takes_key,
                method == "post",
                "{method} {path}: Idempotency-Key"
            );
        }
    }
}

#[tokio::test]
async fn a_short_admin_token_is_refused_at_start_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args([
            "serve",
            "--admin-token",
            "short-secret",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("mercato runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--admin-token"), "{stderr}");
    assert!(
        !stderr.contains("short-secret"),
        "the token is never printed"
    );
    let blank = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["serve", "--admin-token", ""])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("mercato runs");
    assert!(!blank.status.success());
}

fn checkout_body(method: &str, email: &str) -> Value {
    json!({"customer": {"email": email}, "items": [{"sku": "TEE", "quantity": 1}], "payment_method": method})
}

#[tokio::test]
async fn idempotency_stores_what_acted_and_nothing_that_was_refused() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let send = |key: &'static str, body: Value| {
        app.post_idempotent("/v1/checkouts", &m.key, key, Body::Json(body))
    };
    // A pending (202) checkout is an answer: kept, replayed, and the key is taken.
    let pending = send(
        "k-pending",
        checkout_body("pm_card_timeout", "ann@example.com"),
    )
    .await;
    assert_eq!(pending.status, 202, "{}", pending.body);
    let again = send(
        "k-pending",
        checkout_body("pm_card_timeout", "ann@example.com"),
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], pending.body["id"]);
    send("k-pending", checkout_body("pm_card_ok", "ann@example.com"))
        .await
        .assert_problem(422, "idempotency-key-reused");
    // A request refused for its input is not kept: the corrected one runs.
    send("k-fixed", checkout_body("pm_card_ok", "not-an-email"))
        .await
        .assert_problem(422, "validation-error");
    let fixed = send("k-fixed", checkout_body("pm_card_ok", "ann@example.com")).await;
    assert_eq!(fixed.status, 201, "{}", fixed.body);
    assert!(!fixed.headers.contains_key("idempotent-replayed"));
    // A payment that failed did act (it was tried): kept.
    let declined = send(
        "k-declined",
        checkout_body("pm_card_declined", "ann@example.com"),
    )
    .await;
    declined.assert_problem(402, "payment-failed");
    let replay = send(
        "k-declined",
        checkout_body("pm_card_declined", "ann@example.com"),
    )
    .await;
    assert_eq!(replay.status, 402);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
}

#[tokio::test]
async fn a_key_in_flight_says_when_to_retry() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("acme", "TEE", 5).await;
    let send = || {
        let body = Body::Json(checkout_body("pm_card_slow", "ann@example.com"));
        app.post_idempotent("/v1/checkouts", &m.key, "k-slow", body)
    };
    let (first, second) = tokio::join!(send(), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        send().await
    });
    assert_eq!(first.status, 201);
    second.assert_problem(409, "idempotency-key-in-flight");
    let retry_after: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
}

#[tokio::test]
async fn merchant_creation_is_idempotent_and_keys_are_managed_by_the_admin() {
    let app = TestApp::spawn().await;
    let create = |key: &'static str, slug: &str| {
        let body = Body::Json(json!({"name": "Acme", "slug": slug}));
        app.post_idempotent("/v1/merchants", ADMIN_TOKEN, key, body)
    };
    let first = create("m-1", "acme").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let first_key = first.body["api_key"].as_str().unwrap().to_owned();
    let replay = create("m-1", "acme").await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["id"], first.body["id"]);
    assert!(replay.body["api_key"].is_null(), "a key is shown once");
    assert!(replay.body["api_key_note"]
        .as_str()
        .unwrap()
        .contains("api-keys"));
    create("m-1", "other")
        .await
        .assert_problem(422, "idempotency-key-reused");
    assert_eq!(app.count("merchants").await, 1);

    // The lost key is repaired by issuing another; both work; the old one is revoked.
    let id = first.body["id"].as_str().unwrap();
    let keys_path = format!("/v1/merchants/{id}/api-keys");
    let issued = app.post(&keys_path, ADMIN_TOKEN, json!({})).await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let second_key = issued.body["api_key"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/v1/products", &first_key).await.status, 200);
    assert_eq!(app.get("/v1/products", &second_key).await.status, 200);
    let listed = app.get(&keys_path, ADMIN_TOKEN).await;
    let keys = listed.body["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter().all(|k| !k["last_used_at"].is_null()),
        "{keys:?}"
    );
    let first_id = keys[0]["id"].as_str().unwrap();
    let revoke = format!("{keys_path}/{first_id}");
    let revoked = app
        .request(Method::DELETE, &revoke, Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(revoked.status, 204);
    app.get("/v1/products", &first_key)
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(app.get("/v1/products", &second_key).await.status, 200);
    let again = app
        .request(Method::DELETE, &revoke, Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(again.status, 204, "revoking twice is harmless");
    let unknown = format!("{keys_path}/{}", uuid::Uuid::now_v7());
    app.request(Method::DELETE, &unknown, Some(ADMIN_TOKEN), None)
        .await
        .assert_problem(404, "not-found");
    let nobody = format!("/v1/merchants/{}/api-keys", uuid::Uuid::now_v7());
    app.post(&nobody, ADMIN_TOKEN, json!({}))
        .await
        .assert_problem(404, "not-found");
    // A merchant cannot manage keys.
    app.post(&keys_path, &second_key, json!({}))
        .await
        .assert_problem(403, "forbidden");
}
