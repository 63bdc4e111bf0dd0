//! Customers as records: made by the merchant or by the first checkout,
//! found by prefix, their store credit given by hand.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Body, TestApp};

fn checkout(sku: &str, email: &str) -> serde_json::Value {
    json!({"customer": {"email": email}, "items": [{"sku": sku, "quantity": 1}],
           "payment_method": "pm_card_ok"})
}

#[tokio::test]
async fn a_customer_is_created_found_changed_and_unique_by_address_in_any_case() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("people").await;
    let created = app
        .post(
            "/v1/customers",
            &m.key,
            json!({"email": "Ann.Lee@Example.com", "name": "Ann Lee",
                   "addresses": [{"line1": "Main St 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.body["email"], "Ann.Lee@Example.com");
    assert_eq!(created.body["addresses"][0]["city"], "Berlin");

    let twin = app
        .post(
            "/v1/customers",
            &m.key,
            json!({"email": " ann.lee@example.COM"}),
        )
        .await;
    assert_eq!(twin.status, 409, "{}", twin.body);
    assert_eq!(twin.body["errors"][0]["field"], "email");
    assert!(twin.body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains(&id));

    let bad = app
        .post(
            "/v1/customers",
            &m.key,
            json!({"email": "nope", "addresses": [{"country": "Germany"}]}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.error_fields(), ["email", "addresses[0].country"]);

    app.post(
        "/v1/customers",
        &m.key,
        json!({"email": "bob@example.com", "name": "Anna Bolt"}),
    )
    .await;
    app.post(
        "/v1/customers",
        &m.key,
        json!({"email": "carl@example.com", "name": "Carl"}),
    )
    .await;
    let found = |q: &'static str| {
        let (app, key) = (&app, m.key.clone());
        async move {
            let r = app.get(&format!("/v1/customers?q={q}"), &key).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let mut emails: Vec<String> = r.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .filter_map(|c| c["email"].as_str().map(str::to_owned))
                .collect();
            emails.sort();
            emails
        }
    };
    // By address prefix or name prefix, any case.
    assert_eq!(
        found("ANN").await,
        ["Ann.Lee@Example.com", "bob@example.com"]
    );
    assert_eq!(found("carl%40").await, ["carl@example.com"]);
    assert_eq!(found("lee").await, Vec::<String>::new());

    let patched = app
        .request(
            Method::PATCH,
            &format!("/v1/customers/{id}"),
            Some(&m.key),
            Some(json!({"name": "Ann Lee-Park", "addresses": []})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "Ann Lee-Park");
    assert_eq!(patched.body["addresses"], json!([]));
    let refused = app
        .request(
            Method::PATCH,
            &format!("/v1/customers/{id}"),
            Some(&m.key),
            Some(json!({"email": "x@example.com"})),
        )
        .await;
    assert_eq!(
        refused.status, 422,
        "the address is not changed here: {}",
        refused.body
    );

    let other = app.create_merchant("other").await;
    assert_eq!(
        app.get(&format!("/v1/customers/{id}"), &other.key)
            .await
            .status,
        404
    );
    assert_eq!(
        app.get("/v1/customers?q=ann", &other.key).await.body["data"],
        json!([])
    );
    assert_eq!(app.get("/v1/customers/not-an-id", &m.key).await.status, 404);
}

#[tokio::test]
async fn the_first_checkout_makes_the_customer_and_racing_first_orders_make_one() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("shop", "MUG", 100).await;
    let first = app
        .post("/v1/checkouts", &m.key, checkout("MUG", "Dana@Example.com"))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let customer = first.body["customer"]["id"]
        .as_str()
        .expect("a customer id")
        .to_owned();
    let again = app
        .post("/v1/checkouts", &m.key, checkout("MUG", "dana@example.com"))
        .await;
    assert_eq!(
        again.body["customer"]["id"],
        customer.as_str(),
        "one customer per address"
    );
    let record = app.get(&format!("/v1/customers/{customer}"), &m.key).await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body["email"], "Dana@Example.com");

    // Ten first orders of one new address at once: one customer, all ten on it.
    let racers = (0..10).map(|i| {
        let (app, key) = (&app, m.key.clone());
        async move {
            let email = if i % 2 == 0 {
                "eve@example.com"
            } else {
                "EVE@example.com"
            };
            app.post("/v1/checkouts", &key, checkout("MUG", email))
                .await
        }
    });
    let results = futures_util::future::join_all(racers).await;
    assert!(
        results.iter().all(|r| r.status == 201),
        "every order placed"
    );
    let (customers, orders, distinct): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from customers where merchant_id = $1 and email_key = 'eve@example.com'),
                (select count(*) from orders o join customers c
                    on c.merchant_id = o.merchant_id and c.id = o.customer_id
                  where o.merchant_id = $1 and c.email_key = 'eve@example.com'),
                (select count(distinct customer_id) from orders
                  where merchant_id = $1 and customer_key = 'eve@example.com')",
    )
    .bind(m.id.0)
    .fetch_one(&app.owner)
    .await
    .expect("invariants");
    assert_eq!((customers, orders, distinct), (1, 10, 1));
}

#[tokio::test]
async fn store_credit_given_by_hand_is_once_per_key_in_one_currency_and_spent_at_checkout() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("credit", "MUG", 10).await;
    let customer = app
        .post("/v1/customers", &m.key, json!({"email": "fay@example.com"}))
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let wallet = format!("/v1/customers/{customer}/wallet");
    let empty = app.get(&wallet, &m.key).await;
    assert_eq!(empty.status, 200);
    assert!(empty.body["balance"].is_null());

    let credit = json!({"amount": {"amount": 500, "currency": "EUR"}, "reason": "late delivery"});
    let path = format!("{wallet}/credits");
    let given = app
        .post_idempotent(&path, &m.key, "goodwill-1", Body::Json(credit.clone()))
        .await;
    assert_eq!(given.status, 201, "{}", given.body);
    assert_eq!(
        given.body["balance"],
        json!({"amount": 500, "currency": "EUR"})
    );
    assert_eq!(given.body["entries"][0]["reason"], "late delivery");
    let replayed = app
        .post_idempotent(&path, &m.key, "goodwill-1", Body::Json(credit.clone()))
        .await;
    assert_eq!(replayed.status, 201);
    assert_eq!(
        app.get(&wallet, &m.key).await.body["balance"]["amount"],
        500
    );

    for (body, field, status) in [
        (
            json!({"amount": {"amount": -5, "currency": "EUR"}, "reason": "x"}),
            "amount.amount",
            422,
        ),
        (
            json!({"amount": {"amount": 0, "currency": "EUR"}, "reason": "x"}),
            "amount.amount",
            422,
        ),
        (
            json!({"amount": {"amount": 5, "currency": "EUR"}, "reason": " "}),
            "reason",
            422,
        ),
        (
            json!({"amount": {"amount": 5, "currency": "USD"}, "reason": "x"}),
            "amount.currency",
            409,
        ),
    ] {
        let r = app.post(&path, &m.key, body).await;
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{}", r.body);
    }
    let other = app.create_merchant("other").await;
    assert_eq!(app.post(&path, &other.key, credit).await.status, 404);
    assert_eq!(app.get(&wallet, &other.key).await.status, 404);

    // Checkout spends it before the card; the ledger shows both.
    let order = app
        .post("/v1/checkouts", &m.key, checkout("MUG", "fay@example.com"))
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["store_credit"]["amount"], 500);
    let after = app.get(&wallet, &m.key).await;
    assert_eq!(after.body["balance"]["amount"], 0);
    assert_eq!(after.body["entries"][0]["amount"], -500);
    let (balance, ledger): (i64, i64) = sqlx::query_as(
        "select (select balance from wallets where merchant_id = $1 and customer_key = 'fay@example.com'),
                (select sum(amount)::bigint from wallet_entries where merchant_id = $1 and customer_key = 'fay@example.com')",
    )
    .bind(m.id.0)
    .fetch_one(&app.owner)
    .await
    .expect("balance");
    assert_eq!(balance, ledger, "the balance is the ledger's sum");
}

