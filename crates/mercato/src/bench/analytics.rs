//! `mercato bench analytics`: many merchants' order lines exported to the
//! marts under live load, then one merchant's year of reports from the marts
//! against the same questions asked of PostgreSQL over the OLTP tables.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::moves::{set, summarise, Load, PhaseFigures};
use super::{median, Harness, Percentiles};
use crate::analytics::{Exporter, Quiet};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Order lines in all (two per order), spread over the merchants and the last year.
    #[arg(long, default_value_t = 10_000_000)]
    pub lines: i64,
    #[arg(long, default_value_t = 100)]
    pub merchants: i64,
    /// Requests per second of the live load (one in five a checkout).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Events per export batch.
    #[arg(long, default_value_t = 20_000)]
    pub batch: i64,
    /// The export's duty cycle.
    #[arg(long, default_value_t = crate::analytics::export::DEFAULT_DUTY_CYCLE)]
    pub duty_cycle: f64,
    /// Seconds of load before the export (the baseline).
    #[arg(long, default_value_t = 15)]
    pub settle_seconds: u64,
    /// Seconds of load after the export, exported every 2 s as `serve` does:
    /// the marts' lag behind the live orders.
    #[arg(long, default_value_t = 60)]
    pub fresh_seconds: u64,
    /// Runs of each report (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long, default_value = "docs/bench/bench-analytics.json")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Report {
    lines: i64,
    merchants: i64,
    events_exported: u64,
    rows_written: u64,
    files_written: u64,
    export_seconds: f64,
    export_events_per_second: f64,
    export_rows_per_second: f64,
    duty_cycle: f64,
    load: std::collections::BTreeMap<String, PhaseFigures>,
    oltp_p99_before_ms: f64,
    oltp_p99_during_ms: f64,
    /// The first export after the big one: how long the oldest event the
    /// load wrote during the big export waited.
    catch_up_lag_s: f64,
    /// Then exporting every 2 s under the live load: how long each run's
    /// oldest event waited for the marts (target ≤ 10 s).
    lag_runs: usize,
    lag_median_s: f64,
    lag_max_s: f64,
    /// During / before (target ≤ 1.2).
    oltp_p99_ratio: f64,
    /// One merchant's year: median latency of each report.
    revenue_by_day_marts_ms: f64,
    revenue_by_day_postgres_ms: f64,
    revenue_by_day_ratio: f64,
    top_products_marts_ms: f64,
    top_products_postgres_ms: f64,
    top_products_ratio: f64,
    /// The two answers agree (revenue per day, top products' units).
    answers_agree: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("mercato-bench-marts-{}", Uuid::now_v7().simple()));
    let marts = dir.clone();
    let h = Harness::start(None, move |c| {
        // Exported by the bench itself, timed; the reports read the same directory.
        c.analytics_interval = Duration::ZERO;
        c.analytics_dir = Some(marts);
        c.max_connections = 40;
    })
    .await?;
    let outcome = super::interruptible(measure(&h, &opts, &dir)).await;
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = outcome?;
    super::write_report(&opts.out, &report)?;
    eprintln!(
        "export {:.0} events/s, {:.0} rows/s ({} events); OLTP p99 {:.1} ms before, {:.1} ms during: ratio {:.2} (target ≤ 1.2); \
         lag exporting every 2 s: median {:.1} s, max {:.1} s (target ≤ 10 s; the catch-up after the big export {:.1} s); \
         a merchant's year: revenue by day {:.1} ms from the marts vs {:.1} ms on PostgreSQL ({:.1}×), top products {:.1} ms vs {:.1} ms ({:.1}×) (targets ≥ 10×, ≤ 100 ms); answers agree: {}",
        report.export_events_per_second,
        report.export_rows_per_second,
        report.events_exported,
        report.oltp_p99_before_ms,
        report.oltp_p99_during_ms,
        report.oltp_p99_ratio,
        report.lag_median_s,
        report.lag_max_s,
        report.catch_up_lag_s,
        report.revenue_by_day_marts_ms,
        report.revenue_by_day_postgres_ms,
        report.revenue_by_day_ratio,
        report.top_products_marts_ms,
        report.top_products_postgres_ms,
        report.top_products_ratio,
        report.answers_agree,
    );
    Ok(())
}

