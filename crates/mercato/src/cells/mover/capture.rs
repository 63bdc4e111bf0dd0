//! Step 1's set-up and the change capture: the merchant fenced in the
//! target as `arriving` (`cell_absent`: the cell's workers do not see it,
//! and its requests there are refused; `departed` once a cell has let it
//! go), and triggers on every tenant table that record each key the
//! merchant writes (in `move_changes`, for `replay`). Triggers
//! are DDL on busy tables: they go in and out under a short lock timeout,
//! retried (`pgshift::toolkit::run_ddl`), never queueing the tables'
//! writers behind them for long. The mover role may not make them (a
//! trigger takes its table's owner): the owner's functions
//! `mercato_capture_on`/`_off` (migration 0023) do, on tenant tables only.

use std::time::Duration;

use pgshift::toolkit::{quote_ident, quote_literal, run_ddl, LockRetry};
use serde_json::Value;
use sqlx::PgPool;

use super::run::MoveRun;
use super::tables::{tenant_tables, Table};
use super::{MoveError, MAIN};
use crate::db::MerchantId;

/// A trigger waits at most a second for its table's lock, then lets the
/// table's writers through and tries again 200 ms later, 31 times in all.
const TRIGGER_DDL: LockRetry = LockRetry {
    lock_timeout: Duration::from_secs(1),
    attempts: 31,
    first_delay: Duration::from_millis(200),
    max_delay: Duration::from_millis(200),
};

impl MoveRun<'_> {
    /// Step 1's set-up; each statement can run again (resume).
    pub async fn prepare(&self) -> Result<(), MoveError> {
        let m = self.merchant();
        self.enter_directory().await?;
        if self.mv.target != MAIN {
            // The target's foreign keys need the merchant's row (a copy of the directory's).
            let merchant: Value =
                sqlx::query_scalar("select to_jsonb(m) from merchants m where id = $1")
                    .bind(m.0)
                    .fetch_one(self.main())
                    .await?;
            sqlx::query(
                "insert into merchants select * from jsonb_populate_record(null::merchants, $1)
                 on conflict (id) do nothing",
            )
            .bind(&merchant)
            .execute(&self.target)
            .await?;
        }
        sqlx::query(
            "insert into cell_absent (merchant_id, why) values ($1, 'arriving')
             on conflict (merchant_id) do update set why = 'arriving', since = now()",
        )
        .bind(m.0)
        .execute(&self.target)
        .await?;
        // Capture in the source for the move, and in the target already for the
        // reverse stream (it captures nothing until the target serves the
        // merchant: the merchant is fenced there, and the mover's own writes are
        // not captured).
        install_capture(&self.source, &self.tables, m).await?;
        install_capture(&self.target, &self.tables, m).await?;
        Ok(())
    }
}

/// Fences the merchant off in a cell as `departed`: its workers no longer
/// see its rows, and a transaction begun there for it is refused. Returns
/// since when.
pub(super) async fn mark_departed(
    pool: &PgPool,
    m: MerchantId,
) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "insert into cell_absent (merchant_id, why) values ($1, 'departed')
         on conflict (merchant_id) do update set why = 'departed', since = now()
         returning since",
    )
    .bind(m.0)
    .fetch_one(pool)
    .await
}

/// Lifts the merchant's fence in a cell: the cell serves it.
pub(super) async fn unfence(pool: &PgPool, m: MerchantId) -> Result<(), sqlx::Error> {
    sqlx::query("delete from cell_absent where merchant_id = $1")
        .bind(m.0)
        .execute(pool)
        .await?;
    Ok(())
}

/// The names of the merchant's capture triggers (made by migration 0023's
/// functions): on write, on delete.
fn trigger_names(merchant: MerchantId) -> (String, String) {
    let hex = merchant.0.simple().to_string();
    (
        format!("mercato_move_{hex}_w"),
        format!("mercato_move_{hex}_d"),
    )
}

/// `select <function>('<table>'::regclass, '<merchant>')`: a capture
/// function of migration 0023 on one table, as text for `run_ddl` (which
/// binds nothing). The mover role may not create or drop a trigger (that
/// takes the table's owner): these functions, the owner's, do that only.
fn capture_call(function: &str, table: &str, m: MerchantId) -> String {
    format!(
        "select {function}({}::regclass, '{}')",
        quote_literal(&quote_ident(table)),
        m.0
    )
}

/// The merchant's capture triggers on every tenant table of `pool`, each
/// recording the table's key (`mercato_capture_on`).
async fn install_capture(
    pool: &PgPool,
    tables: &[Table],
    m: MerchantId,
) -> Result<(), sqlx::Error> {
    for table in tables {
        let sql = capture_call("mercato_capture_on", &table.name, m);
        run_ddl(pool, &sql, &TRIGGER_DDL).await?;
    }
    Ok(())
}

/// Drops the merchant's capture triggers in a cell and what they captured
/// (again harmlessly: a mover that died just after the flip left them).
pub(super) async fn drop_capture(pool: &PgPool, m: MerchantId) -> Result<(), sqlx::Error> {
    let (on_write, on_delete) = trigger_names(m);
    let installed: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_trigger where tgname in ($1, $2))
             or exists (select 1 from move_changes where merchant_id = $3)",
    )
    .bind(&on_write)
    .bind(&on_delete)
    .bind(m.0)
    .fetch_one(pool)
    .await?;
    if !installed {
        // Nothing to drop: no DDL, whose locks would queue the tables' writers.
        return Ok(());
    }
    for table in tenant_tables(pool).await? {
        let sql = capture_call("mercato_capture_off", &table.name, m);
        run_ddl(pool, &sql, &TRIGGER_DDL).await?;
    }
    sqlx::query("delete from move_changes where merchant_id = $1")
        .bind(m.0)
        .execute(pool)
        .await?;
    Ok(())
}
