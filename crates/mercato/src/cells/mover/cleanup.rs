//! Step 4 and the ways back: deleting a cell's copy of the merchant in
//! throttled batches, and what an operator runs besides `drive`: the
//! cleanup of a source kept with `--keep-source`, abort before the cutover,
//! settling a cutover whose mover died, and rollback of a kept move.

use std::time::Instant;

use uuid::Uuid;

use super::capture::{drop_capture, mark_departed, unfence};
use super::record::{self, cell_of, check_schema, hold, mark_moving, newest_move, running, Phase};
use super::run::{mover_tx, MoveRun, Pools, Progress, Quiet, Side};
use super::{Move, MoveError, BATCH, MAIN};
use crate::db::MerchantId;

/// Which copy of the merchant a cleanup deletes.
pub(super) enum Leftover {
    /// What an earlier, unrecorded attempt of the copy left in the target:
    /// deleted quietly, the merchant's row kept (the copy's foreign keys
    /// need it).
    EarlierCopy,
    /// The target's copy, when a move is aborted.
    AbortedCopy,
    /// The source's copy, once the move is done (counted in the record).
    Source,
}

impl MoveRun<'_> {
    /// Deletes the merchant's rows of a cell in batches, children first,
    /// resting by the duty cycle so the cell's other merchants keep their
    /// latency. The merchant's row goes too but in the main database (there
    /// it is the directory's; in a cell it only served foreign keys).
    pub async fn delete_copy(&self, which: Leftover) -> Result<u64, MoveError> {
        let (pool, keep_merchant_row, progress): (_, _, &dyn Progress) = match which {
            Leftover::EarlierCopy => (&self.target, true, &Quiet),
            Leftover::AbortedCopy => (&self.target, self.mv.target == MAIN, self.progress),
            Leftover::Source => (&self.source, self.mv.source == MAIN, self.progress),
        };
        let m = self.merchant();
        let mut total = 0;
        for table in self.tables.iter().rev() {
            let t = table.sql();
            loop {
                let started = Instant::now();
                let mut tx = mover_tx(pool, m).await?;
                let deleted = sqlx::query(&format!(
                    "delete from {t} where ctid = any (array(select ctid from {t} where merchant_id = $1 limit $2))"
                ))
                .bind(m.0)
                .bind(BATCH)
                .execute(tx.conn())
                .await?
                .rows_affected();
                tx.commit().await?;
                if deleted == 0 {
                    break;
                }
                total += deleted;
                if let Leftover::Source = which {
                    self.count_cleaned(deleted).await?;
                }
                progress.cleaned(deleted);
                self.pools.rest(started.elapsed()).await;
            }
        }
        if !keep_merchant_row {
            // Through the owner's function: the mover role may not delete a
            // merchant, and this one only where the cell has let it go.
            sqlx::query("select mercato_forget_departed_merchant($1)")
                .bind(m.0)
                .execute(pool)
                .await?;
        }
        Ok(total)
    }

    /// Abandons a rollback before its cutover: the merchant stays where the
    /// move put it, the move is `moved` again and its reverse stream goes on
    /// (what the rollback replayed into the old source is no loss: a later
    /// rollback goes on from there). The old source (this run's target)
    /// keeps its copy, still fenced.
    async fn abort_rollback(&self, undone: Uuid) -> Result<(), MoveError> {
        drop_capture(&self.target, self.merchant()).await?;
        mark_departed(&self.target, self.merchant()).await?;
        record::abort_rollback(self.main(), &self.mv, undone).await?;
        Ok(())
    }
}

/// Deletes what a finished move left in its source (`--keep-source`).
pub async fn cleanup_source(
    pools: &Pools,
    merchant: MerchantId,
    progress: &dyn Progress,
) -> Result<u64, MoveError> {
    let Some(mv) = newest_move(&pools.main, merchant, &[Phase::Moved]).await? else {
        return Err(MoveError::NotMoving(merchant));
    };
    let _driving = hold(&pools.main, mv.id).await?;
    let run = MoveRun::open(pools, mv, progress, Side::Source).await?;
    // The reverse stream ends (no rollback past a cleanup); the source's
    // triggers, should a crash have left them, would capture the deletes.
    drop_capture(&run.target, merchant).await?;
    drop_capture(&run.source, merchant).await?;
    let n = run.delete_copy(Leftover::Source).await?;
    record::mark_cleaned(&pools.main, run.mv.id).await?;
    Ok(n)
}

