//! `TestApp`: spawns the real service against its own database.
//!
//! With `DATABASE_URL` set, each test creates a database on that server (and
//! drops it afterwards); without it, each test starts a private cluster with
//! `localpg` in a temporary directory.

use std::path::PathBuf;
use std::time::Duration;

use mercato::db::TenantTx;
use mercato::tenancy::MerchantId;
use mercato::{App, Config};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct TestApp {
    pub base: String,
    /// The `/metrics` listener's base URL (apart from the API's).
    pub metrics_base: String,
    /// Superuser connection to the test database, for checking invariants in SQL.
    pub owner: PgPool,
    /// The service's own RLS-bound pool.
    pub app_pool: PgPool,
    pub client: reqwest::Client,
    pub db: TestDatabase,
}

async fn start_app(config: Config) -> (String, String, PgPool) {
    start_app_with(config, mercato::app::Plugins::default()).await
}

async fn start_app_with(
    config: Config,
    plugins: mercato::app::Plugins,
) -> (String, String, PgPool) {
    let app = App::build_with(config, plugins).await.expect("app starts");
    let base = format!("http://{}", app.addr);
    let metrics_base = format!("http://{}", app.metrics_addr);
    let app_pool = app.db.app.clone();
    tokio::spawn(app.serve(std::future::pending()));
    (base, metrics_base, app_pool)
}

enum Database {
    External { server_url: String, name: String },
    Private { _pg: localpg::LocalPg, dir: PathBuf },
}

/// A merchant created through the API.
pub struct Merchant {
    pub id: MerchantId,
    pub key: String,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Response {
    /// Asserts an RFC 9457 problem of the given status and type slug.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let content_type = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some("application/problem+json"));
        assert_eq!(
            self.body["type"],
            format!("https://mercato.dev/problems/{kind}"),
            "body: {}",
            self.body
        );
        assert_eq!(self.body["status"], status);
    }

