//! What the main database knows of moves: the move records
//! (`tenant_moves`: phase, counters, copy cursor, cutover detail), the
//! directory entries a move changes (`tenant_directory`: the merchant's
//! cell and its `moving` gate), the driver's lock, and the cells' schema
//! versions a move needs to match. Every statement on these tables is here.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::run::{MoveRun, Pools};
use super::{Move, MoveError, MAIN};
use crate::db::text_enum;
use crate::db::MerchantId;

text_enum! {
    /// Where a move is.
    pub enum Phase {
        Copying = "copying",
        CatchingUp = "catching_up",
        CuttingOver = "cutting_over",
        Moved = "moved",
        Cleaned = "cleaned",
        Aborted = "aborted",
        /// Undone by a rollback (the move back names this one).
        RolledBack = "rolled_back",
    }
}

/// The phases of a move still running (one per merchant at most).
const RUNNING: &[Phase] = &[Phase::Copying, Phase::CatchingUp, Phase::CuttingOver];

/// A move record as read.
#[derive(sqlx::FromRow)]
struct MoveRow {
    id: Uuid,
    merchant_id: Uuid,
    source: String,
    target: String,
    phase: String,
    started_at: chrono::DateTime<chrono::Utc>,
    rollback_of: Option<Uuid>,
}

impl MoveRow {
    fn parse(self) -> Result<Move, sqlx::Error> {
        Ok(Move {
            id: self.id,
            merchant: MerchantId(self.merchant_id),
            source: self.source,
            target: self.target,
            phase: self
                .phase
                .parse()
                .map_err(|e: crate::db::UnknownValue| sqlx::Error::Decode(Box::new(e)))?,
            started_at: self.started_at,
            rollback_of: self.rollback_of,
        })
    }
}

/// Resolves a merchant given by id or slug.
pub async fn find_merchant(main: &PgPool, given: &str) -> Result<MerchantId, MoveError> {
    let id: Option<Uuid> =
        sqlx::query_scalar("select id from merchants where id::text = $1 or slug = $1 limit 1")
            .bind(given)
            .fetch_optional(main)
            .await?;
    id.map(MerchantId)
        .ok_or_else(|| MoveError::NoMerchant(given.to_owned()))
}

/// The cell that serves the merchant now. Admin requests ask too, as the app
/// role: through `mercato_directory_entry` (it has no grant on the table).
pub async fn cell_of(main: &PgPool, merchant: MerchantId) -> Result<String, sqlx::Error> {
    let cell: Option<String> = sqlx::query_scalar("select cell from mercato_directory_entry($1)")
        .bind(merchant.0)
        .fetch_optional(main)
        .await?;
    Ok(cell.unwrap_or_else(|| MAIN.to_owned()))
}

/// The merchant's move in progress, if any.
pub async fn running(main: &PgPool, merchant: MerchantId) -> Result<Option<Move>, sqlx::Error> {
    newest_move(main, merchant, RUNNING).await
}

/// A move by its id, with whether it keeps its source.
pub async fn load(main: &PgPool, id: Uuid) -> Result<Option<(Move, bool)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Kept {
        #[sqlx(flatten)]
        record: MoveRow,
        keep_source: bool,
    }
    let kept: Option<Kept> = sqlx::query_as(
        "select id, merchant_id, source, target, phase, started_at, rollback_of, keep_source
         from tenant_moves where id = $1",
    )
    .bind(id)
    .fetch_optional(main)
    .await?;
    kept.map(|k| Ok((k.record.parse()?, k.keep_source)))
        .transpose()
}

/// The merchant's newest move in one of `phases` (through `mercato_moves_of`,
/// which the app role may call: admin requests show a running move).
pub(super) async fn newest_move(
    main: &PgPool,
    merchant: MerchantId,
    phases: &[Phase],
) -> Result<Option<Move>, sqlx::Error> {
    let phases: Vec<&str> = phases.iter().map(|p| p.as_str()).collect();
    let row: Option<MoveRow> = sqlx::query_as(
        "select id, merchant_id, source, target, phase, started_at, rollback_of from mercato_moves_of($1)
         where phase = any ($2) order by started_at desc limit 1",
    )
    .bind(merchant.0)
    .bind(&phases)
    .fetch_optional(main)
    .await?;
    row.map(MoveRow::parse).transpose()
}

/// Checks the request and records a new move (nothing else changes yet),
/// for the caller to drive.
pub async fn start(pools: &Pools, merchant: MerchantId, to: &str) -> Result<Move, MoveError> {
    record(pools, merchant, to, false, false).await
}

/// `start` for `serve` to drive (the admin API): recorded as such, so any
/// instance of `serve` carries it on, also after a crash; `keep_source` is
/// kept with it.
pub async fn start_in_serve(
    pools: &Pools,
    merchant: MerchantId,
    to: &str,
    keep_source: bool,
) -> Result<Move, MoveError> {
    record(pools, merchant, to, true, keep_source).await
}