#[tokio::test]
async fn a_customer_search_uses_the_indexes_under_rls() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("many").await;
    sqlx::query(
        "insert into customers (merchant_id, id, email, email_key, name, search_name)
         select $1, gen_random_uuid(), 'c' || g || '@example.com', 'c' || g || '@example.com',
                'Name ' || g, 'name ' || g
         from generate_series(1, 20000) g",
    )
    .bind(m.id.0)
    .execute(&app.owner)
    .await
    .expect("seed");
    sqlx::query("analyze customers")
        .execute(&app.owner)
        .await
        .expect("analyze");
    let r = app.get("/v1/customers?q=c1999", &m.key).await;
    assert_eq!(
        r.body["data"].as_array().map(Vec::len),
        Some(11),
        "c1999 and c19990-c19999"
    );
    let mut tx = app.tenant_tx(&m).await;
    // The statement of `customers::list` with a prefix.
    let plan: Vec<String> = sqlx::query_scalar(
        "explain with hits as (
             select id from customers where merchant_id = $1 and email_key >= $2 and email_key < $3
             union
             select id from customers where merchant_id = $1 and search_name >= $2 and search_name < $3)
         select c.id from customers c join hits h on h.id = c.id
         where c.merchant_id = $1 order by c.id limit 51",
    )
    .bind(m.id.0)
    .bind("c1999")
    .bind(mercato::catalog::upper_bound("c1999"))
    .fetch_all(tx.conn())
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("customers_email_unique"), "{plan}");
    assert!(plan.contains("customers_by_search_name"), "{plan}");
}

