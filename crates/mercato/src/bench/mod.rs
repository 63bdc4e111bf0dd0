//! Benchmarks (`mercato bench …`): each measures its raw baseline in the same
//! run, prints the ratio, and writes its figures as JSON.

pub mod analytics;
pub mod checkout;
pub mod cpu;
pub mod live_migration;
pub mod load;
pub mod migrate;
pub mod moves;
pub mod neighbours;
pub mod orders;
pub mod pricing;
pub mod reprice;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{App, Config};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";

/// A running Mercato (private cluster unless a database URL is given) with one
/// fresh merchant, for benchmarks and demos.
pub struct Harness {
    pub base: String,
    pub owner: PgPool,
    /// The service's RLS-bound pool (to write events as the service would).
    pub app_pool: PgPool,
    pub key: String,
    pub merchant: Uuid,
    pub client: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    scratch: PathBuf,
}

impl Harness {
    pub async fn start(
        database_url: Option<String>,
        tune: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Harness> {
        let scratch =
            std::env::temp_dir().join(format!("mercato-bench-{}", Uuid::now_v7().simple()));
        let mut config = Config::new("127.0.0.1:0".parse()?);
        config.database.database_url = database_url;
        config.data_dir = scratch.clone();
        config.admin_token = Some(ADMIN.into());
        config.max_connections = 32;
        tune(&mut config);
        let app = App::build(config).await.context("starting Mercato")?;
        let base = format!("http://{}", app.addr);
        let owner = crate::db::connect(app.owner_url.parse()?, 8).await?;
        let app_pool = app.db.app.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?;
        let slug = format!("bench-{}", Uuid::now_v7().simple());
        let merchant = send(
            &client,
            "POST",
            &format!("{base}/v1/merchants"),
            ADMIN,
            json!({"name": "Bench", "slug": slug}),
        )
        .await?;
        let key = merchant["api_key"]
            .as_str()
            .context("no api_key in the merchant response")?
            .to_owned();
        let merchant = merchant["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .context("no merchant id")?;
        Ok(Harness {
            base,
            owner,
            app_pool,
            key,
            merchant,
            client,
            stop,
            server,
            scratch,
        })
    }

    /// A request as the harness's merchant; any non-2xx answer is an error.
    pub async fn send(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        send(
            &self.client,
            method,
            &format!("{}{path}", self.base),
            &self.key,
            body,
        )
        .await
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.owner.close().await;
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    key: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let req = match method {
        "POST" => client.post(url).json(&body),
        "PUT" => client.put(url).json(&body),
        _ => client.get(url),
    };
    let resp = req
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!("{method} {url} answered {status}: {body}");
    }
    Ok(body)
}

/// What each request of a [`fire`] run answered (0: no answer) and how long it took.
pub type Outcomes = Vec<(u16, Duration)>;

/// Sends `total` requests (`method`, normally POST) to `url` as the harness's
/// merchant from `connections` concurrent clients, the i-th with
/// `bodies[i % len]` (serialised beforehand, so the timed loop only sends; none
/// for a GET), with a progress bar labelled `label`. Returns every outcome and
/// the wall time in seconds.
pub async fn fire(
    h: &Harness,
    method: reqwest::Method,
    url: &str,
    bodies: Arc<Vec<String>>,
    total: usize,
    connections: usize,
    label: &str,
) -> anyhow::Result<(Outcomes, f64)> {
    let progress = ProgressBar::new(total as u64);
    progress.set_style(
        ProgressStyle::with_template("{prefix:>26} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_prefix(label.to_owned());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, method, url, key, next, bodies, progress) = (
            h.client.clone(),
            method.clone(),
            url.to_owned(),
            h.key.clone(),
            next.clone(),
            bodies.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return outcomes;
                }
                let sent = Instant::now();
                let mut request = client.request(method.clone(), &url).bearer_auth(&key);
                if !bodies.is_empty() {
                    request = request
                        .header("content-type", "application/json")
                        .body(bodies[i % bodies.len()].clone());
                }
                let status = drained_status(request.send().await).await;
                outcomes.push((status, sent.elapsed()));
                progress.inc(1);
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(total);
    for task in tasks {
        outcomes.extend(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    Ok((outcomes, seconds))
}

/// The status of an answer once its body is read (a connection goes back to
/// the pool only once it is drained); 0 for no answer.
pub async fn drained_status(answer: reqwest::Result<reqwest::Response>) -> u16 {
    match answer {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    }
}

/// Prints a benchmark's figures as JSON and writes them to `out` (its
/// directory made if need be).
pub fn write_report(out: &std::path::Path, report: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))
}

/// Runs `work` unless Ctrl-C comes first.
pub async fn interruptible<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The middle value (the upper of the two middle ones; 0 for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(vec![]).p99_ms, 0.0);
    }
}
