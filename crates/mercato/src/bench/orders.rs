//! `mercato bench orders`: a merchant with many orders and customers, and the
//! first page of `GET /v1/orders` under each filter (and of the customer
//! search), over HTTP against the same listing run raw, in the same run: the
//! store's own statements in a transaction of the service role with the
//! tenant set, no HTTP and no JSON. Prints p50/p99 of both, their ratio and
//! each plan (a sequential scan is named); writes JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use uuid::Uuid;

use super::{Harness, Percentiles};
use crate::checkout::{OrderFilter, RawOrderFilter};
use crate::db::{MerchantId, TenantTx};
use crate::pagination::{Page, PageParams};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Orders of the merchant.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1_000..=20_000_000))]
    pub orders: i64,
    /// Customers they belong to.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(10..=10_000_000))]
    pub customers: i64,
    /// First pages fetched per filter, each way.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub samples: u32,
    /// Where the JSON figures go.
    #[arg(long, default_value = "docs/bench/bench-orders.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
}

#[derive(Serialize)]
struct FilterRun {
    filter: String,
    query: String,
    http: Percentiles,
    raw: Percentiles,
    /// http p99 / raw p99.
    p99_ratio: f64,
    /// p99 of the HTTP samples of each second of the run.
    http_p99_per_second_ms: Vec<f64>,
    rows_on_first_page: usize,
    sequential_scan: bool,
    plan: String,
}

#[derive(Serialize)]
struct Report {
    orders: i64,
    customers: i64,
    samples: u32,
    seed_seconds: f64,
    target_p99_ms: f64,
    runs: Vec<FilterRun>,
    worst_http_p99_ms: f64,
    any_sequential_scan: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let h = Harness::start(opts.database.database_url.clone(), |_| {}).await?;
    let outcome = super::interruptible(measure(&h, &opts)).await;
    h.shutdown().await;
    let report = outcome?;
    super::write_report(&opts.out, &report)?;
    for r in &report.runs {
        eprintln!(
            "{:<28} http p50 {:>7.2} ms p99 {:>7.2} ms | raw p50 {:>7.2} ms p99 {:>7.2} ms | ×{:.1}{}",
            r.filter,
            r.http.p50_ms,
            r.http.p99_ms,
            r.raw.p50_ms,
            r.raw.p99_ms,
            r.p99_ratio,
            if r.sequential_scan { " | SEQ SCAN" } else { "" }
        );
    }
    eprintln!(
        "worst first-page p99 over HTTP {:.2} ms (target {:.0} ms); sequential scans: {}",
        report.worst_http_p99_ms,
        report.target_p99_ms,
        if report.any_sequential_scan {
            "yes"
        } else {
            "none"
        }
    );
    Ok(())
}

