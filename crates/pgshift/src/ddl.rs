//! Running one DDL step against a live database without queueing everyone
//! behind it.
//!
//! A DDL statement waiting for its lock blocks every later query on the table
//! while it waits. So each step runs with the plan's `lock_timeout`, and on a
//! lock timeout it backs off and tries again rather than wait in the queue.
//! What a step says it creates (tables, columns, indexes, functions,
//! triggers) is looked up in the catalog before the step counts as done: a
//! statement that ran without error but did nothing (`ALTER TABLE IF EXISTS`
//! on a name in another schema) fails the step instead of passing silently.

use std::time::Duration;

use sqlx::{Acquire, PgConnection, PgPool};

use crate::sql::{self, Effect};
use crate::state::{self, ExpandStep};
use crate::Error;

/// Lock timeouts tolerated before the step fails.
const MAX_ATTEMPTS: u32 = 20;

/// How DDL on a live table waits for its lock: each attempt gives up after
/// `lock_timeout` (so the table's other queries never queue behind it for
/// longer), then the next waits `first_delay`, doubling up to `max_delay`,
/// for at most `attempts` attempts in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRetry {
    pub lock_timeout: Duration,
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl LockRetry {
    /// The attempts of one statement under this policy (the first is
    /// under way).
    pub fn attempts(&self) -> Attempts {
        Attempts {
            policy: *self,
            tried: 1,
            delay: self.first_delay,
        }
    }
}

/// The attempts of one statement so far (see [`LockRetry`]).
#[derive(Debug)]
pub struct Attempts {
    policy: LockRetry,
    tried: u32,
    delay: Duration,
}

impl Attempts {
    /// Whether another attempt is allowed after this one.
    pub fn left(&self) -> bool {
        self.tried < self.policy.attempts
    }

    /// After a lock timeout: waits before the next attempt (`label` names
    /// the statement in the log).
    pub async fn wait(&mut self, label: &str) {
        let delay = self.delay;
        tracing::warn!(
            step = label,
            attempt = self.tried,
            "lock timeout; retrying in {delay:?}"
        );
        tokio::time::sleep(delay).await;
        self.delay = (delay * 2).min(self.policy.max_delay);
        self.tried += 1;
    }
}

