//! `mercato bench pricing`: the pure calculator on realistic carts (10 lines, 8
//! rules of every kind) on one core — the raw baseline — then the same carts as
//! `POST /v1/pricing/quote` over HTTP; prints both and their ratio.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ::pricing::{price, CalculatorVersion};
use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use super::{interruptible, Harness, Percentiles};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Carts priced by the pure calculator (one core).
    #[arg(long, default_value_t = 2_000_000)]
    pub iterations: usize,
    /// Quotes sent over HTTP.
    #[arg(long, default_value_t = 20_000)]
    pub quotes: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-pricing.json")]
    pub out: PathBuf,
    /// Benchmark against this database (schema owner) instead of a private cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Serialize)]
struct Report {
    carts: usize,
    max_lines_per_cart: usize,
    rules: usize,
    pure_iterations: usize,
    pure_carts_per_second: f64,
    pure_ns_per_cart: f64,
    http_quotes: usize,
    http_connections: usize,
    http_quotes_per_second: f64,
    http_failed: usize,
    http_latency: Percentiles,
    pure_to_http_ratio: f64,
}

const CARTS: usize = 1_000;

/// The crate's benchmark workload, each cart's repeated SKUs merged into one line:
/// the API takes a SKU once per request, and both runs must price the same carts.
fn workload() -> anyhow::Result<::pricing::bench::Workload> {
    let mut workload = ::pricing::bench::workload(CARTS)
        .map_err(|e| anyhow::anyhow!("benchmark rules do not parse: {e:?}"))?;
    for cart in &mut workload.carts {
        let mut merged: Vec<::pricing::Line> = Vec::with_capacity(cart.lines.len());
        for line in cart.lines.drain(..) {
            match merged.iter_mut().find(|m| m.sku == line.sku) {
                Some(m) => m.quantity += line.quantity,
                None => merged.push(line),
            }
        }
        cart.lines = merged;
    }
    Ok(workload)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let pure = {
        let iterations = opts.iterations;
        tokio::task::spawn_blocking(move || pure_run(iterations)).await??
    };
    println!(
        "pure price(): {:.0} carts/s on one core ({:.0} ns a cart, {} carts of up to {} lines, 8 rules)",
        pure,
        1e9 / pure,
        CARTS,
        ::pricing::bench::LINES_PER_CART
    );
    let harness = Harness::start(opts.database_url.clone(), |_| {}).await?;
    let outcome = interruptible(http_run(&opts, &harness, pure)).await;
    harness.shutdown().await;
    outcome
}

/// Carts/s of `price()` on this thread.
fn pure_run(iterations: usize) -> anyhow::Result<f64> {
    let workload = workload()?;
    let context = workload.context();
    // Untimed warm-up: caches, branch predictors, the allocator.
    for cart in &workload.carts {
        price(cart, &workload.rules, CalculatorVersion::V1, &context)?;
    }
    let started = Instant::now();
    for i in 0..iterations {
        let cart = &workload.carts[i % workload.carts.len()];
        std::hint::black_box(price(
            cart,
            &workload.rules,
            CalculatorVersion::V1,
            &context,
        )?);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(iterations as f64 / seconds.max(1e-9))
}

async fn http_run(opts: &Options, h: &Harness, pure_per_second: f64) -> anyhow::Result<()> {
    let workload = workload()?;
    // The same catalog, rules and settings as the pure run.
    let mut catalog: BTreeMap<String, i64> = BTreeMap::new();
    for line in workload.carts.iter().flat_map(|c| &c.lines) {
        catalog.insert(line.sku.to_string(), line.unit_price);
    }
    for (sku, price) in &catalog {
        h.send(
            "POST",
            "/v1/products",
            json!({"name": sku, "variants": [{"sku": sku, "price": {"amount": price, "currency": "EUR"}}]}),
        )
        .await?;
    }
    let rules: serde_json::Value = serde_json::from_str(::pricing::bench::RULES_JSON)?;
    h.send("PUT", "/v1/pricing/rules", rules).await?;
    let shipping = &workload.shipping;
    h.send(
        "PUT",
        "/v1/pricing/settings",
        json!({
            "currency": "EUR", "calculator_version": "v1",
            "tax": {"inclusive": workload.tax.inclusive, "default_rate_bps": workload.tax.default_rate,
                    "rates_bps": workload.tax.rates, "shipping_taxable": workload.tax.shipping_taxable},
            "shipping": {"kind": "free_over",
                         "amount": {"amount": shipping.amount.amount, "currency": "EUR"},
                         "threshold": {"amount": shipping.threshold.amount, "currency": "EUR"}},
        }),
    )
    .await
    .context("setting the benchmark's tax and shipping")?;
    let bodies: Arc<Vec<String>> = Arc::new(
        workload
            .carts
            .iter()
            .map(|cart| {
                let mut body = json!({"items": cart.lines.iter()
                    .map(|l| json!({"sku": l.sku.as_str(), "quantity": l.quantity}))
                    .collect::<Vec<_>>()});
                if let Some(customer) = &cart.customer {
                    body["customer"] = json!({"email": customer.email});
                }
                if let Some(code) = &cart.promo_code {
                    body["promo_code"] = json!(code);
                }
                body.to_string()
            })
            .collect(),
    );
    let url = format!("{}/v1/pricing/quote", h.base);
    // Untimed warm-up: connections, the server's caches.
    for body in bodies.iter().take(200) {
        h.client
            .post(&url)
            .bearer_auth(&h.key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?
            .bytes()
            .await?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let (client, url, key, next, bodies, quotes) = (
            h.client.clone(),
            url.clone(),
            h.key.clone(),
            next.clone(),
            bodies.clone(),
            opts.quotes,
        );
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= quotes {
                    return outcomes;
                }
                let sent = Instant::now();
                let request = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone());
                let status = match request.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        if resp.bytes().await.is_ok() {
                            status
                        } else {
                            0
                        }
                    }
                    Err(_) => 0,
                };
                outcomes.push((status, sent.elapsed()));
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(opts.quotes);
    for task in tasks {
        outcomes.extend(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let failed = outcomes.iter().filter(|(status, _)| *status != 200).count();
    if let Some((status, _)) = outcomes.iter().find(|(status, _)| *status != 200) {
        eprintln!("{failed} quotes failed, e.g. with status {status}");
    }
    let http_per_second = opts.quotes as f64 / seconds.max(1e-9);
    let latency = Percentiles::of(outcomes.into_iter().map(|(_, d)| d).collect());
    println!(
        "HTTP quotes:  {:.0} quotes/s, p50 {:.1} ms, p99 {:.1} ms, {} failed ({} connections)",
        http_per_second, latency.p50_ms, latency.p99_ms, failed, opts.connections
    );
    println!(
        "ratio pure/HTTP: {:.0}× (the calculator is {:.2}% of a quote's cost)",
        pure_per_second / http_per_second,
        100.0 * http_per_second / pure_per_second
    );
    let report = Report {
        carts: CARTS,
        max_lines_per_cart: ::pricing::bench::LINES_PER_CART,
        rules: 8,
        pure_iterations: opts.iterations,
        pure_carts_per_second: pure_per_second,
        pure_ns_per_cart: 1e9 / pure_per_second,
        http_quotes: opts.quotes,
        http_connections: opts.connections,
        http_quotes_per_second: http_per_second,
        http_failed: failed,
        http_latency: latency,
        pure_to_http_ratio: pure_per_second / http_per_second,
    };
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("figures written to {}", opts.out.display());
    Ok(())
}