const ORDERS_CUSTOMERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/migrations/plans/orders_customers.toml"
);

fn migrate(db_url: &str, phase: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["migrate", ORDERS_CUSTOMERS, phase])
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mercato runs")
}

fn finish(child: std::process::Child, phase: &str) {
    let out = child.wait_with_output().expect("mercato finishes");
    assert!(
        out.status.success(),
        "{phase}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn orders_from_before_customers_are_linked_online_by_the_pgshift_plan() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("history", "MUG", 1000).await;
    let other = app.merchant_with_stock("neighbour", "MUG", 1000).await;
    for i in 0..40 {
        let email = format!("Buyer{}@Example.com", i % 7);
        let key = if i % 4 == 0 { &other.key } else { &m.key };
        let r = app
            .post("/v1/checkouts", key, checkout("MUG", &email.to_lowercase()))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // As a database from before customers holds them: orders without one.
    sqlx::query("update orders set customer_id = null")
        .execute(&app.owner)
        .await
        .expect("unlink");
    sqlx::query("delete from customers")
        .execute(&app.owner)
        .await
        .expect("forget");

    let url = app.db.owner_url.clone();
    finish(migrate(&url, "lint"), "lint");
    finish(migrate(&url, "expand"), "expand");
    // Checkouts go on while the backfill runs: none fails, and each links
    // its order itself.
    let backfill = migrate(&url, "backfill");
    for i in 0..20 {
        let r = app
            .post(
                "/v1/checkouts",
                &m.key,
                checkout("MUG", &format!("buyer{}@example.com", i % 9)),
            )
            .await;
        assert_eq!(r.status, 201, "during the backfill: {}", r.body);
    }
    finish(backfill, "backfill");
    finish(migrate(&url, "validate"), "validate");
    finish(migrate(&url, "contract"), "contract");

    let (unlinked, wrong, customers, addresses): (i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from orders where customer_id is null),
                (select count(*) from orders o join customers c
                    on c.merchant_id = o.merchant_id and c.id = o.customer_id
                  where c.email_key <> o.customer_key),
                (select count(*) from customers),
                (select count(distinct (merchant_id, customer_key)) from orders)",
    )
    .fetch_one(&app.owner)
    .await
    .expect("invariants");
    assert_eq!(
        (unlinked, wrong),
        (0, 0),
        "every order on its own address's customer"
    );
    assert_eq!(
        customers, addresses,
        "one customer per address and merchant"
    );
    // The customers it made are the service's like any other.
    let found = app.get("/v1/customers?q=buyer1", &m.key).await;
    assert_eq!(found.status, 200);
    assert_eq!(
        found.body["data"].as_array().map(Vec::len),
        Some(1),
        "{}",
        found.body
    );
}

#[tokio::test]
async fn a_customer_is_exported_whole_and_erased_everywhere_with_the_books_still_balancing() {
    let app = TestApp::spawn().await;
    let m = app.merchant_with_stock("privacy", "MUG", 100).await;
    let neighbour = app.merchant_with_stock("neighbour", "MUG", 100).await;
    for _ in 0..3 {
        let r = app
            .post("/v1/checkouts", &m.key, checkout("MUG", "Gus@Example.com"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // The same address at another merchant is another merchant's customer.
    app.post(
        "/v1/checkouts",
        &neighbour.key,
        checkout("MUG", "gus@example.com"),
    )
    .await;
    let customer = app.get("/v1/customers?q=gus", &m.key).await.body["data"][0]["id"]
        .as_str()
        .expect("the customer")
        .to_owned();
    app.request(
        Method::PATCH,
        &format!("/v1/customers/{customer}"),
        Some(&m.key),
        Some(json!({"name": "Gus Grey", "addresses": [{"city": "Oslo", "country": "NO"}]})),
    )
    .await;
    let credit = app
        .post(
            &format!("/v1/customers/{customer}/wallet/credits"),
            &m.key,
            json!({"amount": {"amount": 300, "currency": "EUR"}, "reason": "sorry"}),
        )
        .await;
    assert_eq!(credit.status, 201, "{}", credit.body);
    let sums = |owner: sqlx::PgPool, merchant: uuid::Uuid| async move {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "select (select count(*) from orders where merchant_id = $1),
                    (select coalesce(sum(total_amount), 0)::bigint from orders where merchant_id = $1),
                    (select coalesce(sum(balance), 0)::bigint from wallets where merchant_id = $1)",
        )
        .bind(merchant)
        .fetch_one(&owner)
        .await
        .expect("sums")
    };
    let books = sums(app.owner.clone(), m.id.0).await;

    let export = app
        .get(&format!("/v1/customers/{customer}/export"), &m.key)
        .await;
    assert_eq!(export.status, 200, "{}", export.body);
    assert_eq!(export.body["customer"]["name"], "Gus Grey");
    assert_eq!(export.body["orders"].as_array().map(Vec::len), Some(3));
    assert_eq!(export.body["wallet_balance"]["amount"], 300);
    assert_eq!(export.body["wallet_entries"][0]["reason"], "sorry");
    let other = app.create_merchant("stranger").await;
    assert_eq!(
        app.get(&format!("/v1/customers/{customer}/export"), &other.key)
            .await
            .status,
        404
    );
    assert_eq!(
        app.post(
            &format!("/v1/customers/{customer}/erase"),
            &other.key,
            json!({})
        )
        .await
        .status,
        404
    );

    let erased = app
        .post(
            &format!("/v1/customers/{customer}/erase"),
            &m.key,
            json!({}),
        )
        .await;
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert!(erased.body["erased_at"].is_string());
    assert!(erased.body["name"].is_null());
    let placeholder = erased.body["email"]
        .as_str()
        .expect("placeholder")
        .to_owned();
    assert!(placeholder.ends_with("@erased.invalid"), "{placeholder}");
    let again = app
        .post(
            &format!("/v1/customers/{customer}/erase"),
            &m.key,
            json!({}),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["email"], placeholder.as_str());

    // Nothing of this merchant still holds the address (any case), anywhere.
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from customers where merchant_id = $1 and (lower(email) like '%gus@%' or name is not null and id = $2))
              + (select count(*) from orders where merchant_id = $1 and (customer_key like '%gus@%' or lower(pricing::text) like '%gus@%'))
              + (select count(*) from wallets where merchant_id = $1 and customer_key like '%gus@%')
              + (select count(*) from wallet_entries where merchant_id = $1 and customer_key like '%gus@%')
              + (select count(*) from events where merchant_id = $1 and lower(payload::text) like '%gus@%')
              + (select count(*) from mail_outbox where merchant_id = $1 and lower(to_address) like '%gus@%')",
    )
    .bind(m.id.0)
    .bind(uuid::Uuid::parse_str(&customer).expect("uuid"))
    .fetch_one(&app.owner)
    .await
    .expect("count");
    assert_eq!(left, 0, "the address is gone");
    // The books are as they were, and the orders still belong to the customer.
    assert_eq!(sums(app.owner.clone(), m.id.0).await, books);
    let after = app
        .get(&format!("/v1/customers/{customer}/export"), &m.key)
        .await;
    assert_eq!(after.body["orders"].as_array().map(Vec::len), Some(3));
    assert_eq!(after.body["wallet_balance"]["amount"], 300);
    assert_eq!(
        after.body["orders"][0]["customer"]["email"],
        placeholder.as_str()
    );
    // The neighbour's customer of the same address is untouched.
    let theirs: i64 = sqlx::query_scalar(
        "select count(*) from orders where merchant_id = $1 and customer_key = 'gus@example.com'",
    )
    .bind(neighbour.id.0)
    .fetch_one(&app.owner)
    .await
    .expect("neighbour");
    assert_eq!(theirs, 1);
    let said: i64 = sqlx::query_scalar(
        "select count(*) from events where merchant_id = $1 and type = 'customer.erased'",
    )
    .bind(m.id.0)
    .fetch_one(&app.owner)
    .await
    .expect("event");
    assert_eq!(said, 1, "erased once, said once");
}

#[tokio::test]
async fn the_shopper_hears_of_a_confirmed_order_from_the_shop_at_the_smtp_sink() {
    let sink = crate::remediation::SmtpSink::start().await;
    let app = crate::remediation::app_mailing_to(&sink).await;
    let m = app.merchant_with_stock("mugs", "MUG", 10).await;
    let plain = app.merchant_with_stock("plain", "MUG", 10).await;
    let bad = app
        .request(
            Method::PUT,
            "/v1/mail-settings",
            Some(&m.key),
            Some(json!({"from_name": "Acme <Mugs>", "from_address": "not-an-address"})),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.error_fields(), ["from_name", "from_address"]);
    let set = app
        .request(
            Method::PUT,
            "/v1/mail-settings",
            Some(&m.key),
            Some(json!({"from_name": "Acme Mugs", "from_address": "hello@acme.test"})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        app.get("/v1/mail-settings", &m.key).await.body["from_address"],
        "hello@acme.test"
    );

    let order = app
        .post("/v1/checkouts", &m.key, checkout("MUG", "hal@example.com"))
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    let other = app
        .post(
            "/v1/checkouts",
            &plain.key,
            checkout("MUG", "ida@example.com"),
        )
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
    let mails = sink.wait_for(2).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    let to_hal = mails
        .iter()
        .find(|m| m.to.contains("hal@example.com"))
        .expect("hal's mail");
    let id = order.body["id"].as_str().expect("order id");
    assert!(
        to_hal.from.contains("Acme Mugs") && to_hal.from.contains("<hello@acme.test>"),
        "{}",
        to_hal.from
    );
    assert!(to_hal.subject.contains(id), "{}", to_hal.subject);
    assert!(
        to_hal.text.contains("10.00 EUR") && to_hal.text.contains("1 × MUG"),
        "{}",
        to_hal.text
    );
    // Without settings: the merchant's name, at the platform's address.
    let to_ida = mails
        .iter()
        .find(|m| m.to.contains("ida@example.com"))
        .expect("ida's mail");
    assert!(to_ida.from.contains("plain"), "{}", to_ida.from);
    assert!(!to_ida.from.contains("acme"), "{}", to_ida.from);
    // One message per order, however often the order is read or retried.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(sink.messages().len(), 2);

    // Shipped with tracking; the other order cancelled (and refunded).
    let shipped = app
        .post(
            &format!("/v1/orders/{id}/fulfillments"),
            &m.key,
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "carrier": "DHL", "tracking_number": "JD0042"}),
        )
        .await;
    assert_eq!(shipped.status, 201, "{}", shipped.body);
    let other_id = other.body["id"].as_str().expect("order id");
    let cancelled = app
        .post(
            &format!("/v1/orders/{other_id}/cancel"),
            &plain.key,
            json!({"reason": "changed their mind"}),
        )
        .await;
    assert!(cancelled.status.is_success(), "{}", cancelled.body);
    let mails = sink.wait_for(5).await;
    assert_eq!(
        mails.len(),
        5,
        "{:#?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let about = |to: &str, word: &str| {
        mails
            .iter()
            .find(|m| m.to.contains(to) && m.subject.contains(word))
            .unwrap_or_else(|| panic!("a mail to {to} about {word}"))
            .clone()
    };
    let shipment = about("hal@", "shipped");
    assert!(
        shipment.text.contains("DHL") && shipment.text.contains("JD0042"),
        "{}",
        shipment.text
    );
    assert!(about("ida@", "cancelled").text.contains("cancelled"));
    assert!(about("ida@", "refund").text.contains("10.00 EUR"));
}
