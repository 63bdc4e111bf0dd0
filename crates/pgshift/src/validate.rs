//! Validation: the old and new shape must agree on count and checksum, key
//! range by key range, each range read in one snapshot. Throttled like the
//! backfill (ranges sized to a time budget, a rest between them, a pause when
//! the database is under pressure) and, for `validate`, resumable: the
//! position after each range is kept, so an interrupted run goes on from there.

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::key::{self, Key};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::{backfill, quote_ident, state, Error, Position};

#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    pub ranges: u64,
    pub rows: i64,
    /// Key ranges whose count or checksum differs, as `(after, upto]`.
    pub mismatched: Vec<String>,
    /// Whether this run went on from where an interrupted one stopped.
    pub resumed: bool,
    /// Ranges the throttle shrank or paused for.
    pub throttled: u64,
}

/// The keys in `(after, upto]`; `None` is open at that end (the start or
/// the end of the key space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub after: Option<Position>,
    pub upto: Option<Position>,
    /// Open ends read as `i64::MIN` and `i64::MAX`, the bounds bound for
    /// `$1`/`$2` (a key of one integer column).
    integer: bool,
}

impl fmt::Display for KeyRange {
    /// `(0, 500]`, `(-9223372036854775808, 500]`, `((a, 7), (b, 2)]`, `(start, (a, 7)]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bound = |p: &Option<Position>, open: i64, word: &str| match p {
            Some(p) => key::show(p),
            None if self.integer => open.to_string(),
            None => word.to_owned(),
        };
        write!(
            f,
            "({}, {}]",
            bound(&self.after, i64::MIN, "start"),
            bound(&self.upto, i64::MAX, "end")
        )
    }
}

impl ValidationReport {
    /// "2 of 40 key ranges differ: (0, 500], (1000, 1500]" (at most ten named).
    pub fn describe_mismatch(&self) -> String {
        const NAMED: usize = 10;
        let mut ranges: Vec<String> = self.mismatched.iter().take(NAMED).cloned().collect();
        if self.mismatched.len() > NAMED {
            ranges.push(format!("and {} more", self.mismatched.len() - NAMED));
        }
        format!(
            "{} of {} key ranges differ: {}",
            self.mismatched.len(),
            self.ranges,
            ranges.join(", ")
        )
    }
}

/// Runs the plan's `validate.source` and `validate.target` over every key
/// range of the backfill source, keyset windows of about `validate.chunk_size`
/// rows (resized toward the backfill's `target_batch_ms`); the last range runs
/// to the end of the key space, so rows the new shape holds past the old
/// shape's last key fail it too. The report lists the ranges that differ.
///
/// With `resume_as` (the migration's name), progress is kept after every range
/// and a run goes on from where an interrupted one stopped; a finished run
/// forgets it. Without it (contract's check), every range is compared now.
pub(crate) async fn compare_ranges(
    pool: &PgPool,
    plan: &Plan,
    resume_as: Option<&str>,
    progress: bool,
    progress_every: Duration,
) -> Result<ValidationReport, Error> {
    let b = &plan.backfill;
    let v = &plan.validate;
    let source = quote_ident(&b.source);
    let key = Key::resolve(pool, &b.source, &b.key).await?;
    let mut report = ValidationReport::default();
    let mut after: Option<Position> = None;
    if let Some(name) = resume_as {
        if let Some(saved) = state::validation_progress(pool, name).await? {
            after = Some(saved.cursor);
            report.ranges = u64::try_from(saved.ranges).unwrap_or(0);
            report.rows = saved.rows;
            report.mismatched = saved.mismatched;
            report.resumed = true;
        }
    }
    let remaining: i64 = sqlx::query_scalar_with(
        &key.count_after_sql(&source, after.is_some()),
        key.window_args(after.as_deref(), None)?,
    )
    .fetch_one(pool)
    .await?;
    let mut bar = Progress::new(
        progress,
        progress_every,
        remaining.max(0) as u64,
        "validate",
    );
    let mut pace = backfill::Pace {
        size: v.chunk_size,
        pressure_floor: MIN_CHUNK.min(v.chunk_size),
        floor: MIN_CHUNK.min(v.chunk_size),
        ceiling: v.chunk_size.max(b.max_batch_size),
        baseline_ms: None,
        throttled: report.throttled,
    };
    loop {
        pace.check_pressure(pool, b).await?;
        report.throttled = pace.throttled;
        let chunk = pace.size;
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read")
            .execute(&mut *tx)
            .await?;
        let lo = after.as_deref();
        let (rows, upto): (i64, Option<Position>) = sqlx::query_as_with(
            &key.window_sql(&source, lo.is_some()),
            key.window_args(lo, Some(chunk))?,
        )
        .fetch_one(&mut *tx)
        .await?;
        let mut sides = Vec::with_capacity(2);
        for (step, statement) in [
            ("validate.source", &v.source),
            ("validate.target", &v.target),
        ] {
            let (sql, args) = key.bind(step, statement, lo, upto.as_deref())?;
            let side: (i64, Option<String>) = sqlx::query_as_with(&sql, args)
                .fetch_one(&mut *tx)
                .await
                .map_err(|source| Error::Step {
                    step: step.into(),
                    source,
                })?;
            sides.push(side);
        }
        report.ranges += 1;
        report.rows += rows;
        if sides[0] != sides[1] {
            report.mismatched.push(
                KeyRange {
                    after: after.clone(),
                    upto: upto.clone(),
                    integer: key.integer,
                }
                .to_string(),
            );
        }
        if let Some(name) = resume_as {
            match &upto {
                Some(upto) => state::save_validation_progress(&mut tx, name, upto, &report).await?,
                None => state::forget_validation_progress(&mut tx, name).await?,
            }
        }
        tx.commit().await?;
        bar.inc(rows as u64);
        let Some(upto) = upto else {
            break;
        };
        after = Some(upto);
        pace.after(b, started.elapsed()).await;
    }
    bar.finish();
    Ok(report)
}

/// The throttle never shrinks a range below this many rows.
const MIN_CHUNK: i64 = 100;
