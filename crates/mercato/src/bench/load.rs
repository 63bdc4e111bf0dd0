//! A load generator for legacy orders (reads and writes over HTTP), used by
//! `mercato demo migration` and `mercato bench migrate`, and the bulk seeding
//! of legacy rows they start from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::Percentiles;

/// Inserts `rows` legacy orders for `merchant` (as the owner), in chunks, with progress.
/// Returns the merchant's order ids (they are scrambled, migration 0022, so the
/// load must be told them rather than guess a range).
pub async fn seed_legacy_orders(
    owner: &PgPool,
    merchant: Uuid,
    rows: i64,
    progress: bool,
) -> Result<Vec<i64>, sqlx::Error> {
    const CHUNK: i64 = 200_000;
    let bar = if progress {
        ProgressBar::new(rows as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("seed [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut done = 0;
    while done < rows {
        let n = CHUNK.min(rows - done);
        sqlx::query!(
            "insert into legacy_orders (merchant_id, customer_email, customer_name, total, currency, placed_at)
             select $1, 'customer' || (g % 5000) || '@example.com', 'Customer ' || (g % 5000),
                    (g % 100000) / 100.0, 'EUR', now() - g * interval '1 second'
             from generate_series($2::bigint, $3::bigint) g",
            merchant,
            done + 1,
            done + n,
        )
        .execute(owner)
        .await?;
        done += n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    sqlx::query!("analyze legacy_orders").execute(owner).await?;
    sqlx::query_scalar!(
        "select id from legacy_orders where merchant_id = $1",
        merchant
    )
    .fetch_all(owner)
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseLoad {
    pub requests: usize,
    pub failed: usize,
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// Paced readers and writers of legacy orders: 80% reads of known ids, 20% new
/// orders, at a fixed total rate, each sample labelled with the current phase.
pub struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    samples: Arc<Mutex<Vec<(String, Duration, bool)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(
        base: &str,
        key: &str,
        known_ids: Vec<i64>,
        rate_per_second: u32,
        workers: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(Mutex::new("before".to_owned()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let known_ids = Arc::new(Mutex::new(known_ids));
        let client = reqwest::Client::new();
        let interval = Duration::from_secs_f64(workers as f64 / f64::from(rate_per_second.max(1)));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, phase, samples, known_ids) = (stop.clone(), phase.clone(), samples.clone(), known_ids.clone());
                let (client, base, key) = (client.clone(), base.to_owned(), key.to_owned());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let (write, n, id) = {
                            let mut rng = rand::rng();
                            let ids = known_ids.lock().unwrap_or_else(|p| p.into_inner());
                            let id = if ids.is_empty() { 1 } else { ids[rng.random_range(0..ids.len())] };
                            (rng.random_ratio(1, 5), rng.random_range(1..100_000i64), id)
                        };
                        let label = phase.lock().map(|p| p.clone()).unwrap_or_default();
                        let sent = Instant::now();
                        let request = if write {
                            client.post(format!("{base}/v1/legacy-orders")).json(&json!({
                                "customer": {"email": format!("customer{}@example.com", n % 5000), "name": format!("Customer {}", n % 5000)},
                                "total": {"amount": n, "currency": "EUR"}
                            }))
                        } else {
                            client.get(format!("{base}/v1/legacy-orders/{id}"))
                        };
                        let ok = match request.bearer_auth(&key).send().await {
                            Ok(resp) if resp.status().is_success() => {
                                if write {
                                    if let Ok(body) = resp.json::<serde_json::Value>().await {
                                        if let Some(new_id) = body["id"].as_i64() {
                                            known_ids.lock().unwrap_or_else(|p| p.into_inner()).push(new_id);
                                        }
                                    }
                                }
                                true
                            }
                            _ => false,
                        };
                        if let Ok(mut s) = samples.lock() {
                            s.push((label, sent.elapsed(), ok));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            phase,
            samples,
            tasks,
        }
    }

    /// Labels the samples from now on.
    pub fn phase(&self, name: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = name.to_owned();
        }
    }

    /// Stops the load and summarises it per phase label.
    pub async fn stop(self) -> BTreeMap<String, PhaseLoad> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_phase: BTreeMap<String, (Vec<Duration>, usize)> = BTreeMap::new();
        for (phase, latency, ok) in samples {
            let entry = by_phase.entry(phase).or_default();
            entry.0.push(latency);
            if !ok {
                entry.1 += 1;
            }
        }
        by_phase
            .into_iter()
            .map(|(phase, (latencies, failed))| {
                let requests = latencies.len();
                (
                    phase,
                    PhaseLoad {
                        requests,
                        failed,
                        latency: Percentiles::of(latencies),
                    },
                )
            })
            .collect()
    }
}
