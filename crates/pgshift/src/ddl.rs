//! Running one DDL step against a live database without queueing everyone
//! behind it.
//!
//! A DDL statement waiting for its lock blocks every later query on the table
//! while it waits. So each step runs with the plan's `lock_timeout`, and on a
//! lock timeout it backs off and tries again rather than wait in the queue.

use std::time::Duration;

use sqlx::{Acquire, PgConnection, PgPool};

use crate::state::{self, ExpandStep};
use crate::Error;

/// Lock timeouts tolerated before the step fails.
const MAX_ATTEMPTS: u32 = 20;

/// Runs `sql` (one step of the plan, `label` in messages). With `record`, the
/// step is also recorded as run, in the step's own transaction, so an
/// interrupted expand resumes after the last step that committed.
pub(crate) async fn run_step(
    pool: &PgPool,
    lock_timeout_ms: u64,
    label: &str,
    sql: &str,
    record: Option<&ExpandStep<'_>>,
) -> Result<(), Error> {
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql(&format!("set lock_timeout = {lock_timeout_ms}"))
            .execute(&mut *conn)
            .await?;
        let result = execute(&mut conn, sql, record).await;
        let _ = sqlx::raw_sql("reset lock_timeout")
            .execute(&mut *conn)
            .await;
        match result {
            Ok(()) => return Ok(()),
            Err(err) if has_sqlstate(&err, "55P03") && attempt < MAX_ATTEMPTS => {
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

async fn execute(
    conn: &mut PgConnection,
    sql: &str,
    record: Option<&ExpandStep<'_>>,
) -> Result<(), sqlx::Error> {
    let Some(record) = record else {
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
        return Ok(());
    };
    if !needs_no_transaction(sql) {
        let mut tx = conn.begin().await?;
        match sqlx::raw_sql(sql).execute(&mut *tx).await {
            Ok(_) => {
                state::record_expand_step(&mut tx, record).await?;
                return tx.commit().await;
            }
            // Some other statement that refuses a transaction block (VACUUM, …):
            // it ran nothing, so run it the way below.
            Err(err) if has_sqlstate(&err, "25001") => tx.rollback().await?,
            Err(err) => return Err(err),
        }
    }
    // CONCURRENTLY cannot run in a transaction, so the step and its record are
    // two commits: interrupted between them, the step runs again on resume
    // (write it with IF NOT EXISTS).
    sqlx::raw_sql(sql).execute(&mut *conn).await?;
    state::record_expand_step(conn, record).await
}

/// `CREATE INDEX CONCURRENTLY` and the like refuse a transaction block. Lint
/// keeps such a statement in a step of its own.
fn needs_no_transaction(sql: &str) -> bool {
    crate::lint::words(sql).iter().any(|w| w == "concurrently")
}

fn has_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}