    /// The fields named by a problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A fresh database of its own, dropped (or its private cluster removed) at the end.
pub struct TestDatabase {
    /// URL of the schema owner's connection to this database.
    pub owner_url: String,
    /// The data directory of the apps on this database (mail spool, marts), removed at the end.
    pub data_dir: PathBuf,
    /// The analytics marts of the apps on this database.
    pub analytics_dir: PathBuf,
    database: Database,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let (server_url, database) = match std::env::var("DATABASE_URL") {
            Ok(url) => {
                let name = format!("mercato_test_{}", Uuid::now_v7().simple());
                (
                    url.clone(),
                    Database::External {
                        server_url: url,
                        name,
                    },
                )
            }
            Err(_) => {
                let dir =
                    std::env::temp_dir().join(format!("mercato-test-{}", Uuid::now_v7().simple()));
                let pg =
                    localpg::LocalPg::start_ephemeral(&dir).expect("start a private PostgreSQL");
                let url = pg.url("postgres");
                (url, Database::Private { _pg: pg, dir })
            }
        };
        let db_name = match &database {
            Database::External { name, .. } => name.clone(),
            Database::Private { .. } => "mercato_test".to_owned(),
        };
        let server = PgPool::connect(&server_url)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("create database {db_name}"))
            .execute(&server)
            .await
            .expect("create the test database");
        server.close().await;
        let server_opts: PgConnectOptions = server_url.parse().expect("DATABASE_URL parses");
        let owner_url = server_opts.database(&db_name).to_url_lossy().to_string();
        let data_dir =
            std::env::temp_dir().join(format!("mercato-data-{}", Uuid::now_v7().simple()));
        TestDatabase {
            owner_url,
            analytics_dir: data_dir.join("analytics"),
            data_dir,
            database,
        }
    }

    /// The configuration tests run the app with: fast workers, short delays.
    pub fn config(&self) -> Config {
        let mut config = Config::new("127.0.0.1:0".parse().expect("address"));
        config.database.database_url = Some(self.owner_url.clone());
        // Never the working directory's `.mercato`: each test its own mail spool and marts.
        config.data_dir = self.data_dir.clone();
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        config.max_connections = 20;
        config.checkout_ttl = Duration::from_secs(30);
        config.recovery_grace = Duration::from_secs(1);
        config.worker_interval = Duration::from_millis(100);
        config.payment_delay = Duration::from_millis(300);
        // Each test its own marts; exported only where a test asks.
        config.analytics_dir = Some(self.analytics_dir.clone());
        config.analytics_interval = Duration::ZERO;
        config
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let db = TestDatabase::create().await;
        let config = db.config();
        Self::spawn_with(db, config).await
    }

    pub async fn spawn_with(db: TestDatabase, config: Config) -> TestApp {
        Self::spawn_with_plugins(db, config, mercato::app::Plugins::default()).await
    }

    /// The app with implementations plugged in (a fulfilment provider, …).
    pub async fn spawn_with_plugins(
        db: TestDatabase,
        config: Config,
        plugins: mercato::app::Plugins,
    ) -> TestApp {
        let (base, metrics_base, app_pool) = start_app_with(config, plugins).await;
        let owner = PgPool::connect(&db.owner_url)
            .await
            .expect("owner connects");
        TestApp {
            base,
            metrics_base,
            owner,
            app_pool,
            client: reqwest::Client::new(),
            db,
        }
    }

    /// Another instance of the service on the same database, with `config`.
    pub async fn spawn_peer_with(config: Config) -> String {
        start_app(config).await.0
    }

    /// Another instance of the service on the same database (as a second process would be).
    pub async fn spawn_peer(&self) -> String {
        start_app(self.db.config()).await.0
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let body = body.map(Body::Json).unwrap_or(Body::Empty);
        self.request_with(method, path, key, &[], body).await
    }

    /// A request with extra headers (`Idempotency-Key`, a hand-made `Authorization`, …).
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Response {
        send(&self.client, &self.base, method, path, key, headers, body)
            .await
            .expect("request is answered")
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.request(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Response {
        self.request(Method::POST, path, Some(key), Some(body))
            .await
    }

    /// A POST with an `Idempotency-Key`, as a client that retries safely sends it.
    pub async fn post_idempotent(
        &self,
        path: &str,
        key: &str,
        idempotency_key: &str,
        body: Body,
    ) -> Response {
        let headers = [("Idempotency-Key", idempotency_key)];
        self.request_with(Method::POST, path, Some(key), &headers, body)
            .await
    }

    /// Sends a raw body with a JSON content type (for malformed input).
    pub async fn post_raw(&self, path: &str, key: &str, body: &str) -> Response {
        let body = Body::RawJson(body.to_owned());
        self.request_with(Method::POST, path, Some(key), &[], body)
            .await
    }

    /// Rows of `what` (a table, optionally with joins and a `where`), counted as the owner.
    pub async fn count(&self, what: &str) -> i64 {
        count(&self.owner, what).await
    }

    pub async fn create_merchant(&self, slug: &str) -> Merchant {
        let resp = self
            .post(
                "/v1/merchants",
                ADMIN_TOKEN,
                json!({"name": format!("Shop {slug}"), "slug": slug}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        let id = resp.body["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("merchant id");
        Merchant {
            id: MerchantId(id),
            key: resp.body["api_key"].as_str().expect("api key").to_owned(),
        }
    }

    /// Creates a one-variant product and returns its id.
    pub async fn create_product(&self, merchant: &Merchant, sku: &str, amount: i64) -> String {
        let resp = self
            .post(
                "/v1/products",
                &merchant.key,
                json!({"name": format!("Product {sku}"), "variants": [{"sku": sku, "price": {"amount": amount, "currency": "EUR"}}]}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
        resp.body["id"].as_str().expect("product id").to_owned()
    }

    /// The Prometheus text of `/metrics`.
    /// Read from the metrics listener (`--metrics-listen`), not the API's.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .expect("the metrics listener answers");
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.text().await.expect("metrics text")
    }

    /// A transaction as the service runs it: app role, tenant set.
    pub async fn tenant_tx(&self, merchant: &Merchant) -> TenantTx {
        TenantTx::begin(&self.app_pool, merchant.id)
            .await
            .expect("tenant tx")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        match &self.database {
            Database::Private { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Database::External { server_url, name } => {
                // Best effort, on a thread of its own: Drop cannot await.
                let (url, name) = (server_url.clone(), name.clone());
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    rt.block_on(async {
                        let pool = PgPool::connect(&url).await.ok()?;
                        sqlx::query(&format!("drop database if exists {name} with (force)"))
                            .execute(&pool)
                            .await
                            .ok()
                    })
                })
                .join();
            }
        }
    }
}

impl TestApp {
    /// Sets a SKU's on-hand units through the API.
    pub async fn set_stock(&self, merchant: &Merchant, sku: &str, on_hand: i64) {
        let resp = self
            .request(
                Method::PUT,
                &format!("/v1/inventory/{sku}"),
                Some(&merchant.key),
                Some(json!({"on_hand": on_hand})),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    }

    /// A merchant with one product `sku` priced 1000 EUR-cents and `on_hand` units.
    pub async fn merchant_with_stock(&self, slug: &str, sku: &str, on_hand: i64) -> Merchant {
        let merchant = self.create_merchant(slug).await;
        self.create_product(&merchant, sku, 1000).await;
        self.set_stock(&merchant, sku, on_hand).await;
        merchant
    }
}

/// What a test request carries.
pub enum Body {
    Empty,
    Json(Value),
    /// Sent as is, labelled `application/json` (for malformed input).
    RawJson(String),
}

/// The one way tests send a request: to `base + path`, with an optional bearer
/// key; the answer's body is parsed as JSON when it is JSON. `None` when no
/// answer came (a server killed mid-request).
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Option<Response> {
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req = match body {
        Body::Empty => req,
        Body::Json(json) => req.json(&json),
        Body::RawJson(raw) => req.header("content-type", "application/json").body(raw),
    };
    let resp = req.send().await.ok()?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.ok()?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Posts `body` to `base + path` with an API key; returns status and JSON body,
/// or status 0 when no answer came (only the crash test kills servers mid-request).
pub async fn post_to(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let body = Body::Json(body.clone());
    match send(client, base, Method::POST, path, Some(key), &[], body).await {
        Some(resp) => (resp.status.as_u16(), resp.body),
        None => (0, Value::Null),
    }
}

/// Rows of `what` (a table, optionally with joins and a `where`).
pub async fn count(pool: &PgPool, what: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {what}"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("counting {what}: {e}"))
}

/// The stock invariants, checked in SQL: for every SKU of `initial` (sku, on_hand
/// at the start), units sold + on hand = the start, reserved = what active
/// reservations hold (both as `stock_levels` shows them: sales not yet folded
/// into the stock row taken out; each of those a consumed reservation's),
/// each reservation consumed by exactly one confirmed order, and payments
/// captured exactly for confirmed orders.
pub async fn assert_inventory_consistent(owner: &PgPool, initial: &[(&str, i64)]) {
    let violations = stock_violations(owner, initial).await;
    assert!(violations.is_empty(), "{violations:#?}");
    let unfolded_not_sold = count(
        owner,
        "stock_sales q where not exists (select 1 from reservations r where r.merchant_id = q.merchant_id
           and r.id = q.reservation_id and r.status = 'consumed')",
    )
    .await;
    assert_eq!(
        unfolded_not_sold, 0,
        "every unfolded sale is a consumed reservation's"
    );
    let (consumed_without_order, confirmed_without_consumed, captured_without_order, confirmed_without_capture): (
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "select
           (select count(*) from reservations r where r.status = 'consumed' and not exists
              (select 1 from orders o where o.merchant_id = r.merchant_id and o.reservation_id = r.id and o.status = 'confirmed')),
           (select count(*) from orders o where o.status = 'confirmed' and not exists
              (select 1 from reservations r where r.merchant_id = o.merchant_id and r.id = o.reservation_id and r.status = 'consumed')),
           (select count(*) from payments p where p.status = 'captured' and not exists
              (select 1 from orders o where o.merchant_id = p.merchant_id and o.payment_id = p.id and o.status = 'confirmed')),
           (select count(*) from orders o where o.status = 'confirmed' and not exists
              (select 1 from payments p where p.merchant_id = o.merchant_id and p.id = o.payment_id and p.status = 'captured'))",
    )
    .fetch_one(owner)
    .await
    .expect("invariant query");
    assert_eq!(
        consumed_without_order, 0,
        "a consumed reservation without a confirmed order"
    );
    assert_eq!(
        confirmed_without_consumed, 0,
        "a confirmed order whose reservation was not consumed"
    );
    assert_eq!(
        captured_without_order, 0,
        "a captured payment without a confirmed order"
    );
    assert_eq!(
        confirmed_without_capture, 0,
        "a confirmed order without a captured payment"
    );
}

/// Counts `what` (see `count`) until there are none, for up to `seconds`.
pub async fn wait_until_zero(owner: &PgPool, what: &str, seconds: u64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let n = count(owner, what).await;
        if n == 0 || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stock invariants of `initial` (sku, on_hand at the start) that do not
/// hold, all SKUs read in one statement (one snapshot), so a test may look at
/// any instant, also while checkouts run: units sold + on hand = the start,
/// reserved = what active reservations hold, available never negative, and
/// every sale not yet folded into its stock row a consumed reservation's.
pub async fn stock_violations(owner: &PgPool, initial: &[(&str, i64)]) -> Vec<String> {
    let skus: Vec<String> = initial.iter().map(|(s, _)| s.to_string()).collect();
    let starts: Vec<i64> = initial.iter().map(|(_, n)| *n).collect();
    /// sku, start, on_hand, reserved (none without a stock row), held, sold, stray sales.
    type Row = (String, i64, Option<i64>, Option<i64>, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "select x.sku, x.start, s.on_hand, s.reserved,
                coalesce((select sum(i.quantity) from reservation_items i join reservations r
                          on r.merchant_id = i.merchant_id and r.id = i.reservation_id
                          where i.sku = s.sku and i.merchant_id = s.merchant_id and r.status = 'active'), 0)::bigint,
                coalesce((select sum(i.quantity) from reservation_items i join reservations r
                          on r.merchant_id = i.merchant_id and r.id = i.reservation_id
                          where i.sku = s.sku and i.merchant_id = s.merchant_id and r.status = 'consumed'), 0)::bigint,
                (select count(*) from stock_sales q where q.sku = x.sku and not exists
                   (select 1 from reservations r where r.merchant_id = q.merchant_id
                      and r.id = q.reservation_id and r.status = 'consumed'))
         from unnest($1::text[], $2::bigint[]) as x(sku, start)
         left join stock_levels s on s.sku = x.sku",
    )
    .bind(&skus)
    .bind(&starts)
    .fetch_all(owner)
    .await
    .expect("stock invariants");
    let mut violations = Vec::new();
    for (sku, start, on_hand, reserved, held, sold, stray_sales) in rows {
        let (Some(on_hand), Some(reserved)) = (on_hand, reserved) else {
            violations.push(format!("{sku}: no stock row"));
            continue;
        };
        if on_hand + sold != start {
            violations.push(format!(
                "{sku}: on_hand {on_hand} + sold {sold} != start {start}"
            ));
        }
        if reserved != held {
            violations.push(format!(
                "{sku}: reserved {reserved} != held by active reservations {held}"
            ));
        }
        if on_hand < reserved {
            violations.push(format!(
                "{sku}: available negative ({on_hand} - {reserved})"
            ));
        }
        if stray_sales != 0 {
            violations.push(format!(
                "{sku}: {stray_sales} unfolded sales of no consumed reservation"
            ));
        }
    }
    violations
}
