//! `mercato bench reprice`: the remediation scan end to end (read each stored
//! order, re-price it with the fixed calculator, write its adjustment) over N
//! orders of a seeded incident, against the raw baseline measured in the same
//! run: the pure calculator re-pricing the same recorded carts in memory (one
//! core). Prints orders/s of both and their ratio; writes JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use pricing::CalculatorVersion;
use serde::Serialize;

use crate::db::{MerchantId, TenantTx};
use crate::payments::SandboxProvider;
use crate::pricing::PricingInputs;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Stored orders to scan.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub orders: i64,
    /// Orders per scan transaction.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
    /// Where the JSON figures go.
    #[arg(long, default_value = "docs/bench/bench-reprice.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
}

#[derive(Serialize)]
struct Report {
    orders: i64,
    batch: i64,
    seed_seconds: f64,
    scan_seconds: f64,
    scan_orders_per_second: f64,
    /// The pure calculator over the same recorded inputs, one core (JSON parsed beforehand).
    pure_orders_per_second: f64,
    /// The same, counting the parse of each order's recorded JSON.
    parse_and_price_orders_per_second: f64,
    /// pure / scan: what the database and the writes cost.
    pure_to_scan_ratio: f64,
    target_orders_per_second: f64,
    underpaid: i64,
    overpaid: i64,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("mercato-bench-{}", uuid::Uuid::now_v7().simple()));
    let db =
        crate::db::command_database(opts.database.database_url.as_deref(), &scratch, 4).await?;
    let outcome = super::interruptible(measure(&db.owner, &opts)).await;
    db.owner.close().await;
    drop(db);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = outcome?;
    super::write_report(&opts.out, &report)?;
    eprintln!(
        "scan {:.0} orders/s end to end; pure re-price {:.0} orders/s ({:.0} with the JSON parse); ratio {:.1}; target {:.0}",
        report.scan_orders_per_second,
        report.pure_orders_per_second,
        report.parse_and_price_orders_per_second,
        report.pure_to_scan_ratio,
        report.target_orders_per_second
    );
    Ok(())
}

async fn measure(owner: &sqlx::PgPool, opts: &Options) -> anyhow::Result<Report> {
    let seeding = Instant::now();
    let seed_opts = crate::demo::incident::Options {
        orders: opts.orders,
        weeks: 6,
        seed: 42,
        json: true,
        database: Default::default(),
        data_dir: PathBuf::new(),
    };
    let facts = crate::demo::incident::seed(owner, &seed_opts, true).await?;
    let seed_seconds = seeding.elapsed().as_secs_f64();
    let merchant = MerchantId(facts.merchant_id);
    // A window over every order seeded: the scan re-prices all of them.
    let now = chrono::Utc::now();
    let (from, to) = (
        now - chrono::Duration::days(400),
        now - chrono::Duration::hours(1),
    );
    let cells = crate::cells::Cells::of_owners(owner.clone(), []);
    let db = cells.merchant_db_for_job(merchant).await?;
    let incident = crate::remediation::open(&db, from, to, "v3", "v2").await?;
    sqlx::query("checkpoint").execute(owner).await.ok();

    let provider = SandboxProvider::new(owner.clone(), std::time::Duration::from_secs(1));
    let started = Instant::now();
    let scan = crate::remediation::scan(&db, incident, &provider, opts.batch, |_, _| {}).await?;
    let scan_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        scan.scanned == opts.orders,
        "scanned {} of {} orders",
        scan.scanned,
        opts.orders
    );
    let report = crate::remediation::report(&db, incident).await?;

    // The baseline: the same recorded orders, re-priced in memory.
    let mut tx = TenantTx::begin(owner, merchant).await?;
    let rows =
        crate::checkout::confirmed_orders_between(&mut tx, from, to, None, opts.orders).await?;
    let rules = crate::pricing::revision(&mut tx, 1)
        .await?
        .context("the demo's rules")?
        .rules;
    tx.commit().await?;
    let texts: Vec<String> = rows.into_iter().filter_map(|r| r.pricing_inputs).collect();
    let (parse_and_price, recorded) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut recorded = Vec::with_capacity(texts.len());
        let mut total = 0i64;
        for text in &texts {
            let order: PricingInputs = serde_json::from_str(text).expect("stored pricing parses");
            total += order
                .reprice(&rules, CalculatorVersion::V2)
                .map(|b| b.total.amount)
                .unwrap_or(0);
            recorded.push(order);
        }
        std::hint::black_box(total);
        let rate = texts.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        (rate, (recorded, rules))
    })
    .await?;
    let (recorded, rules) = recorded;
    let pure = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut total = 0i64;
        for order in &recorded {
            total += order
                .reprice(&rules, CalculatorVersion::V2)
                .map(|b| b.total.amount)
                .unwrap_or(0);
        }
        std::hint::black_box(total);
        recorded.len() as f64 / started.elapsed().as_secs_f64().max(1e-9)
    })
    .await?;
    let scan_rate = scan.scanned as f64 / scan_seconds.max(1e-9);
    Ok(Report {
        orders: opts.orders,
        batch: opts.batch,
        seed_seconds,
        scan_seconds,
        scan_orders_per_second: scan_rate,
        pure_orders_per_second: pure,
        parse_and_price_orders_per_second: parse_and_price,
        pure_to_scan_ratio: pure / scan_rate.max(1e-9),
        target_orders_per_second: 50_000.0,
        underpaid: report.underpaid.orders,
        overpaid: report.overpaid.orders,
    })
}