/// Abandons a move before its cutover: the source stays the only copy.
pub async fn abort(
    pools: &Pools,
    merchant: MerchantId,
    progress: &dyn Progress,
) -> Result<(), MoveError> {
    let mv = running(&pools.main, merchant)
        .await?
        .ok_or(MoveError::NotMoving(merchant))?;
    let _driving = hold(&pools.main, mv.id).await?;
    if cell_of(&pools.main, merchant).await? == mv.target {
        return Err(MoveError::PastCutover);
    }
    // The target's tables: it is the target's copy that goes.
    let mut run = MoveRun::open(pools, mv, progress, Side::Target).await?;
    if let Some(undone) = run.mv.rollback_of {
        return run.abort_rollback(undone).await;
    }
    drop_capture(&run.source, merchant).await?;
    drop_capture(&run.target, merchant).await?;
    unfence(&run.source, merchant).await?;
    // The target keeps fencing the merchant (a stale router finds nothing
    // there) and loses what was copied.
    mark_departed(&run.target, merchant).await?;
    run.delete_copy(Leftover::AbortedCopy).await?;
    mark_moving(&pools.main, merchant, false).await?;
    run.set_phase(Phase::Aborted).await?;
    Ok(())
}

/// Ends what a mover killed right after a cutover left undone: the flip is
/// committed (the move is `moved`) but the source may still have the
/// capture, which the move drops next. Returns that move, or `None` if the
/// merchant's last move is not one that cut over.
pub async fn settle_cut_over(
    pools: &Pools,
    merchant: MerchantId,
) -> Result<Option<Move>, MoveError> {
    let Some(done) = newest_move(&pools.main, merchant, &[Phase::Moved]).await? else {
        return Ok(None);
    };
    if cell_of(&pools.main, merchant).await? != done.target {
        return Ok(None);
    }
    let _driving = hold(&pools.main, done.id).await?;
    drop_capture(pools.cell(&done.source)?, merchant).await?;
    Ok(Some(done))
}

/// Starts undoing the merchant's last move (one made with `keep_source`, not
/// cleaned up): a move back to its old cell that copies nothing, because the
/// old copy is there and the reverse stream holds every write made since the
/// cutover; it catches up and cuts over like any move. Drive it on.
pub async fn rollback(pools: &Pools, merchant: MerchantId) -> Result<Move, MoveError> {
    if running(&pools.main, merchant).await?.is_some() {
        return Err(MoveError::AlreadyMoving(merchant));
    }
    let Some(done) = newest_move(&pools.main, merchant, &[Phase::Moved, Phase::Cleaned]).await?
    else {
        return Err(MoveError::NothingToRollBack(merchant));
    };
    if done.phase != Phase::Moved || cell_of(&pools.main, merchant).await? != done.target {
        return Err(MoveError::NothingToRollBack(merchant));
    }
    let (source, target) = (pools.cell(&done.target)?, pools.cell(&done.source)?);
    check_schema(&done.target, source).await?;
    check_schema(&done.source, target).await?;
    let back = Move {
        id: Uuid::now_v7(),
        merchant,
        source: done.target.clone(),
        target: done.source.clone(),
        phase: Phase::CatchingUp,
        started_at: chrono::Utc::now(),
        rollback_of: Some(done.id),
    };
    // As a move's first step (gate on, old copy fenced as `arriving`,
    // capture both ways), before the record: a crash in between leaves
    // nothing a second `rollback` does not redo.
    let run = MoveRun::open(pools, back, &Quiet, Side::Source).await?;
    run.prepare().await?;
    let mut back = run.mv;
    if !record::record_rollback(&pools.main, &done, &mut back).await? {
        return Err(MoveError::NothingToRollBack(merchant));
    }
    Ok(back)
}
