//! pgshift: zero-downtime schema and data migrations for a live PostgreSQL.
//!
//! A migration is a plan (TOML): expand → dual-write → backfill → read switch
//! with shadow reads → validate → contract. Every phase is a command, phases
//! run only in order, everything before contract can be undone (`abort`), and
//! state lives in the database (schema `pgshift`), so any command can be
//! interrupted and run again. pgshift knows nothing of the application whose
//! data it moves; the application reads the phase and the read switch through
//! [`ReadSwitch`].
//!
//! pgshift runs as the schema owner. With row-level security on the tables it
//! moves, that role must be a superuser or have BYPASSRLS.

pub mod lint;
pub mod plan;
pub mod state;
pub mod switch;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

pub use lint::Finding;
pub use plan::Plan;
pub use state::{Phase, Status};
pub use switch::{ReadSwitch, View};

use plan::Step;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plan: {0}")]
    Plan(String),
    #[error("lint found {} problem(s):\n{}", .0.len(), .0.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Lint(Vec<Finding>),
    #[error("cannot {command} now: {reason}")]
    OutOfOrder {
        command: &'static str,
        reason: String,
    },
    #[error("step {step}: {source}")]
    Step { step: String, source: sqlx::Error },
    #[error("validation failed: {0}")]
    Validation(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What one backfill run did.
#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    pub rows: i64,
    pub batches: u64,
    pub seconds: f64,
    /// Batches the throttle shrank or paused for.
    pub throttled: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    pub ranges: u64,
    pub rows: i64,
    /// Key ranges `(lo, hi]` whose count or checksum differs.
    pub mismatched: Vec<(i64, i64)>,
}

pub struct Migrator {
    pool: PgPool,
    plan: Plan,
    /// Show progress bars (off in tests and for machine-readable runs).
    pub progress: bool,
}

/// Longer than any application caches its view: after a phase change that
/// writers must see, pgshift waits this long before acting on it.
/// The throttle never shrinks a batch below this many rows.
const MIN_BATCH: i64 = 100;

const SETTLE: Duration = Duration::from_millis(switch::CACHE_TTL.as_millis() as u64 * 3);