/// Runs one DDL statement in a transaction of its own under
/// `retry.lock_timeout` (`SET LOCAL`: the pool's connection keeps none of
/// it), retried on lock timeouts as `retry` says.
pub async fn run_ddl(pool: &PgPool, sql: &str, retry: &LockRetry) -> Result<(), sqlx::Error> {
    let set_timeout = format!(
        "set local lock_timeout = {}",
        retry.lock_timeout.as_millis()
    );
    let mut attempts = retry.attempts();
    loop {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(&set_timeout).execute(&mut *tx).await?;
        match sqlx::query(sql).execute(&mut *tx).await {
            Ok(_) => return tx.commit().await,
            Err(err) if is_lock_timeout(&err) && attempts.left() => {
                drop(tx);
                attempts.wait(sql).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// SQLSTATE 55P03 (lock_not_available): a `lock_timeout` ran out.
pub fn is_lock_timeout(err: &sqlx::Error) -> bool {
    has_sqlstate(err, "55P03")
}

/// One step of the plan as it is run.
pub(crate) struct StepRun<'a> {
    /// For messages: `expand[0] "customers"`.
    pub label: &'a str,
    pub sql: &'a str,
    /// With a record, the step is also recorded as run, in the step's own
    /// transaction, so an interrupted expand resumes after the last step
    /// that committed.
    pub record: Option<&'a ExpandStep<'a>>,
    /// What the step says it creates: looked up in the catalog after it ran
    /// (in its transaction, before it is recorded); anything missing fails
    /// the step.
    pub effects: &'a [Effect],
    /// More SQL to run after the step's own, in the step's transaction, so
    /// that other sessions see both or neither. Run only if the step has a
    /// transaction; the result says whether it ran.
    pub then: Option<&'a str>,
}

/// Runs one step under the plan's `lock_timeout`, retrying on lock timeouts.
/// Returns whether `then` ran with it.
pub(crate) async fn run_step(
    pool: &PgPool,
    lock_timeout_ms: u64,
    step: &StepRun<'_>,
) -> Result<bool, Error> {
    let label = step.label;
    let mut attempts = LockRetry {
        lock_timeout: Duration::from_millis(lock_timeout_ms),
        attempts: MAX_ATTEMPTS,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
    }
    .attempts();
    loop {
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql(&format!("set lock_timeout = {lock_timeout_ms}"))
            .execute(&mut *conn)
            .await?;
        let result = execute(&mut conn, step).await;
        let _ = sqlx::raw_sql("reset lock_timeout")
            .execute(&mut *conn)
            .await;
        match result {
            Ok(then_ran) => return Ok(then_ran),
            Err(Failure::Db(err)) if is_lock_timeout(&err) && attempts.left() => {
                attempts.wait(label).await;
            }
            Err(Failure::Db(source)) => {
                return Err(Error::Step {
                    step: label.to_owned(),
                    source,
                })
            }
            Err(Failure::Missing(missing)) => {
                return Err(Error::NoEffect {
                    step: label.to_owned(),
                    missing,
                })
            }
        }
    }
}

enum Failure {
    Db(sqlx::Error),
    /// What the step should have created and did not.
    Missing(Vec<String>),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure::Db(err)
    }
}

async fn execute(conn: &mut PgConnection, step: &StepRun<'_>) -> Result<bool, Failure> {
    if !sql::needs_no_transaction(step.sql) {
        let mut tx = conn.begin().await?;
        match sqlx::raw_sql(step.sql).execute(&mut *tx).await {
            Ok(_) => {
                if let Some(then) = step.then {
                    sqlx::raw_sql(then).execute(&mut *tx).await?;
                }
                let missing = missing_effects(&mut tx, step.effects).await?;
                if !missing.is_empty() {
                    tx.rollback().await?;
                    return Err(Failure::Missing(missing));
                }
                if let Some(record) = step.record {
                    state::record_expand_step(&mut tx, record).await?;
                }
                tx.commit().await?;
                return Ok(step.then.is_some());
            }
            // Some other statement that refuses a transaction block (VACUUM, …):
            // it ran nothing, so run it the way below.
            Err(err) if has_sqlstate(&err, "25001") => tx.rollback().await?,
            Err(err) => return Err(err.into()),
        }
    }
    // CONCURRENTLY cannot run in a transaction, so the step and its record are
    // two commits: interrupted between them, the step runs again on resume
    // (write it with IF NOT EXISTS).
    sqlx::raw_sql(step.sql).execute(&mut *conn).await?;
    let missing = missing_effects(conn, step.effects).await?;
    if !missing.is_empty() {
        return Err(Failure::Missing(missing));
    }
    if let Some(record) = step.record {
        state::record_expand_step(conn, record).await?;
    }
    Ok(false)
}

/// The effects the catalog does not show, described for the error.
async fn missing_effects(
    conn: &mut PgConnection,
    effects: &[Effect],
) -> Result<Vec<String>, sqlx::Error> {
    let mut missing = Vec::new();
    for effect in effects {
        let found: Option<bool> = match effect {
            Effect::Table(table) => {
                sqlx::query_scalar(
                    "select exists (select 1 from pg_class where oid = to_regclass($1) and relkind in ('r', 'p'))",
                )
                .bind(table.sql())
                .fetch_one(&mut *conn)
                .await?
            }
            Effect::Column { table, column } => {
                sqlx::query_scalar(
                    "select exists (select 1 from pg_attribute
                                    where attrelid = to_regclass($1) and attname = $2
                                      and attnum > 0 and not attisdropped)",
                )
                .bind(table.sql())
                .bind(column)
                .fetch_one(&mut *conn)
                .await?
            }
            // NULL: the index exists but is invalid (a failed concurrent build).
            Effect::Index { name, table } => {
                sqlx::query_scalar(
                    "select case when count(*) = 0 then false when bool_or(i.indisvalid) then true end
                     from pg_index i join pg_class c on c.oid = i.indexrelid
                     where i.indrelid = to_regclass($1) and c.relname = $2",
                )
                .bind(table.sql())
                .bind(&name.name)
                .fetch_one(&mut *conn)
                .await?
            }
            Effect::Function { name, .. } => {
                sqlx::query_scalar(
                    "select exists (select 1 from pg_proc p
                                    where p.proname = $2
                                      and case when $1::text is null then pg_function_is_visible(p.oid)
                                               else p.pronamespace = to_regnamespace($1) end)",
                )
                .bind(name.schema.as_deref().map(crate::quote_ident))
                .bind(&name.name)
                .fetch_one(&mut *conn)
                .await?
            }
            Effect::Trigger { name, table } => {
                sqlx::query_scalar(
                    "select exists (select 1 from pg_trigger where tgrelid = to_regclass($1) and tgname = $2)",
                )
                .bind(table.sql())
                .bind(name)
                .fetch_one(&mut *conn)
                .await?
            }
        };
        match found {
            Some(true) => {}
            Some(false) => missing.push(format!("{effect} does not exist")),
            None => missing.push(format!(
                "{effect} is INVALID (a failed concurrent build): drop it, then run expand again"
            )),
        }
    }
    Ok(missing)
}

/// Whether `err` is a database error of SQLSTATE `code`.
pub fn has_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}
