//! `mercato bench webhooks`: events written to the outbox and delivered to a
//! local receiver. First the receiver's own ceiling (a load generator posting
//! straight to it, the raw baseline), then a burst of events drained as fast
//! as the worker can (deliveries/s), then events enqueued at a steady rate
//! (enqueue→delivered p50/p99). JSON figures to `--out`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::json;

use super::{fire, interruptible, Harness, Percentiles};
use crate::db::{MerchantId, TenantTx};
use crate::events::{emit, EventType};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Events in the burst run.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Events per second in the steady run (10 s); each goes to every endpoint.
    #[arg(long, default_value_t = 100)]
    pub rate: usize,
    /// Endpoints the events fan out over (one merchant; each holds at most 8 in flight).
    #[arg(long, default_value_t = 16)]
    pub endpoints: usize,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-webhooks.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
}

/// Per webhook-id: how many deliveries came, and when the last did (seconds
/// since the epoch). Each event reaches every endpoint with the same id.
type Arrivals = Arc<Mutex<HashMap<String, (usize, f64)>>>;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A receiver that answers 204 at once and notes when each delivery came.
async fn receiver(arrivals: Arrivals) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let arrivals = arrivals.clone();
            async move {
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    if let Ok(mut a) = arrivals.lock() {
                        let seen = a.entry(id.to_owned()).or_insert((0, 0.0));
                        seen.0 += 1;
                        seen.1 = now();
                    }
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/hook"))
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let harness = Harness::start(opts.database.database_url.clone(), |c| {
        c.webhooks_allow_internal = true;
    })
    .await?;
    let outcome = interruptible(measure(&opts, &harness)).await;
    harness.shutdown().await;
    outcome
}

/// Writes `n` events for the merchant in transactions of `per_tx`; returns
/// their ids with when each was committed.
async fn enqueue(h: &Harness, n: usize, per_tx: usize) -> anyhow::Result<Vec<(String, f64)>> {
    let mut ids = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = per_tx.min(left);
        let mut tx = TenantTx::begin(&h.app_pool, MerchantId(h.merchant)).await?;
        let mut these = Vec::with_capacity(batch);
        for i in 0..batch {
            let id = emit(&mut tx, EventType::PricingRulesChanged, json!({"bench": i})).await?;
            these.push(id.to_string());
        }
        tx.commit().await?;
        let at = now();
        ids.extend(these.into_iter().map(|id| (id, at)));
        left -= batch;
    }
    Ok(ids)
}

/// Waits until every id has reached all `endpoints` (or `limit` passes).
async fn drained(
    arrivals: &Arrivals,
    ids: &[(String, f64)],
    endpoints: usize,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let done = arrivals
            .lock()
            .map(|a| {
                ids.iter()
                    .all(|(id, _)| a.get(id).is_some_and(|(n, _)| *n >= endpoints))
            })
            .unwrap_or(false);
        if done {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn latencies(arrivals: &Arrivals, ids: &[(String, f64)]) -> Percentiles {
    let a = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    Percentiles::of(
        ids.iter()
            .filter_map(|(id, at)| {
                a.get(id)
                    .map(|(_, last)| Duration::from_secs_f64((last - at).max(0.0)))
            })
            .collect(),
    )
}

async fn measure(opts: &Options, h: &Harness) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::default();
    let url = receiver(arrivals.clone()).await?;

    // The receiver's ceiling: posts straight to it, no Mercato in between.
    let bodies = Arc::new(
        (0..1_000)
            .map(|i| json!({"type": "pricing.rules_changed", "data": {"bench": i}}).to_string())
            .collect::<Vec<_>>(),
    );
    let raw_n = opts.events;
    let (outcomes, raw_seconds) = fire(
        h,
        reqwest::Method::POST,
        &url,
        bodies,
        raw_n,
        64,
        "receiver ceiling",
    )
    .await?;
    let raw_ok = outcomes.iter().filter(|(s, _)| *s == 204).count();
    let raw_rate = raw_ok as f64 / raw_seconds.max(1e-9);
    println!("receiver ceiling: {raw_rate:.0} requests/s (64 connections)");

    for _ in 0..opts.endpoints {
        h.send(
            "POST",
            "/v1/webhook-endpoints",
            json!({"url": url, "event_types": ["pricing.rules_changed"]}),
        )
        .await
        .context("creating an endpoint")?;
    }

    // Burst: every event written first, then drained.
    println!(
        "burst: {} events over {} endpoints",
        opts.events, opts.endpoints
    );
    let started = Instant::now();
    let ids = enqueue(h, opts.events, 500).await?;
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let complete = drained(&arrivals, &ids, opts.endpoints, Duration::from_secs(600)).await;
    let burst_seconds = started.elapsed().as_secs_f64();
    let deliveries = ids.len() * opts.endpoints;
    let burst_rate = deliveries as f64 / burst_seconds.max(1e-9);
    println!(
        "burst: {} events written in {enqueue_seconds:.1} s ({:.0} events/s), {deliveries} deliveries in {burst_seconds:.1} s: {burst_rate:.0} deliveries/s{}",
        ids.len(),
        ids.len() as f64 / enqueue_seconds.max(1e-9),
        if complete { "" } else { " (NOT all arrived)" }
    );

    // Steady: `rate` events/s for 10 s, in batches every 50 ms.
    let per_tick = (opts.rate / 20).max(1);
    let mut steady = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let steady_started = Instant::now();
    for _ in 0..200 {
        tick.tick().await;
        steady.extend(enqueue(h, per_tick, per_tick).await?);
    }
    let steady_complete =
        drained(&arrivals, &steady, opts.endpoints, Duration::from_secs(120)).await;
    let steady_seconds = steady_started.elapsed().as_secs_f64();
    let latency = latencies(&arrivals, &steady);
    println!(
        "steady: {} events/s × {} endpoints for 10 s: enqueue→delivered p50 {:.1} ms, p99 {:.1} ms{}",
        per_tick * 20,
        opts.endpoints,
        latency.p50_ms,
        latency.p99_ms,
        if steady_complete { "" } else { " (NOT all arrived)" }
    );
    println!(
        "ratio deliveries/s to the receiver's ceiling: {:.2}",
        burst_rate / raw_rate.max(1e-9)
    );
    // Latency: from the commit of an event to its delivery to the last endpoint.
    let report = json!({
        "benchmark": "webhooks",
        "endpoints": opts.endpoints,
        "receiver_ceiling_requests_per_second": raw_rate,
        "burst": {
            "events": ids.len(), "deliveries": deliveries, "complete": complete,
            "enqueue_events_per_second": ids.len() as f64 / enqueue_seconds.max(1e-9),
            "seconds": burst_seconds, "deliveries_per_second": burst_rate,
        },
        "steady": {
            "events_per_second": per_tick * 20, "events": steady.len(), "complete": steady_complete,
            "seconds": steady_seconds, "enqueue_to_delivered": latency,
        },
        "deliveries_to_ceiling_ratio": burst_rate / raw_rate.max(1e-9),
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("figures written to {}", opts.out.display());
    Ok(())
}
