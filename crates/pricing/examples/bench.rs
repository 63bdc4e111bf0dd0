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

    let run = |budget: Duration| -> (u64, Duration, Option<Duration>) {
        let on_cpu_before = on_cpu();
        let started = Instant::now();
        let mut priced = 0u64;
        while started.elapsed() < budget {
            for cart in &workload.carts {
                let breakdown = price(black_box(cart), &workload.rules, version, &ctx);
                black_box(&breakdown);
                priced += 1;
            }
        }
        let elapsed = started.elapsed();
        let on_cpu = on_cpu()
            .zip(on_cpu_before)
            .map(|(after, before)| after.saturating_sub(before));
        (priced, elapsed, on_cpu)
    };
    if seconds <= 0.0 {
        return; // one pass only, e.g. to count instructions under callgrind
    }
    run(Duration::from_millis(500)); // warm-up
    let (priced, elapsed, on_cpu) = run(Duration::from_secs_f64(seconds));
    let rate = priced as f64 / elapsed.as_secs_f64();
    println!(
        "{version}: {priced} carts in {:.2} s on one core: {:.0} carts/s ({:.2} µs per cart)",
        elapsed.as_secs_f64(),
        rate,
        1e6 / rate
    );
    // On a shared machine the thread is not always on a CPU; the kernel's count of
    // the time it was gives the rate the code itself achieves.
    if let Some(on_cpu) = on_cpu.filter(|d| !d.is_zero()) {
        let cpu_rate = priced as f64 / on_cpu.as_secs_f64();
        println!(
            "{version}: on CPU {:.2} s of the {:.2} s ({:.0} %): {:.0} carts per CPU-second ({:.2} µs per cart)",
            on_cpu.as_secs_f64(),
            elapsed.as_secs_f64(),
            100.0 * on_cpu.as_secs_f64() / elapsed.as_secs_f64(),
            cpu_rate,
            1e6 / cpu_rate
        );
    }
}

/// Time this thread has spent on a CPU (Linux: /proc/thread-self/schedstat).
fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}
