//! Moving a merchant to another cell while it trades.
//!
//! Change capture by triggers, not logical replication: it needs nothing of
//! the server (no `wal_level = logical`, no replication slots holding WAL, no
//! replica-identity trap for other merchants) and works between any two
//! PostgreSQL databases the mover can reach; other merchants' writes pay only
//! a trigger's `WHEN (new.merchant_id = …)` test. The steps, each resumable:
//!
//! 1. **copying**: the move is recorded, the target gets the merchant as
//!    `arriving` (fenced, invisible to its workers), the source's tenant
//!    tables get capture triggers for the merchant (each written key), then
//!    every table's rows are copied in keyset batches, parents first (see
//!    `copy`: short transactions, no snapshot held);
//! 2. **catching_up**: the captured keys are replayed in order: each key's
//!    row as the source holds it now is upserted, or deleted if it is gone,
//!    until few are left;
//! 3. **cutting_over**: the rows are verified in chunks and what differs is
//!    narrowed down, then the directory marks the merchant `moving` (from
//!    here its requests pass the gate, at two round trips each: not for the
//!    whole move), the gate is closed (the mover takes the advisory lock
//!    every request of the merchant holds shared: in-flight requests finish,
//!    new ones wait), the source marks the merchant `departed` (its workers
//!    stop seeing it), the last changes are applied, the keys that changed
//!    or differed are compared, the directory flips and the gate opens;
//! 4. **moved** → **cleaned**: the source's copy is deleted in batches.
//!
//! One module per job, in the order a move meets them: `tables` (the
//! catalogue of tenant tables and the SQL written from it), `record` (the
//! move records and directory entries in the main database), `run` (the
//! databases and a move at work, `MoveRun`), `capture`
//! (set-up and triggers), `copy`, `replay` (applying captured changes),
//! `verify` (checksums, narrowing), `cutover` (the gated pause and the
//! flip), `cleanup` (deleting a copy; abort, rollback). The SQL they write
//! from the catalogue comes from `pgshift::toolkit`. This file drives a move
//! from phase to phase.
//!
//! Every step runs as role `mercato_mover` ([`Pools`]), on every cell, not as
//! the schema's owner: a move handles one merchant, so each transaction that
//! reads or writes tenant rows names it (`app.merchant_id`) and row-level
//! security lets its rows through and no other's; the platform tables a move
//! keeps (directory, move records, fence, captured keys) it reaches by the
//! grants `db::PLATFORM_GRANTS` lists. The three things only the owner may
//! do go through the owner's `security definer` functions (migration 0023),
//! each as narrow as its step: the capture triggers' DDL (`capture`, tenant
//! tables only), deleting a cell's copy of the merchant's row (`cleanup`,
//! only where the merchant departed), and counting the transactions older
//! than the cutover (`cutover`: another role's sessions show the mover no
//! `xact_start`). No step is left on the owner.

mod capture;
mod cleanup;
mod copy;
mod cutover;
mod record;
mod replay;
mod run;
mod tables;
mod verify;

use super::{GATE_CLASS, MAIN};
use crate::db::MerchantId;

pub use cleanup::{abort, cleanup_source, rollback, settle_cut_over};
pub use record::{
    cell_of, find_merchant, hold, load, running, schema_version, start, start_in_serve, Phase,
};
pub use run::{Pools, Progress, Quiet, DEFAULT_DUTY_CYCLE};
pub use tables::{tenant_tables, Table};
pub use verify::checksums;

use cleanup::Leftover;
use run::{MoveRun, Side};

/// The move record.
#[derive(Debug, Clone)]
pub struct Move {
    pub id: uuid::Uuid,
    pub merchant: MerchantId,
    pub source: String,
    pub target: String,
    pub phase: Phase,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// For a rollback: the move it undoes.
    pub rollback_of: Option<uuid::Uuid>,
}

/// Rows per copy, apply and cleanup batch.
const BATCH: i64 = 1000;
/// Changes left below which catching up stops and the cutover starts.
const CUTOVER_BELOW: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no merchant {0}")]
    NoMerchant(String),
    #[error("no cell named {0:?} (cells: {1})")]
    UnknownCell(String, String),
    #[error("merchant {merchant} already lives in cell {cell:?}")]
    AlreadyThere { merchant: MerchantId, cell: String },
    #[error("merchant {0} has a move running (mercato tenants resume, or abort)")]
    AlreadyMoving(MerchantId),
    #[error("merchant {0} has no move running")]
    NotMoving(MerchantId),
    #[error("cell {cell:?} is at schema version {found}, this binary's is {wanted}: start `mercato serve` with it (it migrates every cell) first")]
    SchemaBehind {
        cell: String,
        found: i64,
        wanted: i64,
    },
    #[error("the move has cut over already: it cannot be aborted (mercato tenants rollback undoes a move made with --keep-source)")]
    PastCutover,
    #[error("merchant {0} has no move to roll back: its last move was not made with --keep-source, or was cleaned up or rolled back already")]
    NothingToRollBack(MerchantId),
    #[error("table {table}: {source_rows} rows (checksum {source_sum}) in the source, {target_rows} ({target_sum}) in the target")]
    Mismatch {
        table: String,
        source_rows: i64,
        target_rows: i64,
        source_sum: String,
        target_sum: String,
    },
    #[error("{0}")]
    Stalled(String),
    #[error("another mover is driving this move now (a `tenants move`/`resume`, or `serve` for a move started from the admin API); wait for it, or stop it first")]
    DrivenElsewhere,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Carries a move on from its recorded phase to the end (`keep_source`: stop
/// at `moved`, leaving the source's copy for `mercato tenants cleanup`).
pub async fn drive(
    pools: &Pools,
    mut mv: Move,
    keep_source: bool,
    progress: &dyn Progress,
) -> Result<Move, MoveError> {
    let _driving = hold(&pools.main, mv.id).await?;
    loop {
        match mv.phase {
            Phase::Cleaned | Phase::Aborted | Phase::RolledBack => return Ok(mv),
            Phase::Moved if keep_source => return Ok(mv),
            _ => mv = advance(pools, mv, progress).await?,
        }
    }
}

/// Runs the move's current phase to its end: the record then names the next.
pub async fn advance(pools: &Pools, mv: Move, progress: &dyn Progress) -> Result<Move, MoveError> {
    let mut run = MoveRun::open(pools, mv, progress, Side::Source).await?;
    progress.phase(run.mv.phase);
    match run.mv.phase {
        Phase::Copying => {
            run.prepare().await?;
            run.copy().await?;
            run.set_phase(Phase::CatchingUp).await?;
        }
        Phase::CatchingUp => {
            loop {
                let applied = run.apply_changes(&mut replay::Touched::new()).await?;
                run.count_applied(applied).await?;
                if applied < CUTOVER_BELOW {
                    break;
                }
            }
            run.set_phase(Phase::CuttingOver).await?;
        }
        Phase::CuttingOver => run.cut_over().await?,
        Phase::Moved => {
            // The source's copy goes, and with it the chance of a rollback:
            // the reverse stream stops.
            capture::drop_capture(&run.source, run.merchant()).await?;
            capture::drop_capture(&run.target, run.merchant()).await?;
            run.delete_copy(Leftover::Source).await?;
            run.set_phase(Phase::Cleaned).await?;
        }
        Phase::Cleaned | Phase::Aborted | Phase::RolledBack => {}
    }
    Ok(run.mv)
}
