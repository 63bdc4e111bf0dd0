//! `mercato demo migration`: seeds legacy orders, runs live HTTP traffic over
//! them, and takes the orders migration through every phase while the traffic
//! runs; prints a JSON summary (requests, failures, shadow mismatches, rows,
//! time per phase, latency before / during / after). It drives the
//! benchmarks' harness and load, so it lives with them.

use std::collections::BTreeMap;
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
    /// Legacy order rows to seed.
    #[arg(long, default_value_t = 100_000)]
    pub rows: i64,
    /// Requests per second of the live load.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of traffic before, after, and at each read-switch step.
    #[arg(long, default_value = "3", value_parser = crate::config::seconds)]
    pub dwell: Duration,
    /// Also write the summary to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
    /// Show progress bars (the command line does; tests do not).
    #[arg(skip = true)]
    pub progress: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<serde_json::Value> {
    let harness = Harness::start(opts.database.database_url.clone(), |c| {
        c.shadow_percent = 50
    })
    .await?;
    let outcome = interruptible(migrate_under_load(&opts, &harness)).await;
    harness.shutdown().await;
    let summary = outcome?;
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(out) = &opts.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    let failed = summary["requests"]["failed"].as_u64().unwrap_or(u64::MAX);
    let mismatches = summary["shadow_reads"]["mismatched"]
        .as_i64()
        .unwrap_or(i64::MAX);
    if failed > 0 || mismatches > 0 {
        anyhow::bail!("{failed} failed requests, {mismatches} shadow mismatches");
    }
    Ok(summary)
}

async fn migrate_under_load(opts: &Options, h: &Harness) -> anyhow::Result<serde_json::Value> {
    let known_ids = seed_legacy_orders(&h.owner, h.merchant, opts.rows, opts.progress).await?;
    let mut plan = Plan::parse(legacy_orders::PLAN)?;
    plan.switch
        .get_or_insert_with(Default::default)
        .min_full_seconds = opts.dwell.as_secs().max(1);
    let mut migrator = Migrator::open(h.owner.clone(), plan).await?;
    migrator.progress = opts.progress;

    let load = Load::start(&h.base, &h.key, known_ids, opts.rate, 8);
    let mut phases: BTreeMap<&str, f64> = BTreeMap::new();
    tokio::time::sleep(opts.dwell).await;
    load.phase("during");

    let findings = migrator.lint().await?;
    anyhow::ensure!(findings.is_empty(), pgshift::Error::Lint(findings));
    let timed = Instant::now();
    migrator.expand().await?;
    phases.insert("expand", timed.elapsed().as_secs_f64());

    let timed = Instant::now();
    let backfill = migrator.backfill().await?;
    phases.insert("backfill", timed.elapsed().as_secs_f64());

    let timed = Instant::now();
    for percent in [10, 50, 100] {
        migrator.switch(percent).await?;
        tokio::time::sleep(opts.dwell).await;
    }
    phases.insert("switch_10_50_100", timed.elapsed().as_secs_f64());

    let timed = Instant::now();
    let validation = migrator.validate().await?;
    phases.insert("validate", timed.elapsed().as_secs_f64());

    let timed = Instant::now();
    migrator.contract().await?;
    phases.insert("contract", timed.elapsed().as_secs_f64());

    load.phase("after");
    tokio::time::sleep(opts.dwell).await;
    let shadow_before_stop = migrator.status().await?;
    let by_phase = load.stop().await;
    let requests: usize = by_phase.values().map(|p| p.requests).sum();
    let failed: usize = by_phase.values().map(|p| p.failed).sum();
    Ok(json!({
        "migration": legacy_orders::MIGRATION,
        "rows_seeded": opts.rows,
        "rows_backfilled": backfill.rows,
        "backfill_rows_per_second": backfill.rows as f64 / backfill.seconds.max(1e-9),
        "backfill_throttled": backfill.throttled,
        "validated_rows": validation.rows,
        "validated_ranges": validation.ranges,
        "requests": {"total": requests, "failed": failed},
        "shadow_reads": {
            "compared": shadow_before_stop.shadow_compared,
            "mismatched": shadow_before_stop.shadow_mismatched,
        },
        "seconds_per_phase": phases,
        "latency_ms": by_phase,
        "final_phase": shadow_before_stop.phase,
    }))
}
