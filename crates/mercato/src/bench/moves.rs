//! `mercato bench move`: a merchant with many orders is moved to a cell on a
//! second PostgreSQL cluster while it and a neighbour each run a steady load
//! (reads and checkouts). Prints the copy's rows/s, the cutover's write pause
//! (and the moving merchant's worst latency in it), failed requests, and the
//! neighbour's p99 before the move against during it; writes JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};

use super::{interruptible, median, Harness, Percentiles, ADMIN};
use crate::cells::mover::{self, Phase, Pools, Progress};
use crate::config::CellSpec;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Orders of the merchant that moves (each with its items, reservation and payment).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub orders: i64,
    /// Requests per second of each merchant's load (one in five a checkout).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of load to warm up before the baseline, and after the move.
    #[arg(long, default_value_t = 30)]
    pub settle_seconds: u64,
    /// Seconds of the neighbour's baseline, before the move.
    #[arg(long, default_value_t = 120)]
    pub baseline_seconds: u64,
    /// Stop at `moved`, leaving the source's copy (`tenants move --keep-source`):
    /// the figures above do not need the cleanup, which takes as long as the copy.
    #[arg(long)]
    pub keep_source: bool,
    /// The mover's duty cycle (`mercato tenants --duty-cycle`).
    #[arg(long, default_value_t = mover::DEFAULT_DUTY_CYCLE)]
    pub duty_cycle: f64,
    #[arg(long, default_value = "docs/bench/bench-move.json")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Report {
    orders: i64,
    duty_cycle: f64,
    /// The source's copy was kept: no cleanup figures.
    keep_source: bool,
    rows_copied: i64,
    copy_seconds: f64,
    copy_rows_per_second: f64,
    changes_applied: i64,
    /// The cutover's gate closed → opened, as the mover measured it.
    write_pause_ms: f64,
    /// What the cutover spent its time on (`tenant_moves.cutover`).
    cutover: Option<serde_json::Value>,
    /// The moving merchant's requests sent while the move cut over.
    moving_during_cutover: Percentiles,
    rows_cleaned: i64,
    cleanup_seconds: f64,
    moving_failed: usize,
    neighbour_failed: usize,
    /// Per phase label, for each merchant.
    moving: BTreeMap<String, PhaseFigures>,
    neighbour: BTreeMap<String, PhaseFigures>,
    neighbour_p99_before_ms: f64,
    neighbour_p99_during_ms: f64,
    /// During / before (target ≤ 1.5).
    neighbour_p99_ratio: f64,
    /// The neighbour's p99 in each whole 30 s window of the baseline and of
    /// the move: one slow moment (a checkpoint, a stall of the machine)
    /// shows as one window, not as the whole phase's p99.
    neighbour_window_p99_before_ms: Vec<f64>,
    neighbour_window_p99_during_ms: Vec<f64>,
    /// The median window's p99, during / before: the ratio that one slow
    /// moment does not decide.
    neighbour_median_window_p99_ratio: f64,
    /// Checkpoints the main cluster made in the baseline and during the move.
    checkpoints_before: i64,
    checkpoints_during: i64,
}

/// The length of a window of `window_p99s`.
const WINDOW: Duration = Duration::from_secs(30);

/// The p99 of each whole `WINDOW` of the samples labelled with one of
/// `phases`, counted from the first of them.
fn window_p99s(samples: &[Sample], phases: &[&str]) -> Vec<f64> {
    let picked: Vec<&Sample> = samples
        .iter()
        .filter(|s| phases.contains(&s.phase.as_str()))
        .collect();
    let (Some(first), Some(last)) = (
        picked.iter().map(|s| s.sent).min(),
        picked.iter().map(|s| s.sent).max(),
    ) else {
        return Vec::new();
    };
    let whole = ((last - first).as_secs_f64() / WINDOW.as_secs_f64()).floor() as usize;
    let mut windows: Vec<Vec<Duration>> = vec![Vec::new(); whole];
    for s in picked {
        let at = ((s.sent - first).as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        if let Some(w) = windows.get_mut(at) {
            w.push(s.latency);
        }
    }
    windows
        .into_iter()
        .map(|w| Percentiles::of(w).p99_ms)
        .collect()
}

/// Checkpoints the cluster has made since its statistics were reset.
async fn checkpoints(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("select checkpoints_timed + checkpoints_req from pg_stat_bgwriter")
            .fetch_one(pool)
            .await?,
    )
}

