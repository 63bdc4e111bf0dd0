//! `mercato bench neighbours`: merchant B runs a steady, modest load (reads and
//! checkouts) and its latency is measured alone — the baseline — then while
//! merchant A, a merchant of B's size, trades at its plan (what isolation
//! cannot take away: A's admitted requests share the machine), then while A
//! floods at 20 times its plan. Prints B's p99 in each, the ratio to alone,
//! B's 429s and 5xx (target: none), and A's share of 429s; writes JSON.
//!
//! The flood is sent from its own thread and runtime, so the time B's
//! measuring tasks wait is the server's, not a queue behind the flood's own
//! client tasks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use super::{interruptible, Harness, Percentiles, ADMIN};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds of each phase (B alone, then B with A's flood).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds of the two phases, alternating; each phase's figures pool its
    /// rounds (a p99 of one short phase is a handful of requests: one
    /// checkpoint or scheduler hiccup moves it more than the flood does).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// B's requests per second (one in five a checkout).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// A's plan in requests per second, in B's mix: four fifths reads, one
    /// fifth checkouts (A floods at 20 times it, in the same mix).
    #[arg(long, default_value_t = 50)]
    pub flooder_plan: u32,
    #[arg(long, default_value = "docs/bench/bench-neighbours.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
}

#[derive(Serialize)]
struct Phase {
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rate_limited: usize,
    server_errors: usize,
    failed: usize,
}

#[derive(Serialize)]
struct Report {
    seconds: u64,
    rounds: u32,
    /// Each round's B p99 with the flood / alone, for the spread.
    round_ratios: Vec<f64>,
    b_rate: u32,
    flooder_plan_per_second: u32,
    flooder_rate: u32,
    b_alone: Phase,
    /// B while A sends exactly its plan.
    b_with_a_at_plan: Phase,
    b_with_flood: Phase,
    /// B's p99 with the flood / alone (target ≤ 1.5).
    p99_ratio: f64,
    /// B's p99 with A at its plan / alone: the share of the ratio that is A's
    /// admitted load, not the flood.
    p99_ratio_a_at_plan: f64,
    flooder_requests: usize,
    flooder_rate_limited_share: f64,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let h = Harness::start(opts.database.database_url.clone(), |_| {}).await?;
    let outcome = interruptible(measure(&h, &opts)).await;
    h.shutdown().await;
    let report = outcome?;
    super::write_report(&opts.out, &report)?;
    eprintln!(
        "B p99 {:.1} ms alone, {:.1} ms with A at its plan, {:.1} ms with A flooding at {}/s: ratio {:.2} (target ≤ 1.5); B got {} 429s and {} 5xx; {:.0} % of A's requests were 429",
        report.b_alone.p99_ms,
        report.b_with_a_at_plan.p99_ms,
        report.b_with_flood.p99_ms,
        report.flooder_rate,
        report.p99_ratio,
        report.b_with_flood.rate_limited,
        report.b_with_flood.server_errors,
        report.flooder_rate_limited_share * 100.0
    );
    Ok(())
}