async fn record(
    pools: &Pools,
    merchant: MerchantId,
    to: &str,
    by_serve: bool,
    keep_source: bool,
) -> Result<Move, MoveError> {
    let target = pools.cell(to)?;
    let source = cell_of(&pools.main, merchant).await?;
    if source == to {
        return Err(MoveError::AlreadyThere {
            merchant,
            cell: source,
        });
    }
    if running(&pools.main, merchant).await?.is_some() {
        return Err(MoveError::AlreadyMoving(merchant));
    }
    let source_pool = pools.cell(&source)?;
    check_schema(to, target).await?;
    check_schema(&source, source_pool).await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "insert into tenant_moves (id, merchant_id, source, target, phase, driven_by, keep_source)
         values ($1, $2, $3, $4, 'copying', $5, $6)",
    )
    .bind(id)
    .bind(merchant.0)
    .bind(&source)
    .bind(to)
    .bind(if by_serve { "api" } else { "cli" })
    .bind(keep_source)
    .execute(&pools.main)
    .await;
    match inserted {
        Err(e) if crate::db::violates(&e, "tenant_moves_one_running") => {
            return Err(MoveError::AlreadyMoving(merchant))
        }
        other => other?,
    };
    running(&pools.main, merchant)
        .await?
        .ok_or(MoveError::NotMoving(merchant))
}

/// The newest migration this binary has.
pub fn schema_version() -> i64 {
    crate::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

pub(super) async fn check_schema(name: &str, pool: &PgPool) -> Result<(), MoveError> {
    let found: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await
            .unwrap_or(None);
    let found = found.unwrap_or(0);
    let wanted = schema_version();
    if found < wanted {
        return Err(MoveError::SchemaBehind {
            cell: name.to_owned(),
            found,
            wanted,
        });
    }
    Ok(())
}

/// The advisory lock class a move's driver holds (two-key form: class, move).
const DRIVER_CLASS: i32 = 0x4d44; // "MD"

/// Holds the move's driver lock for as long as the connection lives: one
/// mover at a time carries a move on, aborts or cleans it up.
pub async fn hold(main: &PgPool, id: Uuid) -> Result<PgConnection, MoveError> {
    let mut conn = PgConnection::connect_with(&own_connection(main)).await?;
    let held: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, hashtext($2::text))")
        .bind(DRIVER_CLASS)
        .bind(id)
        .fetch_one(&mut conn)
        .await?;
    if !held {
        let _ = conn.close().await;
        return Err(MoveError::DrivenElsewhere);
    }
    Ok(conn)
}

/// A connection of the mover's own to the main database, outside its pool
/// (a session lock lives as long as it does).
pub(super) fn own_connection(main: &PgPool) -> sqlx::postgres::PgConnectOptions {
    main.connect_options()
        .as_ref()
        .clone()
        .application_name("mercato-mover")
}

impl MoveRun<'_> {
    pub async fn set_phase(&mut self, phase: Phase) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update tenant_moves set phase = $2, updated_at = now(), last_error = null,
                    finished_at = case when $2 in ('cleaned', 'aborted') then now() end
             where id = $1",
        )
        .bind(self.mv.id)
        .bind(phase)
        .execute(self.main())
        .await?;
        self.mv.phase = phase;
        Ok(())
    }

    /// Counts captured changes replayed, in the record and the progress.
    pub async fn count_applied(&self, applied: usize) -> Result<(), sqlx::Error> {
        if applied > 0 {
            sqlx::query("update tenant_moves set changes_applied = changes_applied + $2, updated_at = now() where id = $1")
                .bind(self.mv.id)
                .bind(applied as i64)
                .execute(self.main())
                .await?;
        }
        self.progress.applied(applied as u64);
        Ok(())
    }

    pub async fn count_cleaned(&self, rows: u64) -> Result<(), sqlx::Error> {
        sqlx::query("update tenant_moves set rows_cleaned = rows_cleaned + $2, updated_at = now() where id = $1")
            .bind(self.mv.id)
            .bind(rows as i64)
            .execute(self.main())
            .await?;
        Ok(())
    }

    /// The copy's progress as recorded: rows copied, and the cursor (the
    /// table it was at and the last key copied there), if any.
    pub async fn copy_cursor(&self) -> Result<(i64, Option<String>, Option<Value>), sqlx::Error> {
        sqlx::query_as("select rows_copied, copy_table, copy_after from tenant_moves where id = $1")
            .bind(self.mv.id)
            .fetch_one(self.main())
            .await
    }

    pub async fn save_copy_cursor(
        &self,
        copied: i64,
        table: &str,
        after: &Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update tenant_moves set rows_copied = $2, copy_table = $3, copy_after = $4, updated_at = now()
             where id = $1",
        )
        .bind(self.mv.id)
        .bind(copied)
        .bind(table)
        .bind(after)
        .execute(self.main())
        .await?;
        Ok(())
    }

    pub async fn save_cutover(&self, record: &CutoverRecord) -> Result<(), sqlx::Error> {
        sqlx::query("update tenant_moves set cutover = $2 where id = $1")
            .bind(self.mv.id)
            .bind(sqlx::types::Json(record))
            .execute(self.main())
            .await?;
        Ok(())
    }

    /// The merchant's row in the directory, for the cutover to mark
    /// `moving` and flip; its requests pass no gate yet.
    pub async fn enter_directory(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into tenant_directory (merchant_id, cell) values ($1, $2)
             on conflict (merchant_id) do nothing",
        )
        .bind(self.merchant().0)
        .bind(&self.mv.source)
        .execute(self.main())
        .await?;
        Ok(())
    }

    /// The flip, in one transaction: the directory names the target (gate
    /// open again), the move is `moved` with its cutover detail and the
    /// length of the pause (begun at `paused`), and every process hears of
    /// it.
    pub async fn flip(
        &mut self,
        paused: Instant,
        record: &CutoverRecord,
    ) -> Result<(), sqlx::Error> {
        let m = self.merchant();
        let mut tx = self.main().begin().await?;
        sqlx::query("update tenant_directory set cell = $2, moving = false, updated_at = now() where merchant_id = $1")
            .bind(m.0)
            .bind(&self.mv.target)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "update tenant_moves set phase = 'moved', pause_ms = $2, cutover = $3, updated_at = now()
             where id = $1",
        )
        .bind(self.mv.id)
        .bind(ms(paused.elapsed()))
        .bind(sqlx::types::Json(record))
        .execute(&mut *tx)
        .await?;
        sqlx::query("select pg_notify('tenant_directory', $1::text)")
            .bind(m.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.mv.phase = Phase::Moved;
        Ok(())
    }
}

