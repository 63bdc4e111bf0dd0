//! Analytics that never touch the OLTP database when they answer: the events
//! outbox is exported, incrementally and exactly once, to Kimball marts in
//! Parquet (`model` says each mart's grain), and reports read the marts.
//!
//! Owns no table: it reads `events` by commit position (column `xid`,
//! migration 0019) and asks `checkout` and `catalog` for an order's or a
//! SKU's details by key. Its state is the analytics directory (`files`).

pub mod cli;
pub mod columns;
mod compaction;
pub mod export;
pub mod files;
pub mod http;
pub mod mirror;
pub mod model;
pub mod report;

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

pub use export::{ExportError, ExportProgress, ExportSummary, Exporter, Quiet};
pub use files::{Layout, Manifest};
pub use mirror::Mirror;

/// The advisory lock (two-key form: class, 0) an exporter of a cell holds:
/// one exporter per cell database writes its marts.
const EXPORT_CLASS: i32 = 0x414e; // "AN"

/// Takes the cell's export lock for as long as the connection lives;
/// `None` when another exporter holds it.
pub async fn hold_export(pool: &PgPool) -> Result<Option<PoolConnection<Postgres>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let held: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, 0)")
        .bind(EXPORT_CLASS)
        .fetch_one(&mut *conn)
        .await?;
    Ok(held.then_some(conn))
}

/// `serve`'s loop for one cell: exports whatever committed, every
/// `interval`, so the marts trail the orders by about that much. Another
/// instance exporting the cell is left to it (tried again each minute).
pub async fn export_continuously(
    cell: String,
    pool: PgPool,
    layout: Layout,
    mirror: Option<Mirror>,
    interval: Duration,
) {
    let mut exporter = Exporter::new(&cell, pool.clone(), layout);
    exporter.mirror = mirror;
    let mut lock = None;
    loop {
        if lock.is_none() {
            match hold_export(&pool).await {
                Ok(Some(conn)) => lock = Some(conn),
                Ok(None) => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    continue;
                }
                Err(e) => tracing::warn!(cell, error = %e, "analytics export cannot take its lock"),
            }
        }
        if lock.is_some() {
            match exporter.run_once(&Quiet).await {
                Ok(s) => {
                    if s.events > 0 {
                        metrics::counter!("analytics_events_exported_total").increment(s.events);
                        tracing::debug!(
                            cell,
                            events = s.events,
                            rows = s.rows,
                            "analytics exported"
                        );
                    }
                    // No live event in the run: none was waiting, the marts are current.
                    let lag = s.lag().map_or(0.0, |l| l.as_secs_f64());
                    metrics::gauge!("analytics_export_lag_seconds", "cell" => cell.clone())
                        .set(lag);
                }
                Err(e) => {
                    tracing::warn!(cell, error = %e, "analytics export failed; tried again");
                    // The lock's connection may be what broke.
                    lock = None;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
