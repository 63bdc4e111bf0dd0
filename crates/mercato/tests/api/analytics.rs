//! Analytics: the marts agree with the OLTP database and with an independent
//! reader (DuckDB), a killed export leaves no duplicate and no gap, a
//! merchant reads only its own marts, and a renamed product keeps its old
//! name on old sales.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mercato::analytics::{self, Exporter, Layout};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{Merchant, TestApp};

fn checkout(sku: &str, quantity: i64, promo: Option<&str>, method: &str, email: &str) -> Value {
    let mut body = json!({"customer": {"email": email}, "items": [{"sku": sku, "quantity": quantity}], "payment_method": method});
    if let Some(code) = promo {
        body["promo_code"] = json!(code);
    }
    body
}

fn marts(app: &TestApp) -> Layout {
    // The helpers give every test app its own analytics directory.
    Layout::new(&app.db.analytics_dir)
}

/// Exports the main cell's outbox as the worker role, as `serve` does.
pub(crate) async fn export(app: &TestApp) -> analytics::ExportSummary {
    let mut exporter = Exporter::new("main", worker_pool(app).await, marts(app));
    exporter.duty_cycle = 1.0;
    exporter.run_once(&analytics::Quiet).await.expect("export")
}

async fn worker_pool(app: &TestApp) -> PgPool {
    let opts: sqlx::postgres::PgConnectOptions = app.db.owner_url.parse().expect("url");
    PgPool::connect_with(mercato::db::service_role_options(
        &opts,
        mercato::db::WORKER_ROLE,
    ))
    .await
    .expect("worker role connects")
}

