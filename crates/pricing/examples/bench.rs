//! Carts priced per second on one core: `cargo run --release -p pricing --example bench`.
//! Optional arguments: seconds to measure (default 3; 0 prices each cart once and
//! stops) and calculator version (v1, v2; default the latest).

#![allow(clippy::disallowed_methods)] // measuring time is this program's job

use std::hint::black_box;
use std::time::{Duration, Instant};

use pricing::{bench, price, CalculatorVersion};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let version: CalculatorVersion = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CalculatorVersion::LATEST);
    let workload = match bench::workload(1_000) {
        Ok(workload) => workload,
        Err(errors) => {
            eprintln!("benchmark rules do not parse: {errors:?}");
            std::process::exit(1);
        }
    };
    let ctx = workload.context();

    // What the workload exercises, so the figure can be judged.
    let (mut applied, mut discounted) = (0usize, 0usize);
    for cart in &workload.carts {
        match price(cart, &workload.rules, version, &ctx) {
            Ok(breakdown) => {
                applied += breakdown.applied.len();
                discounted += usize::from(breakdown.discount_total.amount > 0);
            }
            Err(error) => {
                eprintln!("pricing failed: {error}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "workload: {} carts x {} lines, {} rules; {:.2} rules applied per cart, {:.0} % of carts discounted",
        workload.carts.len(),
        bench::LINES_PER_CART,
        workload.rules.rules().len(),
        applied as f64 / workload.carts.len() as f64,
        100.0 * discounted as f64 / workload.carts.len() as f64,
    );

    let run = |budget: Duration| -> (u64, Duration) {
        let started = Instant::now();
        let mut priced = 0u64;
        while started.elapsed() < budget {
            for cart in &workload.carts {
                let breakdown = price(black_box(cart), &workload.rules, version, &ctx);
                black_box(&breakdown);
                priced += 1;
            }
        }
        (priced, started.elapsed())
    };
    if seconds <= 0.0 {
        return; // one pass only, e.g. to count instructions under callgrind
    }
    run(Duration::from_millis(500)); // warm-up
    let (priced, elapsed) = run(Duration::from_secs_f64(seconds));
    let rate = priced as f64 / elapsed.as_secs_f64();
    println!(
        "{version}: {priced} carts in {:.2} s on one core: {:.0} carts/s ({:.2} µs per cart)",
        elapsed.as_secs_f64(),
        rate,
        1e6 / rate
    );
}