/// Seeds `lines / 2` confirmed orders with their items and their outbox
/// events (`order.created`, `order.confirmed`), as an import of a year of
/// history would: each merchant in one transaction, ids in time order.
async fn seed(h: &Harness, opts: &Options) -> anyhow::Result<Vec<Uuid>> {
    let orders_each = (opts.lines / 2 / opts.merchants.max(1)).max(1);
    let mut merchants = vec![h.merchant];
    for i in 1..opts.merchants {
        let id = Uuid::now_v7();
        sqlx::query("insert into merchants (id, slug, name) values ($1, $2, $3)")
            .bind(id)
            .bind(format!("analytics-{i}-{}", id.simple()))
            .bind(format!("Merchant {i}"))
            .execute(&h.owner)
            .await?;
        merchants.push(id);
    }
    let bar = indicatif::ProgressBar::new((orders_each * merchants.len() as i64) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "seed [{bar:30}] {pos}/{len} orders {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    for m in &merchants {
        let mut tx = h.owner.begin().await?;
        sqlx::query(
            "insert into products (merchant_id, id, name)
             select $1, gen_random_uuid(), 'Product ' || n from generate_series(1, 20) n",
        )
        .bind(m)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into variants (merchant_id, id, product_id, sku, price_amount, currency)
             select $1, gen_random_uuid(), p.id, 'SKU-' || substr(p.name, 9), 100 * (1 + length(p.name) * 7 % 40), 'EUR'
             from products p where p.merchant_id = $1",
        )
        .bind(m)
        .execute(&mut *tx)
        .await?;
        // One order per step of the year, in time order; a uuid v7-like id
        // from its time, so key order is time order.
        sqlx::query(
            "create temporary table seed_orders on commit drop as
             select (lpad(to_hex(ms), 12, '0') || '7' || substr(md5(n::text || $1::text), 1, 19))::uuid as id,
                    at, n, ms
             from (select n, at, (extract(epoch from at) * 1000)::bigint as ms
                   from (select n, now() - interval '365 days' + (n * (interval '365 days' / $2)) as at
                         from generate_series(1, $2) n) t) s",
        )
        .bind(m)
        .bind(orders_each)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into reservations (merchant_id, id, status, expires_at, created_at, settled_at)
             select $1, id, 'consumed', at, at, at from seed_orders",
        )
        .bind(m)
        .execute(&mut *tx)
        .await?;
        // The lines first, in a temporary table, so each order is written
        // with its total: an UPDATE joining `order_items` after the insert
        // took minutes per merchant once the table held millions of rows
        // (9 minutes for one merchant at 1.6M orders; likely a plan made
        // without statistics on the fresh rows).
        sqlx::query(
            "create temporary table seed_items on commit drop as
             select o.id as order_id, 'SKU-' || (1 + (o.n + 7 * k) % 20) as sku,
                    1 + (o.n + k) % 3 as quantity, 100 * (1 + (o.n * k) % 40) as unit_amount
             from seed_orders o, generate_series(1, 2) k",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into orders (merchant_id, id, status, saga_step, customer_email, payment_method,
                                 reservation_id, total_amount, currency, created_at, updated_at)
             select $1, o.id, 'confirmed', 'confirmed', 'c' || (o.n % 500) || '@example.com',
                    case when o.n % 3 = 0 then 'pm_wallet' else 'pm_card_ok' end,
                    o.id, t.total, 'EUR', o.at, o.at
             from seed_orders o
             join (select order_id, sum(quantity * unit_amount) as total from seed_items group by 1) t
               on t.order_id = o.id",
        )
        .bind(m)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into order_items (merchant_id, order_id, sku, quantity, unit_amount)
             select $1, order_id, sku, quantity, unit_amount from seed_items",
        )
        .bind(m)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into events (merchant_id, id, type, payload, occurred_at)
             select $1, (lpad(to_hex(o.ms), 12, '0') || '7' || substr(md5(o.n::text || t.type || $1::text), 1, 19))::uuid,
                    t.type, jsonb_build_object('order_id', o.id), o.at
             from seed_orders o, (values ('order.created'), ('order.confirmed')) t (type)",
        )
        .bind(m)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        bar.inc(orders_each as u64);
    }
    bar.finish_and_clear();
    Ok(merchants)
}

