//! `mercato bench checkout`: N concurrent buyers hammer reservations over HTTP,
//! one hot SKU and then many SKUs, with each stock strategy. The baseline is the
//! `optimistic` strategy, one conditional UPDATE per request, measured in the
//! same run. Then whole checkouts (reserve, price, authorize, capture, confirm)
//! on one hot SKU and on many, FIFO admission against the row-lock
//! (`pessimistic`) strategy, with the commits each checkout costs
//! (`pg_stat_database.xact_commit`) and the server's HTTP ceiling on this box (a
//! trivial authenticated GET). Every figure is written to a JSON file.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use super::{fire, interruptible, Harness, Percentiles};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Concurrent buyers.
    #[arg(long, default_value_t = 256)]
    pub buyers: usize,
    /// Reservations per strategy and target (0 skips the reservation-only runs).
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Whole checkouts per strategy and target (0 skips them).
    #[arg(long, default_value_t = 3_000)]
    pub checkouts: usize,
    /// Concurrent buyers in the checkout runs.
    #[arg(long, default_value_t = 64)]
    pub checkout_buyers: usize,
    /// SKUs in the many-SKU runs.
    #[arg(long, default_value_t = 64)]
    pub skus: usize,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-checkout.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
}

#[derive(Debug, Serialize)]
struct RunResult {
    strategy: &'static str,
    target: &'static str,
    requests: usize,
    granted: usize,
    refused: usize,
    failed: usize,
    seconds: f64,
    units_per_second: f64,
    latency: Percentiles,
    /// units/s over the baseline's (optimistic, same target).
    ratio_to_baseline: f64,
}

#[derive(Debug, Serialize)]
struct ScarcityCheck {
    strategy: &'static str,
    stock: i64,
    buyers: usize,
    granted: usize,
    oversold: bool,
}

const STRATEGIES: [&str; 3] = ["optimistic", "pessimistic", "reservation"];

pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.buyers == 0 || opts.skus == 0 || opts.checkout_buyers == 0 {
        bail!("--buyers, --checkout-buyers and --skus must be at least 1");
    }
    let harness = Harness::start(opts.database.database_url.clone(), |_| {}).await?;
    let outcome = interruptible(measure(&opts, &harness)).await;
    harness.shutdown().await;
    outcome
}