/// Products, checkouts (some declined), a promotion, a refund: a merchant's day.
pub(crate) async fn trade(app: &TestApp, m: &Merchant) -> Vec<String> {
    app.create_product(m, "TEE", 1500).await;
    app.create_product(m, "MUG", 800).await;
    app.set_stock(m, "TEE", 100).await;
    app.set_stock(m, "MUG", 100).await;
    let mut orders = Vec::new();
    for (i, (sku, qty, method)) in [
        ("TEE", 2, "pm_card_ok"),
        ("MUG", 1, "pm_card_ok"),
        ("TEE", 1, "pm_card_declined"),
        ("MUG", 3, "pm_card_ok"),
        ("TEE", 4, "pm_card_expired"),
    ]
    .into_iter()
    .enumerate()
    {
        let email = format!("c{}@example.com", i % 2);
        let r = app
            .post(
                "/v1/checkouts",
                &m.key,
                checkout(sku, qty, None, method, &email),
            )
            .await;
        assert!([201, 402].contains(&r.status.as_u16()), "{}", r.body);
        if r.status == 201 {
            orders.push(r.body["id"].as_str().expect("id").to_owned());
        }
    }
    // A pricing change: 10 % off from here on.
    let rules = json!({"rules":[{"id":"all10","priority":10,"stackable":false,"when":{},"then":{"percent_off":10}}]});
    let put = app
        .request(Method::PUT, "/v1/pricing/rules", Some(&m.key), Some(rules))
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    for qty in [3, 5] {
        let r = app
            .post(
                "/v1/checkouts",
                &m.key,
                checkout("TEE", qty, None, "pm_card_ok", "c2@example.com"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        orders.push(r.body["id"].as_str().expect("id").to_owned());
    }
    // A refund of one unit of the first order.
    let refund = app
        .post(
            &format!("/v1/orders/{}/refunds", orders[0]),
            &m.key,
            json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.body);
    orders
}

/// The same figures, computed by SQL on the OLTP tables.
async fn oltp_revenue(owner: &PgPool, m: &Merchant) -> (i64, i64, i64, i64, i64) {
    sqlx::query_as(
        "with lines as (
             select (l -> 'base' ->> 'amount')::bigint as gross, (l -> 'net' ->> 'amount')::bigint as net,
                    (l ->> 'quantity')::bigint as units
             from orders o, jsonb_array_elements(o.pricing -> 'breakdown' -> 'lines') l
             where o.merchant_id = $1 and o.status = 'confirmed')
         select (select count(*) from orders where merchant_id = $1 and status = 'confirmed'),
                coalesce((select sum(units) from lines), 0)::bigint,
                coalesce((select sum(gross) from lines), 0)::bigint,
                coalesce((select sum(gross - net) from lines), 0)::bigint,
                coalesce((select sum(amount) from order_refunds where merchant_id = $1 and status = 'succeeded'), 0)::bigint",
    )
    .bind(m.id.0)
    .fetch_one(owner)
    .await
    .expect("OLTP revenue")
}

/// A report's rows as (text field, number field).
fn pairs(body: &Value, text: &str, number: &str) -> Vec<(String, i64)> {
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[text].as_str().unwrap_or("").to_owned(),
                r[number].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn sum(rows: &Value, field: &str) -> i64 {
    rows.as_array()
        .map(|rows| rows.iter().filter_map(|r| r[field].as_i64()).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn every_report_equals_the_same_figure_computed_on_the_oltp_database() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let other = app.create_merchant("other").await;
    trade(&app, &m).await;
    let exported = export(&app).await;
    assert!(exported.events > 0, "{exported:?}");
    // The lag is measured from the oldest event a run carried.
    let oldest: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select min(occurred_at) from events")
            .fetch_one(&app.owner)
            .await
            .expect("oldest event");
    assert_eq!(exported.oldest_event_at, oldest, "{exported:?}");

    let (orders, units, gross, discounts, refunds) = oltp_revenue(&app.owner, &m).await;
    assert!(discounts > 0 && refunds > 0, "the workload has both");
    for group in ["day", "week", "month", "payment_method", "customer"] {
        let r = app
            .get(&format!("/v1/analytics/revenue?group_by={group}"), &m.key)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let rows = &r.body["rows"];
        assert_eq!(sum(rows, "orders"), orders, "{group}: {rows}");
        assert_eq!(sum(rows, "units"), units, "{group}");
        assert_eq!(sum(rows, "gross"), gross, "{group}");
        assert_eq!(sum(rows, "discounts"), discounts, "{group}");
        assert_eq!(sum(rows, "refunds"), refunds, "{group}");
        assert_eq!(sum(rows, "net"), gross - discounts - refunds, "{group}");
    }
    // Top products: per SKU, the OLTP's units and net.
    let top = app.get("/v1/analytics/top-products", &m.key).await;
    assert_eq!(top.status, 200, "{}", top.body);
    let per_sku: Vec<(String, i64, i64)> = sqlx::query_as(
        "select l ->> 'sku', sum((l ->> 'quantity')::bigint)::bigint, sum((l -> 'net' ->> 'amount')::bigint)::bigint
         from orders o, jsonb_array_elements(o.pricing -> 'breakdown' -> 'lines') l
         where o.merchant_id = $1 and o.status = 'confirmed'
         group by 1 order by 3 desc",
    )
    .bind(m.id.0)
    .fetch_all(&app.owner)
    .await
    .expect("OLTP top products");
    let marts: Vec<(String, i64, i64)> = top.body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["sku"].as_str().unwrap_or("").to_owned(),
                r["units"].as_i64().unwrap_or(0),
                r["net"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(marts, per_sku);
    assert_eq!(top.body["rows"][0]["name"], "Product TEE");
    // Average order value and discount rate.
    let aov = app
        .get(
            "/v1/analytics/average-order-value?group_by=payment_method",
            &m.key,
        )
        .await;
    assert_eq!(aov.status, 200, "{}", aov.body);
    let row = &aov.body["rows"][0];
    assert_eq!(row["average_order_value"], (gross - discounts) / orders);
    let rate = row["discount_rate"].as_f64().expect("rate");
    assert!((rate - discounts as f64 / gross as f64).abs() < 1e-9);
    // Conversion and failure reasons.
    let (started, confirmed, failed): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where status = 'confirmed'), count(*) filter (where status = 'failed')
         from orders where merchant_id = $1",
    )
    .bind(m.id.0)
    .fetch_one(&app.owner)
    .await
    .expect("OLTP conversion");
    let conversion = app.get("/v1/analytics/conversion", &m.key).await;
    let rows = &conversion.body["rows"];
    assert_eq!(
        (
            sum(rows, "started"),
            sum(rows, "confirmed"),
            sum(rows, "failed")
        ),
        (started, confirmed, failed),
        "{}",
        conversion.body
    );
    let reasons: Vec<(String, i64)> = sqlx::query_as(
        "select failure_reason, count(*) from orders where merchant_id = $1 and status = 'failed'
         group by 1 order by 2 desc, 1",
    )
    .bind(m.id.0)
    .fetch_all(&app.owner)
    .await
    .expect("OLTP reasons");
    let failures = app.get("/v1/analytics/failure-reasons", &m.key).await;
    assert_eq!(pairs(&failures.body, "reason", "failed"), reasons);

    // Another merchant sees none of it, and cannot ask for it.
    let theirs = app.get("/v1/analytics/revenue", &other.key).await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert_eq!(theirs.body["rows"], json!([]));
    let sneaky = app
        .get(
            &format!("/v1/analytics/revenue?merchant_id={}", m.id.0),
            &other.key,
        )
        .await;
    sneaky.assert_problem(422, "validation-error");
    assert_eq!(sneaky.error_fields(), ["merchant_id"]);

    // An independent reader of the same files gets the same totals.
    let duck = duckdb_totals(&marts_dir(&app), &m).await;
    assert_eq!(
        duck,
        json!({"lines_orders": orders, "gross": gross, "discounts": discounts, "refunds": refunds}),
    );

    // Nothing new: a second export exports nothing and changes no figure.
    let again = export(&app).await;
    assert_eq!(again.rows, 0, "{again:?}");
    assert_eq!(again.oldest_event_at, None, "no event, no lag: {again:?}");
    let r = app.get("/v1/analytics/revenue", &m.key).await;
    assert_eq!(sum(&r.body["rows"], "gross"), gross);
}

#[tokio::test]
async fn revenue_after_a_cancel_a_return_and_an_amount_refund_equals_the_sums_in_sql() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let orders = trade(&app, &m).await;
    // orders: [TEE×2 (one unit refunded), MUG×1, MUG×3, TEE×3, TEE×5]
    let cancelled = app
        .post(
            &format!("/v1/orders/{}/cancel", orders[1]),
            &m.key,
            json!({"reason": "changed their mind"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let shipped = app
        .post(
            &format!("/v1/orders/{}/fulfillments", orders[2]),
            &m.key,
            json!({"lines": [{"sku": "MUG", "quantity": 3}]}),
        )
        .await;
    assert_eq!(shipped.status, 201, "{}", shipped.body);
    let returned = app
        .post(
            &format!("/v1/orders/{}/returns", orders[2]),
            &m.key,
            json!({"lines": [{"sku": "MUG", "quantity": 2}], "restock": true}),
        )
        .await;
    assert_eq!(returned.status, 201, "{}", returned.body);
    let goodwill = app
        .post(
            &format!("/v1/orders/{}/refunds", orders[3]),
            &m.key,
            json!({"amount": {"amount": 250, "currency": "EUR"}, "reason": "late delivery"}),
        )
        .await;
    assert_eq!(goodwill.status, 201, "{}", goodwill.body);
    export(&app).await;

    // A cancelled order was sold and then refunded in full: its sale stays in
    // gross, its refund in refunds, and it adds nothing to net.
    let (orders_sold, units, gross, discounts, refunds): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "with sold as (select * from orders where merchant_id = $1 and status in ('confirmed', 'cancelled')),
                  lines as (
                 select (l -> 'base' ->> 'amount')::bigint as gross, (l -> 'net' ->> 'amount')::bigint as net,
                        (l ->> 'quantity')::bigint as units
                 from sold o, jsonb_array_elements(o.pricing -> 'breakdown' -> 'lines') l)
             select (select count(*) from sold),
                    (select sum(units) from lines)::bigint,
                    (select sum(gross) from lines)::bigint,
                    (select sum(gross - net) from lines)::bigint,
                    (select sum(amount) from order_refunds where merchant_id = $1 and status = 'succeeded')::bigint",
        )
        .bind(m.id.0)
        .fetch_one(&app.owner)
        .await
        .expect("OLTP revenue");
    let (cancelled_total, returned_amount): (i64, i64) = sqlx::query_as(
        "select (select total_amount from orders where merchant_id = $1 and id = $2::uuid),
                (select sum(r.amount) from order_refunds r
                 join order_returns x on x.merchant_id = r.merchant_id and x.refund_id = r.id
                 where r.merchant_id = $1)::bigint",
    )
    .bind(m.id.0)
    .bind(&orders[1])
    .fetch_one(&app.owner)
    .await
    .expect("what the cancel and the return gave back");
    assert!(returned_amount > 0);
    // One unit of TEE (the trade's refund), the cancelled order, the return, 2.50.
    assert_eq!(
        refunds,
        1500 + cancelled_total + returned_amount + 250,
        "every refund is in order_refunds"
    );
    for group in ["day", "payment_method", "customer"] {
        let r = app
            .get(&format!("/v1/analytics/revenue?group_by={group}"), &m.key)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let rows = &r.body["rows"];
        assert_eq!(sum(rows, "orders"), orders_sold, "{group}: {rows}");
        assert_eq!(sum(rows, "units"), units, "{group}");
        assert_eq!(sum(rows, "gross"), gross, "{group}");
        assert_eq!(sum(rows, "discounts"), discounts, "{group}");
        assert_eq!(sum(rows, "refunds"), refunds, "{group}: {rows}");
        assert_eq!(sum(rows, "net"), gross - discounts - refunds, "{group}");
    }
    // Conversion counts the cancellation as what happened to a confirmed order.
    let conversion = app.get("/v1/analytics/conversion", &m.key).await;
    assert_eq!(conversion.status, 200, "{}", conversion.body);
    assert_eq!(
        sum(&conversion.body["rows"], "cancelled"),
        1,
        "{}",
        conversion.body
    );
}

/// When the newest file under `dir` was written.
fn newest_file_under(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(t));
            }
        }
    }
    newest
}

