//! Copying the old rows into the new shape: keyset batches, each committed
//! with the cursor, sized to a time budget and throttled when the database is
//! under pressure; plus the progress bar it (and validation) shows.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::plan::Backfill;
use crate::{quote_ident, state, Error};

/// What one backfill run did.
#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    pub rows: i64,
    pub batches: u64,
    pub seconds: f64,
    /// Batches the throttle shrank or paused for.
    pub throttled: u64,
}

/// The throttle never shrinks a batch below this many rows.
const MIN_BATCH: i64 = 100;

/// Copies every row of `b.source` past the migration's cursor. Each batch
/// commits together with the cursor, so an interrupted run resumes exactly
/// where it stopped.
pub(crate) async fn copy_rows(
    pool: &PgPool,
    migration: &str,
    b: &Backfill,
    cursor: Option<i64>,
    progress: bool,
) -> Result<BackfillReport, Error> {
    let (source, key) = (quote_ident(&b.source), quote_ident(&b.key));
    let remaining: i64 =
        sqlx::query_scalar(&format!("select count(*) from {source} where {key} > $1"))
            .bind(cursor.unwrap_or(i64::MIN))
            .fetch_one(pool)
            .await?;
    let bar = progress_bar(progress, remaining as u64, "backfill");
    let window = keyset_window(&source, &key);
    let started = Instant::now();
    let mut report = BackfillReport::default();
    let mut batch = b.batch_size;
    let mut baseline_ms: Option<f64> = None;
    loop {
        if under_pressure(pool, b, &mut baseline_ms).await? {
            batch = (batch / 2).max(MIN_BATCH);
            report.throttled += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let batch_started = Instant::now();
        let mut tx = pool.begin().await?;
        let lo = state::lock_backfill_cursor(&mut tx, migration)
            .await?
            .unwrap_or(i64::MIN);
        let (rows, hi): (i64, Option<i64>) = sqlx::query_as(&window)
            .bind(lo)
            .bind(batch)
            .fetch_one(&mut *tx)
            .await?;
        let Some(hi) = hi else {
            tx.commit().await?;
            break;
        };
        for (i, statement) in b.transform.iter().enumerate() {
            sqlx::query(statement)
                .bind(lo)
                .bind(hi)
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Step {
                    step: format!("backfill.transform[{i}]"),
                    source,
                })?;
        }
        state::advance_backfill(&mut tx, migration, hi, rows).await?;
        tx.commit().await?;
        report.rows += rows;
        report.batches += 1;
        bar.inc(rows as u64);
        // Size the next batch to take about `target_batch_ms`, then rest.
        let took = batch_started.elapsed();
        let ms = took.as_secs_f64() * 1000.0;
        let scaled = (batch as f64 * (b.target_batch_ms / ms.max(0.1)))
            .clamp(batch as f64 / 2.0, batch as f64 * 1.5);
        batch = (scaled as i64).clamp(MIN_BATCH.min(b.batch_size), b.max_batch_size);
        if b.duty_cycle < 1.0 {
            tokio::time::sleep(took.mul_f64(1.0 / b.duty_cycle - 1.0)).await;
        }
    }
    bar.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Probe latency against the first probe seen, lock waiters, replica lag.
async fn under_pressure(
    pool: &PgPool,
    b: &Backfill,
    baseline_ms: &mut Option<f64>,
) -> Result<bool, Error> {
    let t = Instant::now();
    let (waiting, lag): (i64, f64) = sqlx::query_as(
        "select (select count(*) from pg_locks where not granted),
                coalesce((select extract(epoch from max(replay_lag)) from pg_stat_replication), 0)::float8",
    )
    .fetch_one(pool)
    .await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let base = *baseline_ms.get_or_insert(ms);
    Ok(ms > b.max_probe_ms.max(base * 4.0)
        || waiting > b.max_lock_waiters
        || lag > b.max_replication_lag_s)
}

/// The next keyset window of the source after `$1`, at most `$2` keys: how many
/// rows it holds and its last key (NULL past the end). Backfill batches and
/// validation ranges both walk the key space with it.
pub(crate) fn keyset_window(source: &str, key: &str) -> String {
    format!("select count(*), max(k) from (select {key} as k from {source} where {key} > $1 order by {key} limit $2) w")
}

/// A bar of `len` rows, or a hidden one when `show` is off (tests and
/// machine-readable runs).
pub(crate) fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}
