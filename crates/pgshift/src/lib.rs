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
//! Each job has its module: `ddl` runs one plan step under `lock_timeout`,
//! `backfill` copies in throttled batches, `validate` compares the shapes,
//! `key` walks any key (one column or several, any ordered type) in keyset
//! windows, `state` holds every statement on pgshift's own tables, `sql`
//! reads a step's statements (transaction control, what it creates, the
//! dual-write triggers and functions pgshift owns), `switch` is the
//! application's side, `progress` reports on stderr and `cli` is the command
//! line's work (the `pgshift` binary and `mercato migrate` parse, then call
//! it). This file orders the phases. The plan format, privileges and a
//! walk-through are in README.md. `toolkit` makes the pieces other online
//! data movers need public on their own: quoting, DDL under a lock timeout
//! with retries, keyset windows over any key, range checksums.
//!
//! `lint` and `status` only read; pgshift's schema is created by the first
//! command that changes state.
//!
//! pgshift runs as the schema owner. With row-level security on the tables it
//! moves, that role must be a superuser or have BYPASSRLS.

mod backfill;
pub mod cli;
mod ddl;
mod declare;
mod key;
pub mod lint;
pub mod plan;
mod progress;
mod sql;
pub mod state;
pub mod switch;
pub mod toolkit;
mod validate;

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub use backfill::BackfillReport;
pub use key::Position;
pub use lint::Finding;
pub use plan::Plan;
pub use state::{Phase, Status, UnknownPhase};
pub use switch::{ReadSwitch, View};
pub use validate::{KeyRange, ValidationReport};

use ddl::StepRun;
use plan::Step;
use sql::Effect;
use state::ExpandStep;

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
    /// A step ran without error but what it says it creates is not there
    /// (an `IF EXISTS` that skipped, a name in another schema, …).
    #[error("step {step} ran but did not take effect: {}. It is not recorded as done (and was rolled back unless it ran outside a transaction); check the names it uses (schema, quoting, IF [NOT] EXISTS) and run expand again", .missing.join("; "))]
    NoEffect { step: String, missing: Vec<String> },
    #[error("validation failed: {0}")]
    Validation(String),
    /// The state row names a phase this pgshift does not know (written by a
    /// newer pgshift, or by hand): no command guesses what it means.
    #[error("migration {migration} has unknown phase '{phase}' in pgshift.migrations")]
    UnknownPhase { migration: String, phase: String },
    /// The database named on the command line cannot be reached.
    #[error("{0}")]
    Connect(String),
    /// A phase stopped by Ctrl-C; what it did so far is kept.
    #[error("{0}")]
    Interrupted(String),
    /// Writing the command line's output failed (other than a closed pipe).
    #[error("writing output: {0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub struct Migrator {
    pool: PgPool,
    plan: Plan,
    /// Show progress on stderr (off in tests and for machine-readable runs):
    /// a bar on a terminal, otherwise a plain line every `progress_every`.
    pub progress: bool,
    pub progress_every: Duration,
}

/// Longer than any application caches its view: after a phase change that
/// writers must see, pgshift waits this long before acting on it.
const SETTLE: Duration = Duration::from_millis(switch::CACHE_TTL.as_millis() as u64 * 3);

impl Migrator {
    /// A migrator for `plan` on `pool`. Writes nothing: pgshift's schema and
    /// the migration's row are created by the first command that changes
    /// state (`expand`, or `abort`); until then the migration reads as
    /// `planned`, and `lint` and `status` only read.
    pub async fn open(pool: PgPool, plan: Plan) -> Result<Migrator, Error> {
        Ok(Migrator {
            pool,
            plan,
            progress: false,
            progress_every: Duration::from_secs(5),
        })
    }

