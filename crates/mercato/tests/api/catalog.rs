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

fn checkout(sku: &str, email: &str) -> serde_json::Value {
    json!({"customer": {"email": email}, "items": [{"sku": sku, "quantity": 1}],
           "payment_method": "pm_card_ok"})
}

#[tokio::test]
async fn a_price_changed_keeps_its_history_and_each_order_its_own_price() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("prices", "MUG", 10).await;
    let product = app.get("/v1/products?sku=MUG", &m.key).await.body["data"][0]["id"]
        .as_str()
        .expect("the product of MUG")
        .to_owned();
    let before = app
        .post("/v1/checkouts", &m.key, checkout("MUG", "a@example.com"))
        .await;
    assert_eq!(before.status, 201, "{}", before.body);

    let variant = format!("/v1/products/{product}/variants/MUG");
    let changed = app
        .request(
            Method::PATCH,
            &variant,
            Some(&m.key),
            Some(json!({"price": {"amount": 2500, "currency": "EUR"}})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.body["price"]["amount"], 2500);
    let history = changed.body["price_history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{}", changed.body);
    let old_amount = before.body["items"][0]["unit_price"]["amount"].clone();
    assert_eq!(history[0]["price"]["amount"], old_amount);
    assert_eq!(history[0]["valid_to"], history[1]["valid_from"]);
    assert!(history[1]["valid_to"].is_null());

    let after = app
        .post("/v1/checkouts", &m.key, checkout("MUG", "b@example.com"))
        .await;
    assert_eq!(after.status, 201, "{}", after.body);
    assert_eq!(after.body["items"][0]["unit_price"]["amount"], 2500);
    // The first order still says what it was sold at.
    let first = before.body["id"].as_str().expect("order id");
    let reread = app.get(&format!("/v1/orders/{first}"), &m.key).await;
    assert_eq!(reread.body["items"][0]["unit_price"]["amount"], old_amount);
    // A quote prices at the price in force.
    let quote = app
        .post(
            "/v1/pricing/quote",
            &m.key,
            json!({"items": [{"sku": "MUG", "quantity": 1}]}),
        )
        .await;
    assert_eq!(quote.status, 200, "{}", quote.body);
    assert_eq!(
        quote.body["lines"][0]["unit_price"]["amount"], 2500,
        "{}",
        quote.body
    );
    // The change is a new version of the product for analytics.
    let updated: i64 = sqlx::query_scalar(
        "select count(*) from events where merchant_id = $1 and type = 'product.updated'
         and payload -> 'variants' -> 0 -> 'price' ->> 'amount' = '2500'",
    )
    .bind(m.id.0)
    .fetch_one(&app.owner)
    .await
    .expect("count events");
    assert_eq!(updated, 1);

    // Bad input names its field and changes nothing.
    for (body, field) in [
        (
            json!({"price": {"amount": -1, "currency": "EUR"}}),
            "price.amount",
        ),
        (
            json!({"price": {"amount": 5, "currency": "XXX"}}),
            "price.currency",
        ),
    ] {
        let r = app
            .request(Method::PATCH, &variant, Some(&m.key), Some(body))
            .await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{}", r.body);
    }
    let unknown = app
        .request(
            Method::PATCH,
            &format!("/v1/products/{product}/variants/NOPE"),
            Some(&m.key),
            Some(json!({"price": {"amount": 5, "currency": "EUR"}})),
        )
        .await;
    assert_eq!(unknown.status, 404);
    let other = app.create_merchant("other").await;
    let theirs = app
        .request(
            Method::PATCH,
            &variant,
            Some(&other.key),
            Some(json!({"price": {"amount": 1, "currency": "EUR"}})),
        )
        .await;
    assert_eq!(theirs.status, 404, "another merchant's variant");
    let now = app.get(&variant, &m.key).await;
    assert_eq!(now.body["price"]["amount"], 2500);
    assert_eq!(now.body["price_history"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn an_archived_product_or_variant_is_not_sold_and_reserved_units_keep_a_variant() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("archive", "LAMP", 10).await;
    let product = app.get("/v1/products?sku=LAMP", &m.key).await.body["data"][0]["id"]
        .as_str()
        .expect("the product of LAMP")
        .to_owned();
    let added = app
        .post(
            &format!("/v1/products/{product}/variants"),
            &m.key,
            json!({"sku": "LAMP-XL", "price": {"amount": 4000, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.body["status"], "active");
    let duplicate = app
        .post(
            &format!("/v1/products/{product}/variants"),
            &m.key,
            json!({"sku": "LAMP", "price": {"amount": 1, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(duplicate.body["errors"][0]["field"], "sku");
    let bad = app
        .post(
            &format!("/v1/products/{product}/variants"),
            &m.key,
            json!({"sku": "has space", "price": {"amount": 1, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["errors"][0]["field"], "sku");

    // Archived product: 409 naming the line, and listed under its status.
    let archive = |status: &'static str| {
        let (app, key, product) = (&app, m.key.clone(), product.clone());
        async move {
            app.request(
                Method::PATCH,
                &format!("/v1/products/{product}"),
                Some(&key),
                Some(json!({"status": status})),
            )
            .await
        }
    };
    assert_eq!(archive("archived").await.body["status"], "archived");
    let refused = app
        .post("/v1/checkouts", &m.key, checkout("LAMP", "a@example.com"))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.body["type"],
        "https://mercato.dev/problems/not-for-sale"
    );
    assert_eq!(refused.body["errors"][0]["field"], "items[0].sku");
    let listed = app.get("/v1/products?status=archived", &m.key).await;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        app.get("/v1/products?status=active", &m.key).await.body["data"],
        json!([])
    );
    let wrong = app.get("/v1/products?status=deleted", &m.key).await;
    assert_eq!(wrong.status, 422);
    assert_eq!(wrong.body["errors"][0]["field"], "status");
    assert_eq!(archive("nope").await.status, 422);
    assert_eq!(archive("active").await.body["status"], "active");
    let sold = app
        .post("/v1/checkouts", &m.key, checkout("LAMP", "a@example.com"))
        .await;
    assert_eq!(sold.status, 201, "{}", sold.body);

    // A variant with units reserved stays; once released it is archived.
    let held = app
        .post(
            "/v1/reservations",
            &m.key,
            json!({"items": [{"sku": "LAMP", "quantity": 2}]}),
        )
        .await;
    assert_eq!(held.status, 201, "{}", held.body);
    let variant = format!("/v1/products/{product}/variants/LAMP");
    let kept = app
        .request(Method::DELETE, &variant, Some(&m.key), None)
        .await;
    assert_eq!(kept.status, 409, "{}", kept.body);
    assert_eq!(kept.body["errors"][0]["field"], "sku");
    assert!(kept.body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("LAMP"));
    let release = format!(
        "/v1/reservations/{}/release",
        held.body["id"].as_str().unwrap()
    );
    assert_eq!(app.post(&release, &m.key, json!({})).await.status, 200);
    let gone = app
        .request(Method::DELETE, &variant, Some(&m.key), None)
        .await;
    assert_eq!(gone.status, 204, "{}", gone.body);
    assert_eq!(app.get(&variant, &m.key).await.body["status"], "archived");
    let refused = app
        .post("/v1/checkouts", &m.key, checkout("LAMP", "b@example.com"))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    // Its orders still read.
    let order = sold.body["id"].as_str().expect("order id");
    assert_eq!(
        app.get(&format!("/v1/orders/{order}"), &m.key).await.status,
        200
    );
    // The other variant sells on.
    app.set_stock(&m, "LAMP-XL", 3).await;
    let xl = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("LAMP-XL", "c@example.com"),
        )
        .await;
    assert_eq!(xl.status, 201, "{}", xl.body);
}

#[tokio::test]
async fn products_are_found_by_a_name_or_sku_prefix_through_an_index_under_rls() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("search").await;
    for (name, sku) in [
        ("Blue Teapot", "TEA-BLUE"),
        ("Green teapot", "TEA-GREEN"),
        ("Teaspoon", "SPOON-1"),
        ("Mug", "MUG-TEAL"),
        ("Ärmel Shirt", "SHIRT"),
    ] {
        let r = app
            .post(
                "/v1/products",
                &m.key,
                json!({"name": name, "variants": [{"sku": sku, "price": {"amount": 100, "currency": "EUR"}}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let names = |path: String| {
        let (app, key) = (&app, m.key.clone());
        async move {
            let r = app.get(&path, &key).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            let mut names: Vec<String> = r.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    // Name prefix, any case; a SKU prefix finds its product too.
    assert_eq!(
        names("/v1/products?q=TEA".into()).await,
        ["Blue Teapot", "Green teapot", "Teaspoon"]
    );
    assert_eq!(names("/v1/products?q=blue".into()).await, ["Blue Teapot"]);
    assert_eq!(names("/v1/products?q=mug-t".into()).await, ["Mug"]);
    assert_eq!(
        names("/v1/products?q=%C3%A4r".into()).await,
        ["Ärmel Shirt"]
    );
    assert_eq!(
        names("/v1/products?q=teapot".into()).await,
        Vec::<String>::new(),
        "a prefix, not a substring"
    );
    assert_eq!(names("/v1/products?sku=SPOON-1".into()).await, ["Teaspoon"]);
    assert_eq!(
        names("/v1/products?q=tea&sku=SPOON-1".into()).await,
        ["Teaspoon"]
    );
    // A renamed product is found by its new name.
    let mug = app.get("/v1/products?sku=MUG-TEAL", &m.key).await.body["data"][0]["id"]
        .as_str()
        .expect("mug")
        .to_owned();
    app.request(
        Method::PATCH,
        &format!("/v1/products/{mug}"),
        Some(&m.key),
        Some(json!({"name": "Cup"})),
    )
    .await;
    assert_eq!(names("/v1/products?q=cup".into()).await, ["Cup"]);
    // Paging through a filter.
    let first = app.get("/v1/products?q=tea&limit=2", &m.key).await;
    assert_eq!(first.body["data"].as_array().map(Vec::len), Some(2));
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = app
        .get(
            &format!("/v1/products?q=tea&limit=2&cursor={cursor}"),
            &m.key,
        )
        .await;
    assert_eq!(second.body["data"].as_array().map(Vec::len), Some(1));
    assert!(second.body["next_cursor"].is_null());
    // Another merchant's products are not found.
    let other = app.create_merchant("other").await;
    assert_eq!(
        app.get("/v1/products?q=tea", &other.key).await.body["data"],
        json!([])
    );
    for (query, field) in [
        ("q=".to_owned() + &"a".repeat(201), "q"),
        ("sku=no%20space".to_owned(), "sku"),
    ] {
        let r = app.get(&format!("/v1/products?{query}"), &m.key).await;
        assert_eq!(r.status, 422, "{query}");
        assert_eq!(r.body["errors"][0]["field"], field);
    }

    // The plan, as the service role sees it under RLS, on a catalog big
    // enough that a scan would be chosen if the index could not be used.
    sqlx::query(
        "insert into products (merchant_id, id, name)
         select $1, gen_random_uuid(), 'Product ' || g from generate_series(1, 20000) g",
    )
    .bind(m.id.0)
    .execute(&app.owner)
    .await
    .expect("seed products");
    sqlx::query(
        "insert into variants (merchant_id, id, product_id, sku, price_amount, currency)
         select merchant_id, gen_random_uuid(), id, 'SKU-' || substr(md5(id::text), 1, 12), 100, 'EUR'
         from products where merchant_id = $1 and name like 'Product %'",
    )
    .bind(m.id.0)
    .execute(&app.owner)
    .await
    .expect("seed variants");
    sqlx::query("analyze products, variants")
        .execute(&app.owner)
        .await
        .expect("analyze");
    let mut tx = app.tenant_tx(&m).await;
    let plan: Vec<String> = sqlx::query_scalar(
        r#"explain with hits as (
             select id from products where merchant_id = $1
               and search_name collate "C" >= $2 and search_name collate "C" < $3
             union
             select product_id from variants where merchant_id = $1
               and search_sku collate "C" >= $2 and search_sku collate "C" < $3)
           select p.id from products p join hits h on h.id = p.id
           where p.merchant_id = $1 order by p.id limit 51"#,
    )
    .bind(m.id.0)
    .bind("tea")
    .bind(mercato::catalog::upper_bound("tea"))
    .fetch_all(tx.conn())
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("products_by_search_name"), "{plan}");
    assert!(plan.contains("variants_by_search_sku"), "{plan}");
}