fn marts_dir(app: &TestApp) -> PathBuf {
    marts(app).dir
}

/// DuckDB (from PyPI) over the Parquet files: order count, gross, discounts, refunds.
async fn duckdb_totals(dir: &Path, m: &Merchant) -> Value {
    let script = r#"
import duckdb, json, sys
d, m = sys.argv[1], sys.argv[2]
lines = f"read_parquet('{d}/fact_order_lines/merchant={m}/*/*.parquet')"
pays = f"read_parquet('{d}/fact_payments/merchant={m}/*/*.parquet')"
q = duckdb.sql(f"select count(distinct order_id), sum(gross), sum(discount) from {lines}").fetchone()
r = duckdb.sql(f"select coalesce(sum(amount), 0) from {pays} where kind = 'refund'").fetchone()
print(json.dumps({"lines_orders": q[0], "gross": int(q[1]), "discounts": int(q[2]), "refunds": int(r[0])}))
"#;
    let out = tokio::process::Command::new(crate::webhooks::python())
        .args(["-c", script])
        .arg(dir)
        .arg(m.id.0.to_string())
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("duckdb prints JSON")
}

/// The committed files under a marts directory (or its mirror) and their bytes.
fn committed_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "_staging" {
                    pending.push(path);
                }
            } else if (name.ends_with(".parquet") && !name.starts_with('.'))
                || (name.starts_with("manifest-") && name.ends_with(".json"))
            {
                let relative = path.strip_prefix(dir).expect("under dir").to_owned();
                files.insert(relative, std::fs::read(&path).expect("readable"));
            }
        }
    }
    files
}