async fn measure(h: &Harness, opts: &Options) -> anyhow::Result<Report> {
    // B: a catalog, stock for every checkout, and a plan well above its load.
    h.send(
        "POST",
        "/v1/products",
        json!({"name": "Mug", "variants": [{"sku": "MUG", "price": {"amount": 1200, "currency": "EUR"}}]}),
    )
    .await?;
    h.send("PUT", "/v1/inventory/MUG", json!({"on_hand": 10_000_000}))
        .await?;
    let plan = |reads: u32, checkouts: u32| {
        json!({"rate_limits": {
            "reads": {"per_second": reads, "burst": reads},
            "writes": {"per_second": reads, "burst": reads},
            "checkout": {"per_second": checkouts, "burst": checkouts},
            "concurrent": 8
        }})
    };
    patch(
        h,
        &h.merchant.to_string(),
        plan(opts.rate * 4, opts.rate * 4),
    )
    .await?;
    // A: another merchant with a modest plan.
    let a = super::send(
        &h.client,
        "POST",
        &format!("{}/v1/merchants", h.base),
        ADMIN,
        json!({"name": "Flooder", "slug": format!("flood-{}", uuid::Uuid::now_v7().simple())}),
    )
    .await?;
    let a_key = a["api_key"].as_str().context("api key")?.to_owned();
    let a_id = a["id"].as_str().context("id")?.to_owned();
    // In B's mix, so 20 times the plan is 20 times each class's rate.
    let a_plan = opts.flooder_plan.max(5);
    patch(h, &a_id, plan(a_plan * 4 / 5, a_plan / 5)).await?;

    let duration = Duration::from_secs(opts.seconds);
    let flood_rate = a_plan * 20;
    let (mut b_alone, mut b_at_plan, mut b_with_flood, mut flood) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut round_ratios = Vec::new();
    let b = || {
        steady(
            h.client.clone(),
            h.base.clone(),
            h.key.clone(),
            opts.rate,
            duration,
        )
    };
    for _ in 0..opts.rounds.max(1) {
        let alone = b().await;
        let a = on_own_runtime(h.base.clone(), a_key.clone(), a_plan, duration);
        let at_plan = b().await;
        a.await??;
        let a = on_own_runtime(h.base.clone(), a_key.clone(), flood_rate, duration);
        let with_flood = b().await;
        let flooded = a.await??;
        let p99 =
            |o: &[(u16, Duration)]| Percentiles::of(o.iter().map(|(_, d)| *d).collect()).p99_ms;
        round_ratios.push(p99(&with_flood) / p99(&alone).max(1e-9));
        b_alone.extend(alone);
        b_at_plan.extend(at_plan);
        b_with_flood.extend(with_flood);
        flood.extend(flooded);
    }
    let b_alone = summary(b_alone);
    let b_with_a_at_plan = summary(b_at_plan);
    let b_with_flood = summary(b_with_flood);
    let flooder_requests = flood.len();
    let flooder_limited = flood.iter().filter(|(s, _)| *s == 429).count();
    Ok(Report {
        seconds: opts.seconds,
        rounds: opts.rounds.max(1),
        round_ratios,
        b_rate: opts.rate,
        flooder_plan_per_second: a_plan,
        flooder_rate: flood_rate,
        p99_ratio: b_with_flood.p99_ms / b_alone.p99_ms.max(1e-9),
        p99_ratio_a_at_plan: b_with_a_at_plan.p99_ms / b_alone.p99_ms.max(1e-9),
        b_alone,
        b_with_a_at_plan,
        b_with_flood,
        flooder_requests,
        flooder_rate_limited_share: flooder_limited as f64 / flooder_requests.max(1) as f64,
    })
}

/// A's load, sent from a thread of its own with its own runtime and client.
fn on_own_runtime(
    base: String,
    key: String,
    rate: u32,
    duration: Duration,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<Vec<(u16, Duration)>>> {
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(1024)
                        .build()?;
                    Ok(steady(client, base, key, rate, duration).await)
                })
            });
        let _ = done.send(result);
    });
    outcome
}

async fn patch(h: &Harness, merchant: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let resp = h
        .client
        .patch(format!("{}/v1/merchants/{merchant}", h.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "setting a plan answered {}",
        resp.status()
    );
    Ok(())
}

/// An open-loop load: a request every 1/`rate` s for `duration` (each sent on
/// time whatever the earlier ones are doing); one in five a checkout.
async fn steady(
    client: reqwest::Client,
    base: String,
    key: String,
    rate: u32,
    duration: Duration,
) -> Vec<(u16, Duration)> {
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let key: Arc<str> = Arc::from(key);
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0u64;
    while started.elapsed() < duration {
        tick.tick().await;
        i += 1;
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        let checkout = i.is_multiple_of(5);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let request = if checkout {
                client.post(format!("{base}/v1/checkouts")).json(&json!({
                    "customer": {"email": format!("c{i}@example.com")},
                    "items": [{"sku": "MUG", "quantity": 1}],
                    "payment_method": "pm_card_ok"
                }))
            } else {
                client.get(format!("{base}/v1/products?limit=10"))
            };
            let status = super::drained_status(request.bearer_auth(&*key).send().await).await;
            (status, sent.elapsed())
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(o) = task.await {
            outcomes.push(o);
        }
    }
    outcomes
}

fn summary(outcomes: Vec<(u16, Duration)>) -> Phase {
    let rate_limited = outcomes.iter().filter(|(s, _)| *s == 429).count();
    let server_errors = outcomes.iter().filter(|(s, _)| *s >= 500).count();
    let failed = outcomes.iter().filter(|(s, _)| *s == 0).count();
    let p = Percentiles::of(outcomes.iter().map(|(_, d)| *d).collect());
    Phase {
        requests: outcomes.len(),
        p50_ms: p.p50_ms,
        p99_ms: p.p99_ms,
        max_ms: p.max_ms,
        rate_limited,
        server_errors,
        failed,
    }
}