/// Raises (for a cutover) or lowers the merchant's gate in the directory,
/// and tells every process at once (`NOTIFY tenant_directory`).
pub(super) async fn mark_moving<'e>(
    main: impl sqlx::PgExecutor<'e>,
    m: MerchantId,
    moving: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with placed as (update tenant_directory set moving = $2, updated_at = now() where merchant_id = $1)
         select pg_notify('tenant_directory', $1::text)",
    )
    .bind(m.0)
    .bind(moving)
    .execute(main)
    .await?;
    Ok(())
}

/// A move whose source's copy is deleted (`--keep-source`, cleaned later).
pub(super) async fn mark_cleaned(main: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update tenant_moves set phase = 'cleaned', finished_at = now(), updated_at = now() where id = $1")
        .bind(id)
        .execute(main)
        .await?;
    Ok(())
}

/// An aborted rollback, in one transaction: the rollback is `aborted`, the
/// move it undid `moved` again, the merchant's gate down.
pub(super) async fn abort_rollback(
    main: &PgPool,
    rollback: &Move,
    undone: Uuid,
) -> Result<(), sqlx::Error> {
    let mut tx = main.begin().await?;
    sqlx::query("update tenant_moves set phase = 'aborted', finished_at = now(), updated_at = now() where id = $1")
        .bind(rollback.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("update tenant_moves set phase = 'moved', updated_at = now() where id = $1")
        .bind(undone)
        .execute(&mut *tx)
        .await?;
    mark_moving(&mut *tx, rollback.merchant, false).await?;
    tx.commit().await
}

/// Records a rollback (`back`, the move back) of `done`, in one
/// transaction: `done` becomes `rolled_back` if it is still `moved`, and
/// `back` is recorded `catching_up` (its start time read back into it).
/// `false` if `done` was not `moved` any more.
pub(super) async fn record_rollback(
    main: &PgPool,
    done: &Move,
    back: &mut Move,
) -> Result<bool, sqlx::Error> {
    let mut tx = main.begin().await?;
    let updated = sqlx::query(
        "update tenant_moves set phase = 'rolled_back', finished_at = now(), updated_at = now()
         where id = $1 and phase = 'moved'",
    )
    .bind(done.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    back.started_at = sqlx::query_scalar(
        "insert into tenant_moves (id, merchant_id, source, target, phase, rollback_of)
         values ($1, $2, $3, $4, 'catching_up', $5) returning started_at",
    )
    .bind(back.id)
    .bind(back.merchant.0)
    .bind(&back.source)
    .bind(&back.target)
    .bind(done.id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// What a cutover spent its time on, kept in `tenant_moves.cutover`.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct CutoverRecord {
    /// Hashing every row in chunks, before the pause.
    pub pre_verify_ms: f64,
    /// Chunks that differed then (writes not yet replayed).
    pub ranges_differing: usize,
    /// Each narrowing round: keys still to recheck after it.
    pub rounds: Vec<NarrowRound>,
    /// Waiting for the merchant's in-flight requests to leave the gate.
    pub gate_wait_ms: f64,
    /// The pause (gate closed) step by step.
    pub wait_for_older_ms: f64,
    pub changes_in_pause: usize,
    pub replay_in_pause_ms: f64,
    pub keys_rechecked: usize,
    pub recheck_ms: f64,
}

#[derive(Debug, serde::Serialize)]
pub(super) struct NarrowRound {
    pub keys_left: usize,
    pub took_ms: f64,
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