#[tokio::test]
async fn the_marts_are_mirrored_to_object_storage_and_repaired_after_a_restart() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("mirrored").await;
    let store = app.db.data_dir.join("object-store");
    let mirror = analytics::Mirror::open(&format!("file://{}", store.display())).expect("a store");
    let exporter = |mirror: &analytics::Mirror, pool: PgPool| {
        let mut e = Exporter::new("main", pool, marts(&app));
        e.duty_cycle = 1.0;
        e.mirror = Some(mirror.clone());
        e
    };
    let mut first = exporter(&mirror, worker_pool(&app).await);
    trade(&app, &m).await;
    first.run_once(&analytics::Quiet).await.expect("export");
    let local = committed_files(&marts_dir(&app));
    assert!(local.len() > 10, "{:?}", local.keys());
    assert_eq!(
        committed_files(&store),
        local,
        "the store holds what the directory holds"
    );

    // One product per export: its dim_product directory passes 8 files and
    // is compacted; the store follows (the covered files go there too).
    for i in 0..10 {
        app.create_product(&m, &format!("MIRROR-{i}"), 100 + i)
            .await;
        let s = first.run_once(&analytics::Quiet).await.expect("export");
        assert_eq!(s.events, 1, "{s:?}");
    }
    let local = committed_files(&marts_dir(&app));
    let compacted: Vec<_> = local
        .keys()
        .filter(|p| p.starts_with("dim_product") && p.to_string_lossy().ends_with("-c.parquet"))
        .collect();
    assert_eq!(compacted.len(), 1, "{:?}", local.keys());
    assert_eq!(committed_files(&store), local);
    // An engine reading the store gets what one reading the directory gets.
    assert_eq!(
        duckdb_totals(&store, &m).await,
        duckdb_totals(&marts_dir(&app), &m).await
    );

    // A file lost from the store and a stray one in it; a new process
    // compares the whole store once and repairs both.
    let (lost, _) = local
        .iter()
        .find(|(p, _)| p.starts_with("fact_order_lines"))
        .expect("a fact file");
    std::fs::remove_file(store.join(lost)).expect("remove");
    let stray = store.join(format!("fact_order_lines/merchant={}/day=2000-01-01/main-00000000000000000000-00000000000000000001-0.parquet", m.id.0));
    std::fs::create_dir_all(stray.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stray, b"not the marts").expect("write");
    let mut restarted = exporter(&mirror, worker_pool(&app).await);
    let s = restarted.run_once(&analytics::Quiet).await.expect("export");
    assert_eq!(s.events, 0, "{s:?}");
    assert!(!stray.exists(), "the stray file is deleted");
    assert_eq!(committed_files(&store), committed_files(&marts_dir(&app)));
}