async fn measure(h: &Harness, opts: &Options, dir: &std::path::Path) -> anyhow::Result<Report> {
    eprintln!(
        "seeding {} order lines for {} merchants",
        opts.lines, opts.merchants
    );
    seed(h, opts).await?;
    eprintln!("vacuum and checkpoint after seeding");
    sqlx::query("vacuum (analyze)").execute(&h.owner).await?;
    sqlx::query("checkpoint").execute(&h.owner).await?;
    for (method, path, body) in [
        (
            "POST",
            "/v1/products",
            json!({"name": "Mug", "variants": [{"sku": "BENCH-MUG", "price": {"amount": 1200, "currency": "EUR"}}]}),
        ),
        (
            "PUT",
            "/v1/inventory/BENCH-MUG",
            json!({"on_hand": 100_000_000}),
        ),
    ] {
        h.send(method, path, body).await?;
    }
    let label = Arc::new(Mutex::new("warmup".to_owned()));
    let load = Load::start(&h.base, &h.key, opts.rate, label.clone());
    tokio::time::sleep(Duration::from_secs(opts.settle_seconds)).await;
    set(&label, "before");
    tokio::time::sleep(Duration::from_secs(opts.settle_seconds)).await;

    set(&label, "exporting");
    let worker = crate::db::connect(
        crate::db::service_role_options(h.owner.connect_options().as_ref(), crate::db::WORKER_ROLE),
        4,
    )
    .await?;
    let layout = crate::analytics::Layout::new(dir);
    let mut exporter = Exporter::new("main", worker, layout);
    exporter.batch = opts.batch;
    exporter.duty_cycle = opts.duty_cycle;
    let started = Instant::now();
    let exported = exporter.run_once(&Quiet).await?;
    let export_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {} events ({} rows, {} files) in {export_seconds:.1} s",
        exported.events, exported.rows, exported.files
    );
    set(&label, "after");
    // The first run carries what the load wrote during the big export: a
    // catch-up, reported apart from the steady lag.
    let catch_up = exporter.run_once(&Quiet).await?;
    let catch_up_lag_s = catch_up.lag().map_or(0.0, |l| l.as_secs_f64());
    let mut lags = Vec::new();
    let fresh_until = Instant::now() + Duration::from_secs(opts.fresh_seconds);
    while Instant::now() < fresh_until {
        // `serve`'s default `--analytics-interval`.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(lag) = exporter.run_once(&Quiet).await?.lag() {
            lags.push(lag.as_secs_f64());
        }
    }
    let samples = load.stop().await;
    // The load's own orders since the export began: exported too, so both
    // sides answer at the same watermark.
    let caught_up = exporter.run_once(&Quiet).await?;
    eprintln!("caught up: {} more events", caught_up.events);
    let p99 = |phase: &str| {
        Percentiles::of(
            samples
                .iter()
                .filter(|s| s.phase == phase)
                .map(|s| s.latency)
                .collect(),
        )
        .p99_ms
    };
    let (before, during) = (p99("before"), p99("exporting"));

    // One merchant's year, both ways.
    let to = chrono::Utc::now().date_naive();
    let from = to - chrono::Duration::days(364);
    let ask = |report: &str, extra: &str| {
        format!(
            "{}/v1/analytics/{report}?from={from}&to={to}{extra}",
            h.base
        )
    };
    let mut marts_revenue = Vec::new();
    let mut marts_top = Vec::new();
    let mut pg_revenue = Vec::new();
    let mut pg_top = Vec::new();
    let (mut revenue_answer, mut top_answer) = (serde_json::Value::Null, serde_json::Value::Null);
    let revenue_sql = "select (o.created_at at time zone 'UTC')::date, count(distinct o.id), sum(i.quantity)::bigint, sum(i.quantity * i.unit_amount)::bigint
         from orders o join order_items i on i.merchant_id = o.merchant_id and i.order_id = o.id
         where o.merchant_id = $1 and o.status = 'confirmed' and o.created_at >= $2 and o.created_at < $3
         group by 1 order by 1";
    let top_sql = "select i.sku, sum(i.quantity)::bigint, sum(i.quantity * i.unit_amount)::bigint
         from orders o join order_items i on i.merchant_id = o.merchant_id and i.order_id = o.id
         where o.merchant_id = $1 and o.status = 'confirmed' and o.created_at >= $2 and o.created_at < $3
         group by 1 order by 3 desc limit 10";
    let (lo, hi) = (
        from.and_hms_opt(0, 0, 0).context("a day")?.and_utc(),
        (to + chrono::Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .context("a day")?
            .and_utc(),
    );
    let mut pg_revenue_rows = Vec::new();
    let mut pg_top_rows = Vec::new();
    for _ in 0..opts.runs.max(1) + 1 {
        let t = Instant::now();
        revenue_answer = h
            .client
            .get(ask("revenue", "&group_by=day"))
            .bearer_auth(&h.key)
            .send()
            .await?
            .json()
            .await?;
        marts_revenue.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        top_answer = h
            .client
            .get(ask("top-products", ""))
            .bearer_auth(&h.key)
            .send()
            .await?
            .json()
            .await?;
        marts_top.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        pg_revenue_rows = sqlx::query_as::<_, (chrono::NaiveDate, i64, i64, i64)>(revenue_sql)
            .bind(h.merchant)
            .bind(lo)
            .bind(hi)
            .fetch_all(&h.owner)
            .await?;
        pg_revenue.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        pg_top_rows = sqlx::query_as::<_, (String, i64, i64)>(top_sql)
            .bind(h.merchant)
            .bind(lo)
            .bind(hi)
            .fetch_all(&h.owner)
            .await?;
        pg_top.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The first run warms caches on both sides: not counted.
    for v in [
        &mut marts_revenue,
        &mut marts_top,
        &mut pg_revenue,
        &mut pg_top,
    ] {
        v.remove(0);
    }
    let marts_days: Vec<(String, i64)> = revenue_answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["key"].as_str().unwrap_or("").to_owned(),
                        r["gross"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let pg_days: Vec<(String, i64)> = pg_revenue_rows
        .iter()
        .map(|(d, _, _, gross)| (d.to_string(), *gross))
        .collect();
    let marts_top_units: Vec<(String, i64)> = top_answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["sku"].as_str().unwrap_or("").to_owned(),
                        r["units"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut pg_top_units: Vec<(String, i64)> = pg_top_rows
        .iter()
        .map(|(sku, units, _)| (sku.clone(), *units))
        .collect();
    // Ties may be ordered differently: compared as sets.
    pg_top_units.sort();
    let mut marts_top_units = marts_top_units;
    marts_top_units.sort();
    let (mr, pr, mt, pt) = (
        median(&marts_revenue),
        median(&pg_revenue),
        median(&marts_top),
        median(&pg_top),
    );
    Ok(Report {
        lines: opts.lines,
        merchants: opts.merchants,
        events_exported: exported.events,
        rows_written: exported.rows,
        files_written: exported.files,
        export_seconds,
        export_events_per_second: exported.events as f64 / export_seconds.max(1e-9),
        export_rows_per_second: exported.rows as f64 / export_seconds.max(1e-9),
        duty_cycle: opts.duty_cycle,
        load: summarise(&samples),
        oltp_p99_before_ms: before,
        oltp_p99_during_ms: during,
        oltp_p99_ratio: during / before.max(1e-9),
        catch_up_lag_s,
        lag_runs: lags.len(),
        lag_median_s: median(&lags),
        lag_max_s: lags.iter().copied().fold(0.0, f64::max),
        revenue_by_day_marts_ms: mr,
        revenue_by_day_postgres_ms: pr,
        revenue_by_day_ratio: pr / mr.max(1e-9),
        top_products_marts_ms: mt,
        top_products_postgres_ms: pt,
        top_products_ratio: pt / mt.max(1e-9),
        answers_agree: marts_days == pg_days && marts_top_units == pg_top_units,
    })
}