#[derive(Serialize, Clone)]
pub(crate) struct PhaseFigures {
    requests: usize,
    failed: usize,
    #[serde(flatten)]
    latency: Percentiles,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!(
        "mercato-bench-cell-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let dir = scratch.clone();
    let cluster = tokio::task::spawn_blocking(move || localpg::LocalPg::start_ephemeral(&dir))
        .await?
        .context("starting the second cluster")?;
    let admin = crate::db::connect(cluster.url("postgres").parse()?, 1).await?;
    sqlx::query("create database cell_big")
        .execute(&admin)
        .await?;
    admin.close().await;
    let cell_url = cluster.url("cell_big");
    let spec = CellSpec {
        name: "big".into(),
        url: cell_url.clone(),
    };
    let h = Harness::start(None, move |c| {
        c.cells = vec![spec];
        c.payment_delay = Duration::from_millis(20);
        c.max_connections = 40;
    })
    .await?;
    let outcome = interruptible(measure(&h, &opts, &cell_url)).await;
    h.shutdown().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = outcome?;
    super::write_report(&opts.out, &report)?;
    eprintln!(
        "copy {:.0} rows/s ({} rows); write pause {:.0} ms (moving merchant's worst request in it {:.0} ms); failed requests: {} moving, {} neighbour; neighbour p99 {:.1} ms before, {:.1} ms during: ratio {:.2} (target ≤ 1.5); median 30 s window's p99: ratio {:.2}; checkpoints {} before, {} during",
        report.copy_rows_per_second,
        report.rows_copied,
        report.write_pause_ms,
        report.moving_during_cutover.max_ms,
        report.moving_failed,
        report.neighbour_failed,
        report.neighbour_p99_before_ms,
        report.neighbour_p99_during_ms,
        report.neighbour_p99_ratio,
        report.neighbour_median_window_p99_ratio,
        report.checkpoints_before,
        report.checkpoints_during
    );
    if let Some(cutover) = &report.cutover {
        eprintln!("cutover: {cutover}");
    }
    Ok(())
}

async fn measure(h: &Harness, opts: &Options, cell_url: &str) -> anyhow::Result<Report> {
    // The merchant that moves: many orders, seeded as an import would.
    let seed = crate::demo::incident::Options {
        orders: opts.orders,
        weeks: 6,
        seed: 42,
        json: true,
        database: Default::default(),
        data_dir: PathBuf::new(),
    };
    eprintln!("seeding {} orders", opts.orders);
    let facts = crate::demo::incident::seed(&h.owner, &seed, true).await?;
    let moving_id = facts.merchant_id;
    // A bulk load leaves vacuum and a checkpoint to do: done now, so the
    // neighbour's baseline is a database in its usual state, not that.
    eprintln!("vacuum and checkpoint after seeding");
    sqlx::query("vacuum (analyze)").execute(&h.owner).await?;
    sqlx::query("checkpoint").execute(&h.owner).await?;
    let issued = super::send(
        &h.client,
        "POST",
        &format!("{}/v1/merchants/{moving_id}/api-keys", h.base),
        ADMIN,
        json!({}),
    )
    .await?;
    let moving_key = issued["api_key"].as_str().context("api key")?.to_owned();
    for key in [&moving_key, &h.key] {
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
            super::send(&h.client, method, &format!("{}{path}", h.base), key, body).await?;
        }
    }
    // A warm-up first (caches, connections), not counted in the baseline.
    let label = Arc::new(Mutex::new("warmup".to_owned()));
    let moving = Load::start(&h.base, &moving_key, opts.rate, label.clone());
    let neighbour = Load::start(&h.base, &h.key, opts.rate, label.clone());
    tokio::time::sleep(Duration::from_secs(opts.settle_seconds)).await;
    set(&label, "before");
    let checkpoints_at_start = checkpoints(&h.owner).await?;
    tokio::time::sleep(Duration::from_secs(opts.baseline_seconds)).await;
    let checkpoints_at_move = checkpoints(&h.owner).await?;

    let cell: sqlx::postgres::PgConnectOptions = cell_url.parse()?;
    let pools = Pools {
        duty_cycle: opts.duty_cycle,
        ..Pools::of_owners(
            h.owner.connect_options().as_ref(),
            [("big".to_owned(), cell)],
            8,
        )
    };
    let merchant = crate::tenancy::MerchantId(moving_id);
    let progress = Labels {
        label: label.clone(),
        since: Mutex::new(Instant::now()),
        timings: Mutex::new(BTreeMap::new()),
    };
    let mv = mover::start(&pools, merchant, "big").await?;
    let mv = mover::drive(&pools, mv, opts.keep_source, &progress).await?;
    let checkpoints_at_end = checkpoints(&h.owner).await?;
    progress.phase(mv.phase);
    set(&label, "after");
    tokio::time::sleep(Duration::from_secs(opts.settle_seconds)).await;
    let moving = moving.stop().await;
    let neighbour = neighbour.stop().await;