/// Customers, then orders in chunks (each with its reservation and two lines
/// of 400 SKUs), spread over a year, statuses and shipping as a shop has them.
async fn seed(h: &Harness, opts: &Options) -> anyhow::Result<()> {
    sqlx::query(
        "insert into customers (merchant_id, id, email, email_key, name, search_name)
         select $1, md5('customer' || g || $1::text)::uuid, 'customer' || g || '@example.com',
                'customer' || g || '@example.com', 'Customer ' || g, 'customer ' || g
         from generate_series(0, $2 - 1) g",
    )
    .bind(h.merchant)
    .bind(opts.customers)
    .execute(&h.owner)
    .await
    .context("seeding customers")?;
    const CHUNK: i64 = 50_000;
    let bar = ProgressBar::new(opts.orders as u64);
    bar.set_style(
        ProgressStyle::with_template("seed orders [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut done = 0;
    while done < opts.orders {
        let n = CHUNK.min(opts.orders - done);
        sqlx::query(
            "with o as (
                 select g as n,
                        now() - make_interval(secs => ($3 - g) * (31536000.0 / $3)) as at,
                        (lpad(to_hex((extract(epoch from now() - make_interval(secs => ($3 - g) * (31536000.0 / $3))) * 1000)::bigint), 12, '0')
                         || '7' || substr(md5(g::text || $1::text), 1, 3) || '8'
                         || substr(md5(g::text || $1::text), 4, 15))::uuid as id,
                        g % $4 as c
                 from generate_series($2 + 1, $2 + $5) g
             ), r as (
                 insert into reservations (merchant_id, id, status, expires_at, created_at, settled_at)
                 select $1, o.id, 'consumed', o.at, o.at, o.at from o
             ), ins as (
                 insert into orders (merchant_id, id, status, saga_step, customer_email, customer_id,
                                     payment_method, reservation_id, total_amount, currency,
                                     created_at, updated_at, fulfillment_status)
                 select $1, o.id,
                        case when n % 50 = 0 then 'cancelled' when n % 20 = 0 then 'failed'
                             when n % 997 = 0 then 'pending' else 'confirmed' end,
                        case when n % 50 = 0 then 'confirmed' when n % 20 = 0 then 'compensated'
                             when n % 997 = 0 then 'reserved' else 'confirmed' end,
                        'customer' || o.c || '@example.com', md5('customer' || o.c || $1::text)::uuid,
                        'pm_card_ok', o.id, 2000, 'EUR', o.at, o.at,
                        case when n % 7 = 0 then 'partially_fulfilled' when n % 3 = 0 then 'unfulfilled'
                             else 'fulfilled' end
                 from o
             )
             insert into order_items (merchant_id, order_id, sku, quantity, unit_amount)
             select $1, o.id, 'SKU-' || ((n + k * 131) % 400), 1, 1000 from o, generate_series(1, 2) k",
        )
        .bind(h.merchant)
        .bind(done)
        .bind(opts.orders)
        .bind(opts.customers)
        .bind(n)
        .execute(&h.owner)
        .await
        .context("seeding orders")?;
        done += n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    sqlx::raw_sql("analyze customers; analyze orders; analyze order_items; analyze reservations;")
        .execute(&h.owner)
        .await?;
    Ok(())
}

fn per_second_p99(samples: &[(Duration, Duration)]) -> Vec<f64> {
    let mut seconds: Vec<Vec<Duration>> = Vec::new();
    for (at, latency) in samples {
        let s = at.as_secs() as usize;
        if seconds.len() <= s {
            seconds.resize(s + 1, Vec::new());
        }
        seconds[s].push(*latency);
    }
    seconds
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| Percentiles::of(s).p99_ms)
        .collect()
}

async fn measure(h: &Harness, opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    seed(h, opts).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let customer: Uuid =
        sqlx::query_scalar("select id from customers where merchant_id = $1 and email_key = $2")
            .bind(h.merchant)
            .bind(format!("customer{}@example.com", opts.customers / 2))
            .fetch_one(&h.owner)
            .await
            .context("a customer id")?;
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let month_ago = (chrono::Utc::now() - chrono::Duration::days(30)).to_rfc3339();
    let month_ago_next = (chrono::Utc::now() - chrono::Duration::days(29)).to_rfc3339();
    let email = format!("customer{}@example.com", opts.customers / 3);
    let customer_text = customer.to_string();
    let cases: Vec<(&str, RawOrderFilter<'_>)> = vec![
        ("none", RawOrderFilter::default()),
        (
            "status=cancelled",
            RawOrderFilter {
                status: Some("cancelled"),
                ..Default::default()
            },
        ),
        (
            "status=confirmed",
            RawOrderFilter {
                status: Some("confirmed"),
                ..Default::default()
            },
        ),
        (
            "fulfillment_status=partially_fulfilled",
            RawOrderFilter {
                fulfillment_status: Some("partially_fulfilled"),
                ..Default::default()
            },
        ),
        (
            "customer_id",
            RawOrderFilter {
                customer_id: Some(&customer_text),
                ..Default::default()
            },
        ),
        (
            "email",
            RawOrderFilter {
                email: Some(&email),
                ..Default::default()
            },
        ),
        (
            "sku",
            RawOrderFilter {
                sku: Some("SKU-17"),
                ..Default::default()
            },
        ),
        (
            "created in the last day",
            RawOrderFilter {
                created_from: Some(&yesterday),
                ..Default::default()
            },
        ),
        (
            "created one day a month ago",
            RawOrderFilter {
                created_from: Some(&month_ago),
                created_to: Some(&month_ago_next),
                ..Default::default()
            },
        ),
        (
            "unfulfilled + sku",
            RawOrderFilter {
                fulfillment_status: Some("unfulfilled"),
                sku: Some("SKU-42"),
                ..Default::default()
            },
        ),
    ];
    let page = Page::parse(&PageParams {
        limit: None,
        cursor: None,
    })
    .map_err(|e| anyhow::anyhow!("page: {e:?}"))?;
    let merchant = MerchantId(h.merchant);
    let mut runs = Vec::new();
    for (name, raw) in &cases {
        let filter = OrderFilter::parse(raw).map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        let params = query_params(raw);
        let query = params
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&");
        let url = format!("{}/v1/orders", h.base);
        let mut http = Vec::new();
        let mut rows = 0;
        let run_started = Instant::now();
        for _ in 0..opts.samples {
            let sent = Instant::now();
            let resp = h
                .client
                .get(&url)
                .query(&params)
                .bearer_auth(&h.key)
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            if !status.is_success() {
                anyhow::bail!("{name}: {status} {body}");
            }
            http.push((sent - run_started, sent.elapsed()));
            rows = body["data"].as_array().map_or(0, Vec::len);
        }
        let mut raw_samples = Vec::new();
        for _ in 0..opts.samples {
            let sent = Instant::now();
            let mut tx = TenantTx::begin(&h.app_pool, merchant).await?;
            crate::checkout::list_orders(&mut tx, &filter, page).await?;
            tx.commit().await?;
            raw_samples.push(sent.elapsed());
        }
        let mut tx = TenantTx::begin(&h.app_pool, merchant).await?;
        let plan = crate::checkout::explain_order_ids(&mut tx, &filter, page).await?;
        tx.commit().await?;
        runs.push(run_of(name, query, &http, raw_samples, rows, plan));
    }
    // The customer search, the same way.
    let q = format!("customer{}", opts.customers / 7);
    let url = format!("{}/v1/customers?q={q}", h.base);
    let mut http = Vec::new();
    let mut rows = 0;
    let run_started = Instant::now();
    for _ in 0..opts.samples {
        let sent = Instant::now();
        let body: serde_json::Value = h
            .client
            .get(&url)
            .bearer_auth(&h.key)
            .send()
            .await?
            .json()
            .await?;
        http.push((sent - run_started, sent.elapsed()));
        rows = body["data"].as_array().map_or(0, Vec::len);
    }
    let query =
        crate::customers::CustomerQuery::parse(Some(&q)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut raw_samples = Vec::new();
    for _ in 0..opts.samples {
        let sent = Instant::now();
        let mut tx = TenantTx::begin(&h.app_pool, merchant).await?;
        crate::customers::list(&mut tx, &query, page).await?;
        tx.commit().await?;
        raw_samples.push(sent.elapsed());
    }
    runs.push(run_of(
        "customers q (prefix)",
        format!("q={q}"),
        &http,
        raw_samples,
        rows,
        "(the customers list: the plan test in tests/api/customers.rs holds it to its indexes)"
            .to_owned(),
    ));
    let worst = runs.iter().map(|r| r.http.p99_ms).fold(0.0, f64::max);
    let any_seq = runs.iter().any(|r| r.sequential_scan);
    Ok(Report {
        orders: opts.orders,
        customers: opts.customers,
        samples: opts.samples,
        seed_seconds,
        target_p99_ms: 50.0,
        runs,
        worst_http_p99_ms: worst,
        any_sequential_scan: any_seq,
    })
}

fn run_of(
    name: &str,
    query: String,
    http: &[(Duration, Duration)],
    raw: Vec<Duration>,
    rows: usize,
    plan: String,
) -> FilterRun {
    let http_p = Percentiles::of(http.iter().map(|(_, l)| *l).collect());
    let raw_p = Percentiles::of(raw);
    FilterRun {
        filter: name.to_owned(),
        query,
        p99_ratio: if raw_p.p99_ms > 0.0 {
            http_p.p99_ms / raw_p.p99_ms
        } else {
            0.0
        },
        http: http_p,
        raw: raw_p,
        http_p99_per_second_ms: per_second_p99(http),
        rows_on_first_page: rows,
        sequential_scan: plan.contains("Seq Scan"),
        plan,
    }
}

/// The filter as query parameters (reqwest encodes them).
fn query_params<'a>(raw: &RawOrderFilter<'a>) -> Vec<(&'static str, &'a str)> {
    [
        ("status", raw.status),
        ("fulfillment_status", raw.fulfillment_status),
        ("email", raw.email),
        ("customer_id", raw.customer_id),
        ("sku", raw.sku),
        ("created_from", raw.created_from),
        ("created_to", raw.created_to),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}
