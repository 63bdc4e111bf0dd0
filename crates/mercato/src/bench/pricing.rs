//! `mercato bench pricing`: the pure calculator on realistic carts (10 lines, 8
//! rules of every kind) on one core — the raw baseline — then the same carts as
//! `POST /v1/pricing/quote` over HTTP; prints both and their ratio. Then what
//! pricing costs a checkout: hot-SKU checkouts over HTTP with no rules (the
//! baseline) and with the 8 rules, runs alternated, and their ratio.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ::pricing::{price, CalculatorVersion};
use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use super::{fire, interruptible, Harness, Percentiles};

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
    /// Hot-SKU checkouts in each of the four checkout runs (0 skips them).
    #[arg(long, default_value_t = 2_000)]
    pub checkouts: usize,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-pricing.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
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
    checkout: Option<CheckoutCost>,
}

/// Hot-SKU checkouts with no rules against the same with the 8 rules.
#[derive(Serialize)]
struct CheckoutCost {
    checkouts_per_run: usize,
    connections: usize,
    /// In the order run: no rules, rules, rules, no rules.
    runs: Vec<CheckoutRun>,
    without_rules_per_second: f64,
    with_rules_per_second: f64,
    /// with / without: 1.0 is free, 0.9 is the floor.
    ratio: f64,
}

#[derive(Serialize)]
struct CheckoutRun {
    rules: bool,
    confirmed: usize,
    failed: usize,
    checkouts_per_second: f64,
    latency: Percentiles,
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
    let harness = Harness::start(opts.database.database_url.clone(), |_| {}).await?;
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
    h.send("PUT", "/v1/pricing/rules", rules.clone()).await?;
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
    let (outcomes, seconds) = fire(
        h,
        reqwest::Method::POST,
        &url,
        bodies,
        opts.quotes,
        opts.connections,
        "quotes",
    )
    .await?;
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
        checkout: if opts.checkouts == 0 {
            None
        } else {
            Some(checkout_cost(opts, h, &rules).await?)
        },
    };
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("figures written to {}", opts.out.display());
    Ok(())
}

/// Hot-SKU checkouts (one unit of one SKU, a new customer each, `pm_card_ok`)
/// with an empty rule set and with the benchmark's 8 rules, in the order A B B A
/// so that a steady drift (the tables grow with every run) weighs on both alike.
async fn checkout_cost(
    opts: &Options,
    h: &Harness,
    rules: &serde_json::Value,
) -> anyhow::Result<CheckoutCost> {
    let hot = "HOT-SKU";
    h.send(
        "POST",
        "/v1/products",
        json!({"name": hot, "variants": [{"sku": hot, "price": {"amount": 2500, "currency": "EUR"}}]}),
    )
    .await?;
    let units = opts.checkouts * 4 + 1_000;
    h.send(
        "PUT",
        &format!("/v1/inventory/{hot}"),
        json!({"on_hand": units}),
    )
    .await?;
    let url = format!("{}/v1/checkouts", h.base);
    let mut runs = Vec::new();
    for (round, with_rules) in [false, true, true, false].into_iter().enumerate() {
        let set = if with_rules {
            rules.clone()
        } else {
            json!({"rules": []})
        };
        h.send("PUT", "/v1/pricing/rules", set).await?;
        // A new customer per checkout: `first_order` and per-customer limits apply.
        let bodies: Vec<String> = (0..opts.checkouts)
            .map(|i| {
                json!({"customer": {"email": format!("buyer{round}-{i}@example.com")},
                       "items": [{"sku": hot, "quantity": 1}], "payment_method": "pm_card_ok"})
                .to_string()
            })
            .collect();
        let label = if with_rules {
            "checkouts, 8 rules"
        } else {
            "checkouts, no rules"
        };
        let (outcomes, seconds) = fire(
            h,
            reqwest::Method::POST,
            &url,
            Arc::new(bodies),
            opts.checkouts,
            opts.connections,
            label,
        )
        .await?;
        let confirmed = outcomes.iter().filter(|(s, _)| *s == 201).count();
        let run = CheckoutRun {
            rules: with_rules,
            confirmed,
            failed: outcomes.len() - confirmed,
            checkouts_per_second: confirmed as f64 / seconds.max(1e-9),
            latency: Percentiles::of(outcomes.into_iter().map(|(_, d)| d).collect()),
        };
        println!(
            "{label:>20}: {:.0} checkouts/s, p50 {:.1} ms, p99 {:.1} ms, {} failed",
            run.checkouts_per_second, run.latency.p50_ms, run.latency.p99_ms, run.failed
        );
        runs.push(run);
    }
    let mean = |with: bool| {
        let picked: Vec<f64> = runs
            .iter()
            .filter(|r| r.rules == with)
            .map(|r| r.checkouts_per_second)
            .collect();
        picked.iter().sum::<f64>() / picked.len().max(1) as f64
    };
    let (without, with) = (mean(false), mean(true));
    let ratio = with / without.max(1e-9);
    println!(
        "checkouts with the 8 rules: {:.0}/s against {:.0}/s without: ratio {:.2} (floor 0.90)",
        with, without, ratio
    );
    Ok(CheckoutCost {
        checkouts_per_run: opts.checkouts,
        connections: opts.connections,
        runs,
        without_rules_per_second: without,
        with_rules_per_second: with,
        ratio,
    })
}
