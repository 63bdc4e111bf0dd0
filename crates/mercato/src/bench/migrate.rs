//! `mercato bench migrate`: backfill throughput under live load against one
//! plain `INSERT … SELECT` of the same data with no load, in the same run, and
//! the live load's p99 before versus during the backfill.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgshift::{Migrator, Plan};
use serde_json::json;

use super::load::{seed_legacy_orders, Load};
use super::{interruptible, Harness};
use crate::legacy_orders;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Legacy order rows to migrate.
    #[arg(long, default_value_t = 5_000_000)]
    pub rows: i64,
    /// Requests per second of the live load.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-migrate.json")]
    pub out: PathBuf,
    /// Benchmark against this database (schema owner) instead of a private cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let harness = Harness::start(opts.database_url.clone(), |c| c.shadow_percent = 0).await?;
    let outcome = interruptible(measure(&opts, &harness)).await;
    harness.shutdown().await;
    outcome
}

async fn measure(opts: &Options, h: &Harness) -> anyhow::Result<()> {
    println!("seeding {} legacy orders", opts.rows);
    let max_id = seed_legacy_orders(&h.owner, h.merchant, opts.rows, true).await?;
    let plan = Plan::parse(legacy_orders::PLAN)?;
    let transform = plan.backfill.transform.clone();
    let mut migrator = Migrator::open(h.owner.clone(), plan).await?;
    migrator.progress = true;
    migrator.expand().await?;

    // Baseline: the whole copy as one statement, nothing else running.
    println!("plain INSERT … SELECT of {} rows, no load", opts.rows);
    let started = Instant::now();
    let mut tx = h.owner.begin().await?;
    for statement in &transform {
        sqlx::query(statement)
            .bind(i64::MIN)
            .bind(i64::MAX)
            .execute(&mut *tx)
            .await
            .context("plain copy")?;
    }
    tx.commit().await?;
    let plain_seconds = started.elapsed().as_secs_f64();
    sqlx::query!("truncate order_records, customers")
        .execute(&h.owner)
        .await?;
    sqlx::query!("vacuum analyze legacy_orders")
        .execute(&h.owner)
        .await?;

    let load = Load::start(&h.base, &h.key, max_id, opts.rate, 8);
    tokio::time::sleep(Duration::from_secs(5)).await;
    load.phase("during");
    let report = migrator.backfill().await?;
    load.phase("after");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_phase = load.stop().await;
    migrator.abort().await?;

    let plain_rate = opts.rows as f64 / plain_seconds;
    let backfill_rate = report.rows as f64 / report.seconds.max(1e-9);
    let p99 = |phase: &str| by_phase.get(phase).map(|p| p.latency.p99_ms).unwrap_or(0.0);
    let failed: usize = by_phase.values().map(|p| p.failed).sum();
    let summary = json!({
        "benchmark": "migrate",
        "rows": opts.rows,
        "load_rate_per_second": opts.rate,
        "plain_copy": {"seconds": plain_seconds, "rows_per_second": plain_rate},
        "backfill_under_load": {
            "seconds": report.seconds, "rows": report.rows, "rows_per_second": backfill_rate,
            "batches": report.batches, "throttled": report.throttled,
        },
        "backfill_to_plain_ratio": backfill_rate / plain_rate,
        "p99_ms_before": p99("before"),
        "p99_ms_during": p99("during"),
        "p99_during_to_before_ratio": p99("during") / p99("before").max(1e-9),
        "failed_requests": failed,
        "load": by_phase,
    });
    println!(
        "plain copy {plain_rate:.0} rows/s; backfill under load {backfill_rate:.0} rows/s ({:.2}x, target >= 0.5)",
        backfill_rate / plain_rate
    );
    println!(
        "load p99 before {:.1} ms, during {:.1} ms ({:.2}x, target <= 1.2); failed requests {failed}",
        p99("before"),
        p99("during"),
        p99("during") / p99("before").max(1e-9)
    );
    std::fs::write(&opts.out, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("figures written to {}", opts.out.display());
    Ok(())
}