#[tokio::test]
async fn a_renamed_product_keeps_its_old_name_on_the_sales_before_the_rename() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let product = app.create_product(&m, "TEE", 1000).await;
    app.set_stock(&m, "TEE", 50).await;
    let buy = |qty: i64| {
        app.post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", qty, None, "pm_card_ok", "ann@example.com"),
        )
    };
    assert_eq!(buy(2).await.status, 201);
    export(&app).await;
    let renamed = app
        .request(
            Method::PATCH,
            &format!("/v1/products/{product}"),
            Some(&m.key),
            Some(json!({"name": "Organic tee"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(buy(3).await.status, 201);
    // Exported in one go the second time: the rename and the sale after it.
    export(&app).await;
    let top = app.get("/v1/analytics/top-products", &m.key).await;
    assert_eq!(
        pairs(&top.body, "name", "units"),
        [("Organic tee".to_owned(), 3), ("Product TEE".to_owned(), 2)],
        "{}",
        top.body
    );
}

#[tokio::test]
async fn an_export_killed_at_any_moment_leaves_no_duplicate_and_no_gap() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    app.create_product(&m, "TEE", 700).await;
    app.set_stock(&m, "TEE", 10_000).await;
    for i in 0..60 {
        let r = app
            .post(
                "/v1/checkouts",
                &m.key,
                checkout("TEE", 1 + i % 3, None, "pm_card_ok", "ann@example.com"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let dir = marts_dir(&app);
    // Tiny batches, slowly: each export is killed while it writes, once it
    // has staged files of its own (and then later and later).
    for extra in [0u64, 300, 900] {
        let spawned = std::time::SystemTime::now();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
            .args([
                "analytics",
                "export",
                "--batch",
                "3",
                "--duty-cycle",
                "0.05",
            ])
            .arg("--database-url")
            .arg(&app.db.owner_url)
            .arg("--analytics-dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("export starts");
        let staging = dir.join("_staging");
        let mut staged = false;
        for _ in 0..2000 {
            if newest_file_under(&staging).is_some_and(|t| t > spawned) {
                staged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(staged, "the export staged files before it was killed");
        tokio::time::sleep(Duration::from_millis(extra)).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let done = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["analytics", "export"])
        .arg("--database-url")
        .arg(&app.db.owner_url)
        .arg("--analytics-dir")
        .arg(&dir)
        .output()
        .await
        .expect("export runs");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // Every line once: the marts' lines are the OLTP's, by key.
    let layout = Layout::new(&dir);
    let manifests = layout
        .load_manifest("main")
        .map(|m| vec![m])
        .expect("manifest");
    let mut lines: Vec<(String, i64)> = Vec::new();
    for (_, day) in layout
        .days("fact_order_lines", &m.id.0.to_string())
        .expect("days")
    {
        for l in analytics::files::read_dir_rows::<analytics::model::OrderLine>(
            &layout, &day, &manifests,
        )
        .expect("lines")
        {
            lines.push((l.order_id, l.quantity));
        }
    }
    lines.sort();
    let oltp: Vec<(String, i64)> = sqlx::query_as(
        "select o.id::text, i.quantity from orders o join order_items i on (i.merchant_id, i.order_id) = (o.merchant_id, o.id)
         where o.merchant_id = $1 and o.status = 'confirmed' order by 1, 2",
    )
    .bind(m.id.0)
    .fetch_all(&app.owner)
    .await
    .expect("OLTP lines");
    assert_eq!(lines.len(), 60);
    assert_eq!(lines, oltp);
    let r = app.get("/v1/analytics/revenue", &m.key).await;
    assert_eq!(sum(&r.body["rows"], "orders"), 60, "{}", r.body);
}

#[tokio::test]
async fn serve_keeps_the_marts_fresh_and_a_second_exporter_is_refused() {
    let db = crate::helpers::TestDatabase::create().await;
    let mut config = db.config();
    config.analytics_interval = Duration::from_millis(200);
    let dir = config.analytics_dir.clone().expect("a directory");
    let app = TestApp::spawn_with(db, config).await;
    let m = app.merchant_with_stock("acme", "TEE", 10).await;
    let r = app
        .post(
            "/v1/checkouts",
            &m.key,
            checkout("TEE", 2, None, "pm_card_ok", "ann@example.com"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut units = 0;
    for _ in 0..100 {
        let rows = app.get("/v1/analytics/revenue", &m.key).await.body["rows"].clone();
        units = sum(&rows, "units");
        if units == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(units, 2, "serve exported the order within 10 s");
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["analytics", "export"])
        .arg("--database-url")
        .arg(&app.db.owner_url)
        .arg("--analytics-dir")
        .arg(&dir)
        .output()
        .await
        .expect("export runs");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another process"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn reports_refuse_what_they_cannot_answer() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    for (query, field) in [
        ("/v1/analytics/profit", "report"),
        ("/v1/analytics/revenue?group_by=colour", "group_by"),
        ("/v1/analytics/top-products?group_by=day", "group_by"),
        (
            "/v1/analytics/revenue?from=2026-03-01&to=2026-02-01",
            "from",
        ),
        ("/v1/analytics/revenue?from=2020-01-01&to=2026-01-01", "to"),
        ("/v1/analytics/revenue?from=yesterday", "from"),
        ("/v1/analytics/top-products?limit=0", "limit"),
    ] {
        let r = app.get(query, &m.key).await;
        r.assert_problem(422, "validation-error");
        assert_eq!(r.error_fields(), [field], "{query}: {}", r.body);
    }
    let ok = app
        .get(
            "/v1/analytics/revenue?from=2026-01-01&to=2026-12-31",
            &m.key,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["rows"], json!([]));
}

/// Issue 37, item 5: the audit trail reaches the marts (`fact_audit`), each
/// record once: those from before the export (no position) by a first pass,
/// the later ones by commit position, as the events.
#[tokio::test]
async fn the_audit_trail_reaches_the_marts_once_including_what_came_before_the_export() {
    let app = TestApp::spawn().await;
    let m = app.create_merchant("acme").await;
    let product = app.create_product(&m, "TEE", 700).await;
    app.set_stock(&m, "TEE", 10).await;
    // Records written before migration 0038 had no position.
    sqlx::query("update audit_log set xid = null")
        .execute(&app.owner)
        .await
        .expect("unposition");
    export(&app).await;
    let renamed = app
        .request(
            Method::PATCH,
            &format!("/v1/products/{product}"),
            Some(&m.key),
            Some(json!({"name": "Better tee"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    export(&app).await;
    export(&app).await;

    let layout = marts(&app);
    let manifests = vec![layout.load_manifest("main").expect("manifest")];
    assert!(manifests[0].audit_history_done);
    let mut marts: Vec<(String, String)> = Vec::new();
    for (_, day) in layout
        .days("fact_audit", &m.id.0.to_string())
        .expect("days")
    {
        for r in analytics::files::read_dir_rows::<analytics::model::AuditFact>(
            &layout, &day, &manifests,
        )
        .expect("records")
        {
            marts.push((r.record_id, r.action));
        }
    }
    marts.sort();
    let oltp: Vec<(String, String)> =
        sqlx::query_as("select id::text, action from audit_log where merchant_id = $1 order by 1")
            .bind(m.id.0)
            .fetch_all(&app.owner)
            .await
            .expect("the trail");
    assert!(oltp.iter().any(|(_, a)| a == "product.update"), "{oltp:?}");
    assert!(oltp.iter().any(|(_, a)| a == "product.create"), "{oltp:?}");
    assert_eq!(marts, oltp, "every record once, no other");
}