    type Figures = (i64, i64, i64, Option<f64>, Option<serde_json::Value>);
    let (rows_copied, changes_applied, rows_cleaned, pause, cutover_record): Figures = sqlx::query_as(
        "select rows_copied, changes_applied, rows_cleaned, pause_ms, cutover from tenant_moves where id = $1",
    )
    .bind(mv.id)
    .fetch_one(&h.owner)
    .await?;
    let timings = progress
        .timings
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    let copy_seconds = timings.get("copying").copied().unwrap_or(0.0);
    let cleanup_seconds = timings.get("moved").copied().unwrap_or(0.0);
    let moving_phases = summarise(&moving);
    let neighbour_phases = summarise(&neighbour);
    let latencies = |samples: &[Sample], phases: &[&str]| -> Vec<Duration> {
        samples
            .iter()
            .filter(|s| phases.contains(&s.phase.as_str()))
            .map(|s| s.latency)
            .collect()
    };
    const DURING: &[&str] = &["copying", "catching_up", "cutting_over"];
    let during = latencies(&neighbour, DURING);
    let before = latencies(&neighbour, &["before"]);
    let cutover = latencies(&moving, &["cutting_over"]);
    let windows_before = window_p99s(&neighbour, &["before"]);
    let windows_during = window_p99s(&neighbour, DURING);
    let (before, during) = (Percentiles::of(before), Percentiles::of(during));
    Ok(Report {
        orders: opts.orders,
        duty_cycle: opts.duty_cycle,
        keep_source: opts.keep_source,
        rows_copied,
        copy_seconds,
        copy_rows_per_second: rows_copied as f64 / copy_seconds.max(1e-9),
        changes_applied,
        write_pause_ms: pause.unwrap_or(0.0),
        cutover: cutover_record,
        moving_during_cutover: Percentiles::of(cutover),
        rows_cleaned,
        cleanup_seconds,
        moving_failed: moving.iter().filter(|s| !s.ok).count(),
        neighbour_failed: neighbour.iter().filter(|s| !s.ok).count(),
        moving: moving_phases,
        neighbour: neighbour_phases,
        neighbour_p99_ratio: during.p99_ms / before.p99_ms.max(1e-9),
        neighbour_p99_before_ms: before.p99_ms,
        neighbour_p99_during_ms: during.p99_ms,
        neighbour_median_window_p99_ratio: median(&windows_during)
            / median(&windows_before).max(1e-9),
        neighbour_window_p99_before_ms: windows_before,
        neighbour_window_p99_during_ms: windows_during,
        checkpoints_before: checkpoints_at_move - checkpoints_at_start,
        checkpoints_during: checkpoints_at_end - checkpoints_at_move,
    })
}

pub(crate) fn set(label: &Mutex<String>, to: &str) {
    if let Ok(mut l) = label.lock() {
        *l = to.to_owned();
    }
}

pub(crate) fn summarise(samples: &[Sample]) -> BTreeMap<String, PhaseFigures> {
    let mut by: BTreeMap<String, (Vec<Duration>, usize)> = BTreeMap::new();
    for s in samples {
        let e = by.entry(s.phase.clone()).or_default();
        e.0.push(s.latency);
        if !s.ok {
            e.1 += 1;
        }
    }
    by.into_iter()
        .map(|(label, (latencies, failed))| {
            (
                label,
                PhaseFigures {
                    requests: latencies.len(),
                    failed,
                    latency: Percentiles::of(latencies),
                },
            )
        })
        .collect()
}

/// Labels the load's samples with the move's phase, and times each phase.
struct Labels {
    label: Arc<Mutex<String>>,
    since: Mutex<Instant>,
    timings: Mutex<BTreeMap<String, f64>>,
}

impl Progress for Labels {
    fn phase(&self, phase: Phase) {
        let previous = self.label.lock().map(|l| l.clone()).unwrap_or_default();
        if let (Ok(mut since), Ok(mut timings)) = (self.since.lock(), self.timings.lock()) {
            *timings.entry(previous).or_default() += since.elapsed().as_secs_f64();
            *since = Instant::now();
        }
        set(&self.label, phase.as_str());
        eprintln!("phase: {phase}");
    }
}

/// One request of a `Load`: the phase it was sent in, when, how long it
/// took, whether it succeeded.
pub(crate) struct Sample {
    pub(crate) phase: String,
    pub(crate) sent: Instant,
    pub(crate) latency: Duration,
    pub(crate) ok: bool,
}

/// One merchant's paced requests: four reads to one checkout.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(base: &str, key: &str, rate: u32, label: Arc<Mutex<String>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let workers = 16usize;
        let interval = Duration::from_secs_f64(workers as f64 / f64::from(rate.max(1)));
        let client = reqwest::Client::new();
        let tasks = (0..workers)
            .map(|w| {
                let (stop, samples, label, client) =
                    (stop.clone(), samples.clone(), label.clone(), client.clone());
                let (base, key) = (base.to_owned(), key.to_owned());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        i += workers;
                        let phase = label.lock().map(|l| l.clone()).unwrap_or_default();
                        let checkout = i % 5 == 0;
                        let sent = Instant::now();
                        let request = if checkout {
                            client
                                .post(format!("{base}/v1/checkouts"))
                                .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
                                .json(&json!({"customer": {"email": format!("b{i}@example.com")},
                                    "items": [{"sku": "BENCH-MUG", "quantity": 1}],
                                    "payment_method": "pm_card_ok"}))
                        } else {
                            client.get(format!("{base}/v1/products"))
                        };
                        let ok = match request.bearer_auth(&key).send().await {
                            Ok(resp) => {
                                let good = resp.status().is_success();
                                let _: Option<Value> = resp.json().await.ok();
                                good
                            }
                            Err(_) => false,
                        };
                        if let Ok(mut s) = samples.lock() {
                            s.push(Sample {
                                phase,
                                sent,
                                latency: sent.elapsed(),
                                ok,
                            });
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            tasks,
        }
    }

    pub(crate) async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
