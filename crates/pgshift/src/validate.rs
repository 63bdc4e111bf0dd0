//! Validation: the old and new shape must agree on count and checksum, key
//! range by key range, each range read in one snapshot.

use sqlx::PgPool;

use crate::backfill::{keyset_window, progress_bar};
use crate::plan::Plan;
use crate::{quote_ident, Error};

#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    pub ranges: u64,
    pub rows: i64,
    /// Key ranges `(lo, hi]` whose count or checksum differs.
    pub mismatched: Vec<(i64, i64)>,
}

impl ValidationReport {
    /// "2 of 40 key ranges differ: (0, 500], (1000, 1500]" (at most ten named).
    pub fn describe_mismatch(&self) -> String {
        const NAMED: usize = 10;
        let mut ranges: Vec<String> = self
            .mismatched
            .iter()
            .take(NAMED)
            .map(|(lo, hi)| format!("({lo}, {hi}]"))
            .collect();
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
/// range of the backfill source; the report lists the ranges that differ.
pub(crate) async fn compare_ranges(
    pool: &PgPool,
    plan: &Plan,
    progress: bool,
) -> Result<ValidationReport, Error> {
    let b = &plan.backfill;
    let v = &plan.validate;
    let (source, key) = (quote_ident(&b.source), quote_ident(&b.key));
    let total: i64 = sqlx::query_scalar(&format!("select count(*) from {source}"))
        .fetch_one(pool)
        .await?;
    let bar = progress_bar(progress, total as u64, "validate");
    let window = keyset_window(&source, &key);
    let mut report = ValidationReport::default();
    let mut lo = i64::MIN;
    loop {
        let mut tx = pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read")
            .execute(&mut *tx)
            .await?;
        let (rows, hi): (i64, Option<i64>) = sqlx::query_as(&window)
            .bind(lo)
            .bind(v.chunk_size)
            .fetch_one(&mut *tx)
            .await?;
        // The last range runs to the end of the key space: the new shape must hold nothing more.
        let hi_bound = hi.unwrap_or(i64::MAX);
        let old: (i64, Option<String>) = sqlx::query_as(&v.source)
            .bind(lo)
            .bind(hi_bound)
            .fetch_one(&mut *tx)
            .await
            .map_err(|source| Error::Step {
                step: "validate.source".into(),
                source,
            })?;
        let new: (i64, Option<String>) = sqlx::query_as(&v.target)
            .bind(lo)
            .bind(hi_bound)
            .fetch_one(&mut *tx)
            .await
            .map_err(|source| Error::Step {
                step: "validate.target".into(),
                source,
            })?;
        tx.commit().await?;
        report.ranges += 1;
        report.rows += rows;
        if old != new {
            report.mismatched.push((lo, hi_bound));
        }
        bar.inc(rows as u64);
        match hi {
            Some(hi) => lo = hi,
            None => break,
        }
    }
    bar.finish_and_clear();
    Ok(report)
}
