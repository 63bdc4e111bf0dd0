//! Copying the old rows into the new shape: keyset batches, each committed
//! with the cursor, sized to a time budget and throttled when the database is
//! under pressure. The key may be any key (`key.rs`).

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::key::Key;
use crate::plan::Backfill;
use crate::progress::Progress;
use crate::{quote_ident, state, Error, Phase};

/// What one backfill run did.
#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    pub rows: i64,
    pub batches: u64,
    pub seconds: f64,
    /// Batches the throttle shrank or paused for.
    pub throttled: u64,
    /// Tables vacuumed after the last batch, and how long that took.
    pub vacuumed: Vec<String>,
    pub vacuum_seconds: f64,
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
    progress: bool,
    progress_every: Duration,
) -> Result<BackfillReport, Error> {
    let source = quote_ident(&b.source);
    let key = Key::resolve(pool, &b.source, &b.key).await?;
    let remaining = {
        let mut conn = pool.acquire().await?;
        let cursor = current_cursor(&key, &mut conn, migration).await?.1;
        let after = cursor.as_deref();
        let count: i64 = sqlx::query_scalar_with(
            &key.count_after_sql(&source, after.is_some()),
            key.window_args(after, None)?,
        )
        .fetch_one(&mut *conn)
        .await?;
        count
    };
    let mut bar = Progress::new(progress, progress_every, remaining as u64, "backfill");
    let started = Instant::now();
    let mut report = BackfillReport::default();
    let mut pace = Pace {
        size: b.batch_size,
        pressure_floor: MIN_BATCH,
        floor: MIN_BATCH.min(b.batch_size),
        ceiling: b.max_batch_size,
        baseline_ms: None,
        throttled: 0,
    };
    loop {
        pace.check_pressure(pool, b).await?;
        report.throttled = pace.throttled;
        let batch = pace.size;
        let batch_started = Instant::now();
        let mut tx = pool.begin().await?;
        let (phase, lo) = current_cursor(&key, &mut tx, migration).await?;
        if phase == Phase::Backfilled.as_str() || phase == Phase::Validated.as_str() {
            // Another backfill of the plan, run at the same time, finished it.
            tx.commit().await?;
            break;
        }
        if phase != Phase::Expanded.as_str() {
            // An abort got in between: the new shape is going away.
            return Err(Error::OutOfOrder {
                command: "backfill",
                reason: format!("the migration became {phase} while the backfill ran"),
            });
        }
        let lo = lo.as_deref();
        let (rows, hi): (i64, Option<Vec<String>>) = sqlx::query_as_with(
            &key.window_sql(&source, lo.is_some()),
            key.window_args(lo, Some(batch))?,
        )
        .fetch_one(&mut *tx)
        .await?;
        let Some(hi) = hi else {
            tx.commit().await?;
            break;
        };
        for (i, statement) in b.transform.iter().enumerate() {
            let step = format!("backfill.transform[{i}]");
            let (sql, args) = key.bind(&step, statement, lo, Some(&hi))?;
            sqlx::query_with(&sql, args)
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Step { step, source })?;
        }
        let as_int = if key.integer {
            hi[0].parse::<i64>().ok()
        } else {
            None
        };
        state::advance_backfill(&mut tx, migration, &hi, as_int, rows).await?;
        tx.commit().await?;
        report.rows += rows;
        report.batches += 1;
        bar.inc(rows as u64);
        pace.after(b, batch_started.elapsed()).await;
    }
    bar.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The phase and the backfill cursor, the state row locked until the
/// transaction ends. For a key of one integer column the bigint cursor is
/// the one to trust: older pgshift kept only that (a backfill they started
/// resumes from it), and it is kept with every batch.
async fn current_cursor(
    key: &Key,
    conn: &mut PgConnection,
    migration: &str,
) -> Result<(String, Option<Vec<String>>), Error> {
    let state = state::lock_backfill_cursor(conn, migration).await?;
    let cursor = match (key.integer, state.cursor_int, state.cursor_key) {
        (true, Some(int), _) => Some(vec![int.to_string()]),
        (_, _, Some(position)) => Some(position),
        (false, Some(int), None) => {
            let why = format!(
                "backfill.key: the backfill started with a key of one integer column (cursor {int}) \
                 and the key changed since; abort and expand again"
            );
            return Err(Error::Plan(why));
        }
        (_, None, None) => None,
    };
    Ok((state.phase, cursor))
}

/// How big the next batch (or validation range) is, and the rests between
/// them: halved and paused when the database is under pressure, resized toward
/// `target_batch_ms` after each one, then a rest so the work takes
/// `duty_cycle` of the time. Shared by the backfill and validation.
pub(crate) struct Pace {
    pub size: i64,
    /// The smallest size a pause under pressure leaves.
    pub pressure_floor: i64,
    /// The size range the resizing keeps to.
    pub floor: i64,
    pub ceiling: i64,
    pub baseline_ms: Option<f64>,
    /// Times the pressure check halved the size and paused.
    pub throttled: u64,
}

impl Pace {
    /// Before a batch: halve and pause if the database is under pressure.
    pub async fn check_pressure(&mut self, pool: &PgPool, b: &Backfill) -> Result<(), Error> {
        if under_pressure(pool, b, &mut self.baseline_ms).await? {
            self.size = (self.size / 2).max(self.pressure_floor);
            self.throttled += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// After a batch that took `took`: size the next to take about
    /// `target_batch_ms`, then rest.
    pub async fn after(&mut self, b: &Backfill, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let size = self.size as f64;
        let scaled = (size * (b.target_batch_ms / ms.max(0.1))).clamp(size / 2.0, size * 1.5);
        self.size = (scaled as i64).clamp(self.floor, self.ceiling);
        if b.duty_cycle < 1.0 {
            tokio::time::sleep(took.mul_f64(1.0 / b.duty_cycle - 1.0)).await;
        }
    }
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

/// `VACUUM (ANALYZE)` of `tables`, throttled by `vacuum_cost_delay`: sets the
/// hint bits and visibility map of the rows the backfill wrote, so the first
/// live reads after it do not each pay for that at once. Best effort: a table
/// that cannot be vacuumed (another owner) is skipped with a warning.
pub(crate) async fn vacuum(
    pool: &PgPool,
    tables: &[crate::sql::Name],
    cost_delay_ms: f64,
    report: &mut BackfillReport,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!(
        "set vacuum_cost_delay = {}",
        cost_delay_ms.clamp(0.0, 100.0)
    ))
    .execute(&mut *conn)
    .await?;
    for table in tables {
        match sqlx::query(&format!("vacuum (analyze) {}", table.sql()))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => report.vacuumed.push(table.to_string()),
            Err(e) => tracing::warn!(%table, error = %e, "vacuum after backfill skipped"),
        }
    }
    sqlx::query("reset vacuum_cost_delay")
        .execute(&mut *conn)
        .await?;
    report.vacuum_seconds = started.elapsed().as_secs_f64();
    Ok(())
}
