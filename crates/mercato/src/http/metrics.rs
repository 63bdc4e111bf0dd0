//! Prometheus metrics: request counts and latency histograms by route and
//! status here, and every family the service records described in one place
//! ([`FAMILIES`]: Prometheus's `# HELP` line and the unit).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{KeyName, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family: its name as recorded, its kind, its unit and what it counts.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// `None` where `metrics` has no unit for it (amounts of money).
    pub unit: Option<Unit>,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};
const COUNT: Option<Unit> = Some(Unit::Count);
const SECONDS: Option<Unit> = Some(Unit::Seconds);

/// Every family the service records, described once (the architecture test
/// holds the source to this list: a family recorded and not here fails it).
pub const FAMILIES: &[Family] = &[
    family("http_requests_total", Counter, COUNT,
        "HTTP requests answered, by method, route template and status."),
    family("http_request_duration_seconds", Histogram, SECONDS,
        "Time from a request's arrival to its response, by method, route template and status."),
    family("rate_limited_total", Counter, COUNT,
        "Requests refused by a merchant's rate limit, by route class (checkout-daily: the daily checkout quota)."),
    family("rate_limit_store_errors_total", Counter, COUNT,
        "Rate-limit checks the shared store (Redis) did not answer; the request was let through."),
    family("checkout_phase_seconds", Histogram, SECONDS,
        "Time a checkout spent in each phase (reserve, place, authorize, capture, confirm)."),
    family("checkouts_confirmed_total", Counter, COUNT,
        "Checkouts that ended with a confirmed order."),
    family("checkouts_failed_total", Counter, COUNT,
        "Checkouts that failed and released what they held, by reason."),
    family("checkouts_recovered_total", Counter, COUNT,
        "Stalled checkouts the recovery worker drove to an end, by the status they ended in."),
    family("refunds_total", Counter, COUNT,
        "Refunds the payment provider paid back."),
    family("orders_cancelled_total", Counter, COUNT,
        "Confirmed orders the merchant cancelled (refunded in full, units back in stock)."),
    family("reservations_requested_total", Counter, COUNT,
        "Stock reservations asked for, by the merchant's stock strategy."),
    family("reservations_expired_total", Counter, COUNT,
        "Reservations released by the expiry worker when their time ran out."),
    family("stock_sales_folded_total", Counter, COUNT,
        "Units sold, folded from the sales ledger into the stock levels."),
    family("admission_batch_size", Histogram, COUNT,
        "Reservation requests granted together in one batch by FIFO admission."),
    family("events_emitted_total", Counter, COUNT,
        "Events written to the outbox, by event type."),
    family("events_published_total", Counter, COUNT,
        "Outbox events published to the NATS JetStream bus."),
    family("webhook_attempts_total", Counter, COUNT,
        "Webhook delivery attempts, by result (succeeded, retrying, dead)."),
    family("webhook_attempt_seconds", Histogram, SECONDS,
        "Time a webhook endpoint took to answer one delivery attempt."),
    family("mail_sent_total", Counter, COUNT,
        "Customer e-mails handed to the SMTP server, by outcome (sent, failed)."),
    family("pricing_shadow_priced_total", Counter, COUNT,
        "Carts priced by a rollout's candidate beside the rules in force, by outcome and by which was charged."),
    family("pricing_shadow_delta_minor_units", Histogram, None,
        "Absolute difference between the candidate's total and the total in force, in the currency's minor units."),
    family("pricing_anomalies_total", Counter, COUNT,
        "Pricing anomalies found against a merchant's baseline, by kind."),
    family("shadow_reads_total", Counter, COUNT,
        "Legacy-order reads served from one shape and compared with the other during the migration, by result."),
    family("analytics_events_exported_total", Counter, COUNT,
        "Events exported to the analytics marts."),
    family("analytics_export_lag_seconds", Gauge, SECONDS,
        "How long the oldest event of the last export run waited for the analytics marts (0 when none waited), by cell."),
];

/// Gives the recorder every family's HELP text and unit.
fn describe_all() {
    metrics::with_recorder(|recorder| {
        for f in FAMILIES {
            let name = KeyName::from_const_str(f.name);
            let help = SharedString::const_str(f.help);
            match f.kind {
                Counter => recorder.describe_counter(name, f.unit, help),
                Gauge => recorder.describe_gauge(name, f.unit, help),
                Histogram => recorder.describe_histogram(name, f.unit, help),
            }
        }
    });
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder (metrics has one global recorder, so every app
/// built in this process, e.g. in tests, shares it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; we then just render ours.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe_all();
            }
            handle
        })
        .clone()
}

/// Prometheus text exposition of every metric (bind to localhost in production).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn render() -> String {
    handle().render()
}

pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}