async fn measure(opts: &Options, h: &Harness) -> anyhow::Result<()> {
    // Stock that never runs out during the timed runs: every request is a grant.
    let plenty = (opts.requests * STRATEGIES.len() * 2) as i64;
    let mut skus: Vec<String> = (0..opts.skus).map(|i| format!("SKU-{i}")).collect();
    skus.push("HOT".into());
    for sku in &skus {
        create_sku(h, sku, plenty).await?;
    }

    // Warm-up (untimed): open the client's connections and the server's pools, so
    // the first timed run (the baseline) does not pay for them.
    create_sku(h, "WARMUP", plenty).await?;
    hammer(
        h,
        "reservation",
        "warm-up",
        &["WARMUP".to_owned()],
        opts.buyers,
        opts.buyers * 8,
    )
    .await?;

    let mut runs: Vec<RunResult> = Vec::new();
    let targets = if opts.requests == 0 {
        vec![]
    } else {
        vec![("one hot SKU", false), ("many SKUs", true)]
    };
    for (target, spread) in targets {
        for strategy in STRATEGIES {
            let targets: Vec<String> = if spread {
                skus[..opts.skus].to_vec()
            } else {
                vec!["HOT".into()]
            };
            let mut result =
                hammer(h, strategy, target, &targets, opts.buyers, opts.requests).await?;
            let baseline = runs
                .iter()
                .find(|r| r.target == target && r.strategy == "optimistic")
                .map(|r| r.units_per_second)
                .unwrap_or(result.units_per_second);
            result.ratio_to_baseline = result.units_per_second / baseline.max(f64::EPSILON);
            runs.push(result);
        }
    }

    let mut checks = Vec::new();
    for strategy in STRATEGIES {
        let sku = format!("LAST-{strategy}");
        let stock = 50;
        create_sku(h, &sku, stock).await?;
        let buyers = opts.buyers.max(100) * 2;
        let result = hammer(
            h,
            strategy,
            "last units",
            std::slice::from_ref(&sku),
            buyers,
            buyers,
        )
        .await?;
        let level = h
            .send("GET", &format!("/v1/inventory/{sku}"), Value::Null)
            .await?;
        let oversold =
            result.granted as i64 > stock || level["available"].as_i64().unwrap_or(-1) < 0;
        checks.push(ScarcityCheck {
            strategy,
            stock,
            buyers,
            granted: result.granted,
            oversold,
        });
    }

    println!();
    println!(
        "{:<12} {:<12} {:>10} {:>9} {:>9} {:>7} {:>8}",
        "target", "strategy", "units/s", "p50 ms", "p99 ms", "failed", "ratio"
    );
    for r in &runs {
        println!(
            "{:<12} {:<12} {:>10.0} {:>9.1} {:>9.1} {:>7} {:>7.2}x",
            r.target,
            r.strategy,
            r.units_per_second,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.failed,
            r.ratio_to_baseline
        );
    }
    for c in &checks {
        println!(
            "last units, {:<12} {} buyers for {} units: {} granted, oversold: {}",
            c.strategy, c.buyers, c.stock, c.granted, c.oversold
        );
    }
    let full = if opts.checkouts == 0 {
        None
    } else {
        Some(full_checkouts(opts, h).await?)
    };
    let report = json!({
        "benchmark": "checkout",
        "checkouts": full,
        "endpoint": "POST /v1/reservations (quantity 1)",
        "buyers": opts.buyers,
        "requests_per_run": opts.requests,
        "skus_in_spread_runs": opts.skus,
        "baseline": "optimistic: one conditional UPDATE per request",
        "runs": runs,
        "last_unit_checks": checks,
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("figures written to {}", opts.out.display());
    if checks.iter().any(|c| c.oversold) {
        bail!("a strategy oversold");
    }
    Ok(())
}

async fn create_sku(h: &Harness, sku: &str, on_hand: i64) -> anyhow::Result<()> {
    let product = json!({"name": sku, "variants": [{"sku": sku, "price": {"amount": 100, "currency": "EUR"}}]});
    h.send("POST", "/v1/products", product).await?;
    h.send(
        "PUT",
        &format!("/v1/inventory/{sku}"),
        json!({"on_hand": on_hand}),
    )
    .await?;
    Ok(())
}

/// `opts.requests` reservations from `opts.buyers` concurrent buyers, round-robin over `skus`.
async fn hammer(
    h: &Harness,
    strategy: &'static str,
    target: &'static str,
    skus: &[String],
    buyers: usize,
    requests: usize,
) -> anyhow::Result<RunResult> {
    let url = format!("{}/v1/reservations?strategy={strategy}", h.base);
    let bodies: Vec<String> = skus
        .iter()
        .map(|sku| json!({"items": [{"sku": sku, "quantity": 1}], "ttl_seconds": 3600}).to_string())
        .collect();
    let label = format!("{target} / {strategy}");
    let (outcomes, seconds) = fire(
        h,
        reqwest::Method::POST,
        &url,
        Arc::new(bodies),
        requests,
        buyers,
        &label,
    )
    .await?;
    let granted = outcomes.iter().filter(|(s, _)| *s == 201).count();
    let refused = outcomes.iter().filter(|(s, _)| *s == 409).count();
    Ok(RunResult {
        strategy,
        target,
        requests: outcomes.len(),
        granted,
        refused,
        failed: outcomes.len() - granted - refused,
        seconds,
        units_per_second: granted as f64 / seconds,
        latency: Percentiles::of(outcomes.into_iter().map(|(_, d)| d).collect()),
        ratio_to_baseline: 1.0,
    })
}

/// One run of whole checkouts.
#[derive(Debug, Serialize)]
struct CheckoutRun {
    strategy: &'static str,
    target: &'static str,
    checkouts: usize,
    confirmed: usize,
    failed: usize,
    seconds: f64,
    checkouts_per_second: f64,
    latency: Percentiles,
    /// Transactions committed in the benchmark's database per confirmed checkout
    /// (the sandbox payment provider's included: it keeps its state there too).
    commits_per_checkout: f64,
    /// checkouts/s over the `pessimistic` strategy's on the same target.
    ratio_to_pessimistic: f64,
    /// Where a checkout's time goes: mean milliseconds per phase, as the server
    /// measured it (`checkout_phase_seconds`); the rest of the latency is HTTP,
    /// JSON and waiting for a connection or a CPU.
    phase_ms: std::collections::BTreeMap<String, f64>,
    /// CPU milliseconds per confirmed checkout, from the run's start until its
    /// commits were counted (1.5 s after, so the mail and webhook workers'
    /// share of it is in): this process (server and load generator) and
    /// PostgreSQL's.
    cpu_ms_per_checkout: super::cpu::CpuSeconds,
}

/// (sum of seconds, count) per phase of `checkout_phase_seconds` so far.
fn phase_totals() -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut totals = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for line in crate::http::metrics::handle().render().lines() {
        let Some(rest) = line.strip_prefix("checkout_phase_seconds_") else {
            continue;
        };
        let (field, rest) = rest.split_once('{').unwrap_or((rest, ""));
        let phase = rest
            .split_once("phase=\"")
            .and_then(|(_, p)| p.split_once('"'))
            .map(|(p, _)| p.to_owned());
        let value = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok());
        if let (Some(phase), Some(value)) = (phase, value) {
            let entry = totals.entry(phase).or_default();
            match field {
                "sum" => entry.0 = value,
                "count" => entry.1 = value,
                _ => {}
            }
        }
    }
    totals
}