impl Migrator {
    /// Opens the migration's state (creating pgshift's schema if needed).
    pub async fn open(pool: PgPool, plan: Plan) -> Result<Migrator, Error> {
        state::ensure_schema(&pool).await?;
        sqlx::query(
            "insert into pgshift.migrations (name) values ($1) on conflict (name) do nothing",
        )
        .bind(&plan.name)
        .execute(&pool)
        .await?;
        for role in &plan.readers {
            let role = quote_ident(role);
            sqlx::raw_sql(&format!(
                "grant usage on schema pgshift to {role};
                 grant select on pgshift.migrations to {role};
                 grant select, insert, update on pgshift.shadow_counts, pgshift.shadow_mismatches to {role};"
            ))
            .execute(&pool)
            .await?;
        }
        Ok(Migrator {
            pool,
            plan,
            progress: false,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub async fn status(&self) -> Result<Status, Error> {
        state::status(&self.pool, &self.plan.name)
            .await?
            .ok_or_else(|| Error::Plan("migration state missing".into()))
    }

    /// Lints the plan against the live catalog.
    pub async fn lint(&self) -> Result<Vec<Finding>, Error> {
        let live: HashSet<String> = sqlx::query_scalar::<_, String>(
            "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema', 'pgshift')",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let mut findings = lint::lint(&self.plan, &live);
        let status = self.status().await?;
        // After contract the old shape is gone by design; nothing more to check.
        if status.phase() >= Phase::Contracting {
            return Ok(findings);
        }
        let source = &self.plan.backfill.source;
        if !live.contains(source) {
            findings.push(Finding {
                step: "backfill.source".into(),
                rule: "missing-table",
                why: "the backfill reads a table that does not exist",
                instead: "name an existing table",
            });
        } else {
            let key_type: Option<String> = sqlx::query_scalar(
                "select data_type::text from information_schema.columns where table_name = $1 and column_name = $2",
            )
            .bind(source)
            .bind(&self.plan.backfill.key)
            .fetch_optional(&self.pool)
            .await?;
            match key_type.as_deref() {
                Some("bigint" | "integer" | "smallint") => {}
                Some(_) => findings.push(Finding {
                    step: "backfill.key".into(),
                    rule: "key-not-integer",
                    why: "keyset batches need an integer key",
                    instead: "use an integer column (a bigint id) as the backfill key",
                }),
                None => findings.push(Finding {
                    step: "backfill.key".into(),
                    rule: "missing-column",
                    why: "the backfill key column does not exist on the source table",
                    instead: "name an existing column",
                }),
            }
        }
        Ok(findings)
    }

    async fn require_clean_lint(&self) -> Result<(), Error> {
        let findings = self.lint().await?;
        if findings.is_empty() {
            Ok(())
        } else {
            Err(Error::Lint(findings))
        }
    }

    fn out_of_order(command: &'static str, reason: impl Into<String>) -> Error {
        Error::OutOfOrder {
            command,
            reason: reason.into(),
        }
    }

    /// Creates the new shape (and any sync triggers). Writers dual-write from here.
    pub async fn expand(&self) -> Result<(), Error> {
        let status = self.status().await?;
        if !matches!(status.phase(), Phase::Planned | Phase::Aborted) {
            return Err(Self::out_of_order(
                "expand",
                format!("the migration is already {}", status.phase),
            ));
        }
        self.require_clean_lint().await?;
        sqlx::query(
            "update pgshift.migrations set backfill_cursor = null, rows_backfilled = 0, switch_percent = 0,
                    switch_full_since = null, validated_at = null where name = $1",
        )
        .bind(&self.plan.name)
        .execute(&self.pool)
        .await?;
        for (section, steps) in [
            ("expand", &self.plan.expand),
            ("dual_write", &self.plan.dual_write),
        ] {
            for (i, step) in steps.iter().enumerate() {
                self.run_ddl(&format!("{section}[{i}] {:?}", step.name), step)
                    .await?;
            }
        }
        state::set_phase(&self.pool, &self.plan.name, Phase::Expanded).await?;
        Ok(())
    }

    /// Runs one DDL step with `lock_timeout`; on a lock timeout it backs off and
    /// retries rather than wait in the lock queue (where it would block everyone).
    async fn run_ddl(&self, label: &str, step: &Step) -> Result<(), Error> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            let mut conn = self.pool.acquire().await?;
            sqlx::raw_sql(&format!("set lock_timeout = {}", self.plan.lock_timeout_ms))
                .execute(&mut *conn)
                .await?;
            let result = sqlx::raw_sql(&step.sql).execute(&mut *conn).await;
            let _ = sqlx::raw_sql("reset lock_timeout")
                .execute(&mut *conn)
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("55P03") && attempt < 20 =>
                {
                    tracing::warn!(step = label, attempt, "lock timeout; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(source) => {
                    return Err(Error::Step {
                        step: label.to_owned(),
                        source,
                    })
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Copies every old row into the new shape in keyset batches. Each batch
    /// commits together with the cursor, so an interrupted run resumes exactly
    /// where it stopped. A throttle shrinks batches and pauses when the
    /// database's probe latency, lock waits or replication lag rise.
    pub async fn backfill(&self) -> Result<BackfillReport, Error> {
        let status = self.status().await?;
        match status.phase() {
            Phase::Expanded => {}
            Phase::Backfilled | Phase::Validated => return Ok(BackfillReport::default()),
            other => {
                return Err(Self::out_of_order(
                    "backfill",
                    format!("the migration is {}; run expand first", other.as_str()),
                ))
            }
        }
        // Writers must be dual-writing before the copy starts.
        let since = status.seconds_since_expand.unwrap_or(0.0);
        if since < SETTLE.as_secs_f64() {
            tokio::time::sleep(SETTLE - Duration::from_secs_f64(since)).await;
        }
        let b = &self.plan.backfill;
        let (source, key) = (quote_ident(&b.source), quote_ident(&b.key));
        let cursor = status.backfill_cursor.unwrap_or(i64::MIN);
        let remaining: i64 =
            sqlx::query_scalar(&format!("select count(*) from {source} where {key} > $1"))
                .bind(cursor)
                .fetch_one(&self.pool)
                .await?;
        let bar = self.progress_bar(remaining as u64, "backfill");
        let window = keyset_window(&source, &key);
        let started = Instant::now();
        let mut report = BackfillReport::default();
        let mut batch = b.batch_size;
        let mut baseline_ms: Option<f64> = None;
        loop {
            if self.under_pressure(&mut baseline_ms).await? {
                batch = (batch / 2).max(MIN_BATCH);
                report.throttled += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let batch_started = Instant::now();
            let mut tx = self.pool.begin().await?;
            // Locking the state row also keeps two backfills of one plan in single file.
            let cursor: Option<i64> = sqlx::query_scalar(
                "select backfill_cursor from pgshift.migrations where name = $1 for update",
            )
            .bind(&self.plan.name)
            .fetch_one(&mut *tx)
            .await?;
            let lo = cursor.unwrap_or(i64::MIN);
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
            sqlx::query(
                "update pgshift.migrations set backfill_cursor = $2, rows_backfilled = rows_backfilled + $3,
                        updated_at = now() where name = $1",
            )
            .bind(&self.plan.name)
            .bind(hi)
            .bind(rows)
            .execute(&mut *tx)
            .await?;
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
        state::set_phase(&self.pool, &self.plan.name, Phase::Backfilled).await?;
        Ok(report)
    }

    /// Probe latency against the first probe seen, lock waiters, replica lag.
    async fn under_pressure(&self, baseline_ms: &mut Option<f64>) -> Result<bool, Error> {
        let t = Instant::now();
        let (waiting, lag): (i64, f64) = sqlx::query_as(
            "select (select count(*) from pg_locks where not granted),
                    coalesce((select extract(epoch from max(replay_lag)) from pg_stat_replication), 0)::float8",
        )
        .fetch_one(&self.pool)
        .await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let base = *baseline_ms.get_or_insert(ms);
        let b = &self.plan.backfill;
        Ok(ms > b.max_probe_ms.max(base * 4.0)
            || waiting > b.max_lock_waiters
            || lag > b.max_replication_lag_s)
    }

    fn progress_bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_owned());
        bar
    }

    /// Sets the share of reads served from the new shape (0 rolls back at once).
    pub async fn switch(&self, percent: u8) -> Result<(), Error> {
        if percent > 100 {
            return Err(Self::out_of_order("switch", "the percentage must be 0-100"));
        }
        let status = self.status().await?;
        if !matches!(status.phase(), Phase::Backfilled | Phase::Validated) {
            return Err(Self::out_of_order(
                "switch",
                format!(
                    "the migration is {}; reads switch only after the backfill",
                    status.phase
                ),
            ));
        }
        sqlx::query(
            "update pgshift.migrations set switch_percent = $2, updated_at = now(),
                    switch_full_since = case when $2 = 100 then coalesce(switch_full_since, now()) end
             where name = $1",
        )
        .bind(&self.plan.name)
        .bind(i32::from(percent))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Compares count and checksum of old and new shape range by range, each
    /// range in one snapshot; passes only if every range agrees.
    pub async fn validate(&self) -> Result<ValidationReport, Error> {
        let status = self.status().await?;
        if !matches!(status.phase(), Phase::Backfilled | Phase::Validated) {
            return Err(Self::out_of_order(
                "validate",
                format!(
                    "the migration is {}; validate after the backfill",
                    status.phase
                ),
            ));
        }
        let b = &self.plan.backfill;
        let v = &self.plan.validate;
        let (source, key) = (quote_ident(&b.source), quote_ident(&b.key));
        let total: i64 = sqlx::query_scalar(&format!("select count(*) from {source}"))
            .fetch_one(&self.pool)
            .await?;
        let bar = self.progress_bar(total as u64, "validate");
        let window = keyset_window(&source, &key);
        let mut report = ValidationReport::default();
        let mut lo = i64::MIN;
        loop {
            let mut tx = self.pool.begin().await?;
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
        if !report.mismatched.is_empty() {
            return Err(Error::Validation(format!(
                "{} of {} key ranges differ, first ({}, {}]",
                report.mismatched.len(),
                report.ranges,
                report.mismatched[0].0,
                report.mismatched[0].1
            )));
        }
        sqlx::query("update pgshift.migrations set validated_at = now(), phase = 'validated', updated_at = now() where name = $1")
            .bind(&self.plan.name)
            .execute(&self.pool)
            .await?;
        Ok(report)
    }

    /// Drops the old shape. The only irreversible step: it runs only after a
    /// passed validation and with reads at 100% for `switch.min_full_seconds`.
    pub async fn contract(&self) -> Result<(), Error> {
        let status = self.status().await?;
        if status.phase() == Phase::Contracted {
            return Ok(());
        }
        if status.phase() != Phase::Contracting {
            if status.phase() != Phase::Validated {
                return Err(Self::out_of_order(
                    "contract",
                    format!("the migration is {}; validate first", status.phase),
                ));
            }
            let full = status.full_switch_seconds.unwrap_or(0.0);
            let needed = self.plan.switch.min_full_seconds as f64;
            if status.switch_percent < 100 || full < needed {
                return Err(Self::out_of_order(
                    "contract",
                    format!(
                        "reads must be at 100% for {needed:.0} s first (now {}%, for {full:.0} s)",
                        status.switch_percent
                    ),
                ));
            }
            // Writers stop touching the old shape before it goes.
            state::set_phase(&self.pool, &self.plan.name, Phase::Contracting).await?;
            tokio::time::sleep(SETTLE).await;
        }
        for (i, step) in self.plan.contract.iter().enumerate() {
            self.run_ddl(&format!("contract[{i}] {:?}", step.name), step)
                .await?;
        }
        state::set_phase(&self.pool, &self.plan.name, Phase::Contracted).await?;
        Ok(())
    }

    /// Rolls back before contract: reads and writes go back to the old shape
    /// only, then the plan's abort steps remove the new shape.
    pub async fn abort(&self) -> Result<(), Error> {
        let status = self.status().await?;
        if status.phase() >= Phase::Contracting && status.phase() != Phase::Aborted {
            return Err(Self::out_of_order(
                "abort",
                "contract has run; the old shape is gone",
            ));
        }
        sqlx::query("update pgshift.migrations set switch_percent = 0, switch_full_since = null where name = $1")
            .bind(&self.plan.name)
            .execute(&self.pool)
            .await?;
        state::set_phase(&self.pool, &self.plan.name, Phase::Aborted).await?;
        tokio::time::sleep(SETTLE).await;
        for (i, step) in self.plan.abort.iter().enumerate() {
            self.run_ddl(&format!("abort[{i}] {:?}", step.name), step)
                .await?;
        }
        Ok(())
    }
}

/// The next keyset window of the source after `$1`, at most `$2` keys: how many
/// rows it holds and its last key (NULL past the end). Backfill batches and
/// validation ranges both walk the key space with it.
fn keyset_window(source: &str, key: &str) -> String {
    format!("select count(*), max(k) from (select {key} as k from {source} where {key} > $1 order by {key} limit $2) w")
}

/// Quotes an identifier for SQL (names from the plan are not trusted text).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