    /// Creates pgshift's schema (or brings it up to date), the migration's
    /// row and the readers' grants. Run by every command that writes state,
    /// once its phase check has passed: a refused command writes nothing.
    async fn ensure_state(&self) -> Result<(), Error> {
        state::ensure_schema(&self.pool).await?;
        state::register(&self.pool, &self.plan.name).await?;
        for role in &self.plan.readers {
            state::grant_reader(&self.pool, role).await?;
        }
        Ok(())
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Where the migration stands; one with no state yet (or no pgshift
    /// schema at all) is `planned`. Only reads.
    pub async fn status(&self) -> Result<Status, Error> {
        Ok(state::status(&self.pool, &self.plan.name)
            .await?
            .unwrap_or_else(|| Status::planned(&self.plan.name)))
    }

    /// Lints the plan against the live catalog. Only reads: it creates no
    /// schema, table, row or constraint.
    pub async fn lint(&self) -> Result<Vec<Finding>, Error> {
        let catalog = lint::Catalog::load(&self.pool).await?;
        let live = &catalog.tables;
        let mut findings = lint::lint(&self.plan, &catalog);
        let status = self.status().await?;
        // After contract the old shape is gone by design; nothing more to check.
        if status.phase >= Phase::Contracting {
            return Ok(findings);
        }
        let source = &self.plan.backfill.source;
        if !live.contains(source) {
            findings.push(Finding {
                step: "backfill.source".into(),
                rule: "missing-table",
                why: "the backfill reads a table that does not exist",
                instead: "name an existing table",
                ..Default::default()
            });
        } else {
            findings.extend(self.lint_key().await?);
        }
        Ok(findings)
    }

    /// The backfill key on the live source table: its columns exist, are NOT
    /// NULL (a row with a NULL key would be neither copied nor compared) and
    /// have an order; statements that select their rows with `$1`/`$2`
    /// need a key of one integer column, others say `{{key_range}}`.
    async fn lint_key(&self) -> Result<Vec<Finding>, Error> {
        let b = &self.plan.backfill;
        let mut findings = Vec::new();
        let mut found = true;
        for column in &b.key {
            let not_null: Option<bool> = sqlx::query_scalar(
                "select a.attnotnull from pg_attribute a
                 where a.attrelid = to_regclass($1) and a.attname = $2 and a.attnum > 0 and not a.attisdropped",
            )
            .bind(quote_ident(&b.source))
            .bind(column)
            .fetch_optional(&self.pool)
            .await?;
            match not_null {
                None => {
                    found = false;
                    findings.push(Finding {
                        step: format!("backfill.key {column}"),
                        rule: "missing-column",
                        why: "the backfill key column does not exist on the source table",
                        instead: "name an existing column",
                        ..Default::default()
                    });
                }
                Some(false) => findings.push(Finding {
                    step: format!("backfill.key {column}"),
                    rule: "key-nullable",
                    why: "a row whose key is NULL is never copied nor validated",
                    instead: "use NOT NULL key columns (the primary key)",
                    ..Default::default()
                }),
                Some(true) => {}
            }
        }
        if !found {
            return Ok(findings);
        }
        let columns: Vec<String> = b.key.iter().map(|c| quote_ident(c)).collect();
        let columns = columns.join(", ");
        let ordered = sqlx::query(&format!(
            "select {columns} from {} order by {columns} limit 0",
            quote_ident(&b.source)
        ))
        .execute(&self.pool)
        .await;
        match ordered {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42883") => {
                findings.push(Finding {
                    step: "backfill.key".into(),
                    rule: "key-not-orderable",
                    why: "keyset batches need a key with a btree order; this type has none",
                    instead:
                        "use key columns of an ordered type (integer, uuid, text, timestamp, …)",
                    ..Default::default()
                });
                return Ok(findings);
            }
            Err(e) => return Err(e.into()),
        }
        let key = key::Key::resolve(&self.pool, &b.source, &b.key).await?;
        let statements = b
            .transform
            .iter()
            .enumerate()
            .map(|(i, sql)| (format!("backfill.transform[{i}]"), sql))
            .chain([
                ("validate.source".to_owned(), &self.plan.validate.source),
                ("validate.target".to_owned(), &self.plan.validate.target),
            ]);
        for (step, sql) in statements {
            if key::uses_key_range(sql) {
                continue;
            }
            let words = sql::tokens(sql);
            let binds = |n: &str| words.iter().any(|t| *t == sql::Token::Word(n.into()));
            if !(binds("$1") && binds("$2")) {
                findings.push(Finding {
                    step,
                    rule: "no-key-range",
                    why: "the statement does not select the batch's rows: it would read (or copy) the whole table every batch",
                    instead: "select the rows with {{key_range}} (or key > $1 and key <= $2 for one integer key column)",
                    ..Default::default()
                });
            } else if !key.integer {
                findings.push(Finding {
                    step,
                    rule: "key-not-integer",
                    why: "$1 and $2 are bigint bounds, for a key of one integer column",
                    instead: "select the rows with {{key_range}} (or {{key_range alias}}): pgshift binds each key column with its own type",
                    ..Default::default()
                });
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
    ///
    /// Each step is recorded as it commits, so an expand that stopped part-way
    /// (a failed step, a lost connection) is simply run again: the steps already
    /// done are skipped. A done step whose SQL has changed since is refused.
    pub async fn expand(&self) -> Result<(), Error> {
        let status = self.status().await?;
        if !matches!(status.phase, Phase::Planned | Phase::Aborted) {
            return Err(Self::out_of_order(
                "expand",
                format!("the migration is already {}", status.phase),
            ));
        }
        self.require_clean_lint().await?;
        self.ensure_state().await?;
        state::reset_progress(&mut *self.pool.acquire().await?, &self.plan.name).await?;
        let done = state::expand_steps_done(&self.pool, &self.plan.name).await?;
        for (section, steps) in [
            ("expand", &self.plan.expand),
            ("dual_write", &self.plan.dual_write),
        ] {
            for (i, step) in steps.iter().enumerate() {
                let label = format!("{section}[{i}] {:?}", step.name);
                let record = ExpandStep {
                    migration: &self.plan.name,
                    section,
                    index: i32::try_from(i)
                        .map_err(|_| Error::Plan(format!("{section}: too many steps")))?,
                    name: &step.name,
                    sql_sha256: sha256_hex(&step.sql),
                };
                match done.get(&(section.to_owned(), record.index)) {
                    None => {
                        let effects = sql::effects(&step.sql);
                        self.run_ddl(StepRun {
                            label: &label,
                            sql: &step.sql,
                            record: Some(&record),
                            effects: &effects,
                            then: None,
                        })
                        .await?;
                    }
                    Some(ran) if *ran == record.sql_sha256 => {
                        tracing::info!(step = label, "done in an earlier run; skipped");
                    }
                    Some(_) => {
                        return Err(Self::out_of_order(
                            "expand",
                            format!(
                                "{label} already ran with other SQL; restore the step as it ran, or abort and expand again"
                            ),
                        ))
                    }
                }
            }
        }
        state::set_phase(&self.pool, &self.plan.name, Phase::Expanded).await?;
        Ok(())
    }

    async fn run_ddl(&self, step: StepRun<'_>) -> Result<bool, Error> {
        ddl::run_step(&self.pool, self.plan.lock_timeout_ms, &step).await
    }

    /// The triggers and functions the plan's dual_write steps create: pgshift
    /// owns them, and contract and abort drop them.
    fn owned_objects(&self) -> Vec<Effect> {
        self.plan
            .dual_write
            .iter()
            .flat_map(|step| sql::owned_objects(&step.sql))
            .collect()
    }

    /// Runs the contract or abort steps, and drops the dual-write triggers and
    /// functions with the first of them that runs in a transaction, after its
    /// SQL: a concurrent writer then sees the old trigger with the old shape,
    /// or neither, never a trigger naming a column that is gone. (A step that
    /// drops them itself is fine: pgshift's drops say IF EXISTS.) With no such
    /// step they are dropped on their own after the steps.
    async fn run_final_steps(&self, section: &'static str, steps: &[Step]) -> Result<(), Error> {
        refuse_transaction_control(section, steps)?;
        let owned = self.owned_objects();
        let mut drops = sql::drop_owned(&owned);
        for (i, step) in steps.iter().enumerate() {
            let label = format!("{section}[{i}] {:?}", step.name);
            let dropped = self
                .run_ddl(StepRun {
                    label: &label,
                    sql: &step.sql,
                    record: None,
                    effects: &[],
                    then: drops.as_deref(),
                })
                .await?;
            if dropped {
                drops = None;
            }
        }
        if let Some(drops) = drops {
            let label = format!("{section}: drop the dual_write triggers and functions");
            self.run_ddl(StepRun {
                label: &label,
                sql: &drops,
                record: None,
                effects: &[],
                then: None,
            })
            .await?;
        }
        Ok(())
    }

    /// Copies every old row into the new shape in keyset batches. Each batch
    /// commits together with the cursor, so an interrupted run resumes exactly
    /// where it stopped. A throttle shrinks batches and pauses when the
    /// database's probe latency, lock waits or replication lag rise.
    pub async fn backfill(&self) -> Result<BackfillReport, Error> {
        let status = self.status().await?;
        match status.phase {
            Phase::Expanded => {}
            Phase::Backfilled | Phase::Validated => return Ok(BackfillReport::default()),
            other => {
                return Err(Self::out_of_order(
                    "backfill",
                    format!("the migration is {other}; run expand first"),
                ))
            }
        }
        self.ensure_state().await?;
        // Writers must be dual-writing before the copy starts.
        let since = status.seconds_since_expand.unwrap_or(0.0);
        if since < SETTLE.as_secs_f64() {
            tokio::time::sleep(SETTLE - Duration::from_secs_f64(since)).await;
        }
        let mut report = backfill::copy_rows(
            &self.pool,
            &self.plan.name,
            &self.plan.backfill,
            self.progress,
            self.progress_every,
        )
        .await?;
        state::finish_backfill(&self.pool, &self.plan.name).await?;
        if self.plan.backfill.vacuum {
            let tables = self.written_tables();
            backfill::vacuum(
                &self.pool,
                &tables,
                self.plan.backfill.vacuum_cost_delay_ms,
                &mut report,
            )
            .await?;
        }
        Ok(report)
    }

    /// The tables the backfill writes: those the expand steps create or add
    /// columns to.
    fn written_tables(&self) -> Vec<sql::Name> {
        let mut tables: Vec<sql::Name> = Vec::new();
        for effect in self.plan.expand.iter().flat_map(|s| sql::effects(&s.sql)) {
            let table = match effect {
                sql::Effect::Table(t) | sql::Effect::Column { table: t, .. } => t,
                _ => continue,
            };
            if !tables.contains(&table) {
                tables.push(table);
            }
        }
        tables
    }

    /// Sets the share of reads served from the new shape (0 rolls back at once).
    pub async fn switch(&self, percent: u8) -> Result<(), Error> {
        if percent > 100 {
            return Err(Self::out_of_order("switch", "the percentage must be 0-100"));
        }
        let status = self.status().await?;
        if !matches!(status.phase, Phase::Backfilled | Phase::Validated) {
            return Err(Self::out_of_order(
                "switch",
                format!(
                    "the migration is {}; reads switch only after the backfill",
                    status.phase
                ),
            ));
        }
        self.ensure_state().await?;
        state::set_switch_percent(&self.pool, &self.plan.name, percent).await?;
        Ok(())
    }

    /// Compares count and checksum of old and new shape range by range, each
    /// range in one snapshot; passes only if every range agrees.
    pub async fn validate(&self) -> Result<ValidationReport, Error> {
        let status = self.status().await?;
        if !matches!(status.phase, Phase::Backfilled | Phase::Validated) {
            return Err(Self::out_of_order(
                "validate",
                format!(
                    "the migration is {}; validate after the backfill",
                    status.phase
                ),
            ));
        }
        self.ensure_state().await?;
        let report = validate::compare_ranges(
            &self.pool,
            &self.plan,
            Some(&self.plan.name),
            self.progress,
            self.progress_every,
        )
        .await?;
        if !report.mismatched.is_empty() {
            // An earlier pass no longer holds: contract must not rely on it.
            state::clear_validated(&self.pool, &self.plan.name).await?;
            return Err(Error::Validation(format!(
                "{}; the migration is back to backfilled. Repair those rows, then validate again (or abort)",
                report.describe_mismatch()
            )));
        }
        state::mark_validated(&self.pool, &self.plan.name).await?;
        Ok(report)
    }

    /// Forgets an interrupted validation's progress: the next `validate`
    /// compares every range again.
    pub async fn restart_validation(&self) -> Result<(), Error> {
        self.ensure_state().await?;
        let mut conn = self.pool.acquire().await?;
        state::forget_validation_progress(&mut conn, &self.plan.name).await?;
        Ok(())
    }

    /// Drops the old shape. The only irreversible step: it runs only after a
    /// passed validation and with reads at 100% for `switch.min_full_seconds`,
    /// and it validates again first (while writers still dual-write): rows
    /// that diverged since the last validation stop it before anything is
    /// dropped, and clear the validation. The plan's dual-write triggers and
    /// functions go with the old shape.
    pub async fn contract(&self) -> Result<(), Error> {
        let status = self.status().await?;
        if status.phase == Phase::Contracted {
            return Ok(());
        }
        if status.phase != Phase::Contracting {
            if status.phase != Phase::Validated {
                return Err(Self::out_of_order(
                    "contract",
                    format!("the migration is {}; validate first", status.phase),
                ));
            }
            let full = status.full_switch_seconds.unwrap_or(0.0);
            if let Some(needed) = self.switch_needed() {
                let needed = needed.min_full_seconds as f64;
                if status.switch_percent < 100 || full < needed {
                    return Err(Self::out_of_order(
                        "contract",
                        format!(
                            "reads must be at 100% for {needed:.0} s first (now {}%, for {full:.0} s)",
                            status.switch_percent
                        ),
                    ));
                }
            }
            refuse_transaction_control("contract", &self.plan.contract)?;
            self.ensure_state().await?;
            let report = validate::compare_ranges(
                &self.pool,
                &self.plan,
                None,
                self.progress,
                self.progress_every,
            )
            .await?;
            if !report.mismatched.is_empty() {
                state::clear_validated(&self.pool, &self.plan.name).await?;
                return Err(Error::Validation(format!(
                    "contract refused, nothing was dropped: the shapes diverged since the last validation, {}; \
                     the migration is back to backfilled. Repair those rows, validate again, then contract (or abort)",
                    report.describe_mismatch()
                )));
            }
            // Writers stop touching the old shape before it goes. Only from
            // `validated`: a validation failing meanwhile keeps it.
            if !state::begin_contract(&self.pool, &self.plan.name).await? {
                return Err(Self::out_of_order(
                    "contract",
                    "the validation was cleared meanwhile; validate first",
                ));
            }
            tokio::time::sleep(SETTLE).await;
        }
        self.run_final_steps("contract", &self.plan.contract)
            .await?;
        state::set_phase(&self.pool, &self.plan.name, Phase::Contracted).await?;
        Ok(())
    }

    /// The read switch contract waits for: the plan's, or the default one
    /// when applications read pgshift's state (`readers`) without a
    /// `[switch]`; none when nothing reads it (raw-SQL clients on views, or
    /// writers kept current by triggers): then the switch is ceremony.
    pub fn needs_switch(&self) -> bool {
        self.switch_needed().is_some()
    }

    fn switch_needed(&self) -> Option<plan::Switch> {
        match (&self.plan.switch, self.plan.readers.is_empty()) {
            (Some(s), _) => Some(s.clone()),
            (None, false) => Some(plan::Switch::default()),
            (None, true) => None,
        }
    }

    /// Rolls back before contract: reads and writes go back to the old shape
    /// only, then the plan's abort steps remove the new shape, with the
    /// dual-write triggers and functions (and the next expand runs every step
    /// again).
    pub async fn abort(&self) -> Result<(), Error> {
        let status = self.status().await?;
        if status.phase >= Phase::Contracting && status.phase != Phase::Aborted {
            return Err(Self::out_of_order(
                "abort",
                "contract has run; the old shape is gone",
            ));
        }
        refuse_transaction_control("abort", &self.plan.abort)?;
        self.ensure_state().await?;
        state::begin_abort(&self.pool, &self.plan.name).await?;
        tokio::time::sleep(SETTLE).await;
        self.run_final_steps("abort", &self.plan.abort).await
    }
}

/// Contract and abort are not linted as a whole when they run (the live
/// tables have changed since expand), but a transaction control statement in
/// their steps is refused all the same: it would split the transaction the
/// dual-write objects are dropped in.
fn refuse_transaction_control(section: &str, steps: &[Step]) -> Result<(), Error> {
    let findings = lint::transaction_control(section, steps);
    if findings.is_empty() {
        Ok(())
    } else {
        Err(Error::Lint(findings))
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Quotes an identifier for SQL (names from the plan are not trusted text).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