#[derive(Debug, Serialize)]
struct FullCheckouts {
    endpoint: &'static str,
    buyers: usize,
    /// A trivial authenticated GET (`GET /v1/inventory/{sku}`, one indexed read):
    /// what this server answers at most on this box.
    http_ceiling_requests_per_second: f64,
    runs: Vec<CheckoutRun>,
}

/// Transactions committed so far in the benchmark's database. A backend
/// reports its counts when idle, at most once a second: wait that out first.
async fn commits(h: &Harness) -> anyhow::Result<i64> {
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let n: i64 = sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&h.owner)
    .await?;
    Ok(n)
}

async fn full_checkouts(opts: &Options, h: &Harness) -> anyhow::Result<FullCheckouts> {
    let plenty = (opts.checkouts * 4) as i64;
    let hot = vec!["CO-HOT".to_owned()];
    let spread: Vec<String> = (0..opts.skus).map(|i| format!("CO-SKU-{i}")).collect();
    for sku in hot.iter().chain(&spread) {
        create_sku(h, sku, plenty).await?;
    }
    let ceiling_url = format!("{}/v1/inventory/CO-HOT", h.base);
    let ceiling_n = 20_000;
    let (outcomes, seconds) = fire(
        h,
        reqwest::Method::GET,
        &ceiling_url,
        Arc::new(vec![]),
        ceiling_n,
        opts.checkout_buyers,
        "HTTP ceiling (GET)",
    )
    .await?;
    let answered = outcomes.iter().filter(|(s, _)| *s == 200).count();
    let ceiling = answered as f64 / seconds.max(1e-9);
    println!("HTTP ceiling: {ceiling:.0} requests/s (GET /v1/inventory/{{sku}})");

    let mut runs: Vec<CheckoutRun> = Vec::new();
    let mut round = 0;
    for (target, skus) in [("one hot SKU", &hot), ("many SKUs", &spread)] {
        // Alternated, so that a steady drift (the tables grow) weighs on both alike.
        for strategy in ["pessimistic", "reservation", "reservation", "pessimistic"] {
            round += 1;
            let bodies: Vec<String> = (0..opts.checkouts)
                .map(|i| {
                    json!({"customer": {"email": format!("buyer{round}-{i}@example.com")},
                           "items": [{"sku": skus[i % skus.len()], "quantity": 1}],
                           "payment_method": "pm_card_ok"})
                    .to_string()
                })
                .collect();
            let url = format!("{}/v1/checkouts?strategy={strategy}", h.base);
            let before = commits(h).await?;
            let phases_before = phase_totals();
            let cpu_before = super::cpu::CpuSeconds::now();
            let label = format!("checkouts, {target} / {strategy}");
            let (outcomes, seconds) = fire(
                h,
                reqwest::Method::POST,
                &url,
                Arc::new(bodies),
                opts.checkouts,
                opts.checkout_buyers,
                &label,
            )
            .await?;
            let after = commits(h).await?;
            let cpu_after = super::cpu::CpuSeconds::now();
            let phase_ms = phase_totals()
                .into_iter()
                .map(|(phase, (sum, count))| {
                    let (sum0, count0) = phases_before.get(&phase).copied().unwrap_or_default();
                    let n = (count - count0).max(1.0);
                    (phase, (sum - sum0) / n * 1000.0)
                })
                .collect();
            let confirmed = outcomes.iter().filter(|(s, _)| *s == 201).count();
            let run = CheckoutRun {
                strategy,
                target,
                checkouts: outcomes.len(),
                confirmed,
                failed: outcomes.len() - confirmed,
                seconds,
                checkouts_per_second: confirmed as f64 / seconds.max(1e-9),
                latency: Percentiles::of(outcomes.into_iter().map(|(_, d)| d).collect()),
                commits_per_checkout: (after - before) as f64 / confirmed.max(1) as f64,
                ratio_to_pessimistic: 1.0,
                phase_ms,
                cpu_ms_per_checkout: cpu_after.ms_per(cpu_before, confirmed),
            };
            println!(
                "{label}: {:.0} checkouts/s, p50 {:.1} ms, p99 {:.1} ms, {:.1} commits each, {} failed",
                run.checkouts_per_second,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.commits_per_checkout,
                run.failed
            );
            let phases: Vec<String> = run
                .phase_ms
                .iter()
                .map(|(phase, ms)| format!("{phase} {ms:.1}"))
                .collect();
            println!("    mean ms per phase: {}", phases.join(", "));
            println!(
                "    CPU ms per checkout: Mercato and load {:.2}, PostgreSQL {:.2}",
                run.cpu_ms_per_checkout.mercato, run.cpu_ms_per_checkout.postgres
            );
            runs.push(run);
        }
    }
    fn mean(runs: &[CheckoutRun], target: &str, strategy: &str) -> f64 {
        let picked: Vec<f64> = runs
            .iter()
            .filter(|r| r.target == target && r.strategy == strategy)
            .map(|r| r.checkouts_per_second)
            .collect();
        picked.iter().sum::<f64>() / picked.len().max(1) as f64
    }
    for target in ["one hot SKU", "many SKUs"] {
        let baseline = mean(&runs, target, "pessimistic").max(f64::EPSILON);
        let fifo = mean(&runs, target, "reservation");
        for r in runs.iter_mut().filter(|r| r.target == target) {
            r.ratio_to_pessimistic = r.checkouts_per_second / baseline;
        }
        println!(
            "checkouts, {target}: FIFO {:.0}/s against row lock {:.0}/s: {:.2}x (HTTP ceiling {ceiling:.0}/s)",
            fifo,
            baseline,
            fifo / baseline
        );
    }
    Ok(FullCheckouts {
        endpoint:
            "POST /v1/checkouts (quantity 1, pm_card_ok, a new customer each, no Idempotency-Key)",
        buyers: opts.checkout_buyers,
        http_ceiling_requests_per_second: ceiling,
        runs,
    })
}
