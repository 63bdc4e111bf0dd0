//! Step 3: the cutover. Verified and narrowed before the pause, so that the
//! pause (the merchant's gate closed) replays and rechecks only what
//! changed since; then the flip, and what it spent its time on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::capture::{drop_capture, mark_departed, unfence};
use super::record::{mark_moving, ms, own_connection, CutoverRecord};
use super::replay::Touched;
use super::run::MoveRun;
use super::{MoveError, GATE_CLASS};

/// How long after marking a merchant `moving` (at the cutover) every
/// instance is assumed to have seen it (NOTIFY arrives in milliseconds; this is for slow listeners).
const PROPAGATION: Duration = Duration::from_secs(2);

impl MoveRun<'_> {
    pub async fn cut_over(&mut self) -> Result<(), MoveError> {
        let m = self.merchant();
        // Verified before the pause, so the pause rechecks only what changed
        // since: the keys replayed from here on, and the keys that differed.
        let mut record = CutoverRecord::default();
        let mut touched = Touched::new();
        self.catch_up(&mut touched).await?;
        let started = Instant::now();
        let dirty = self.pre_verify().await?;
        record.pre_verify_ms = ms(started.elapsed());
        record.ranges_differing = dirty.len();
        self.narrow(&mut touched, dirty, &mut record).await?;
        // Only now do the merchant's requests pass the gate. Instances learn of
        // `moving` by NOTIFY at once; a slow one is given time (and one that
        // still missed it waits at the gate when the fenced source refuses it,
        // see `Cells::begin`). What they wrote meanwhile is replayed first.
        mark_moving(self.main(), m, true).await?;
        tokio::time::sleep(PROPAGATION).await;
        self.catch_up(&mut touched).await?;
        let mut gate = PgConnection::connect_with(&own_connection(self.main())).await?;
        sqlx::query("set lock_timeout = '15s'")
            .execute(&mut gate)
            .await?;
        let closing = Instant::now();
        let closed = sqlx::query("select pg_advisory_lock($1, hashtext($2::text))")
            .bind(GATE_CLASS)
            .bind(m.0)
            .execute(&mut gate)
            .await;
        if let Err(err) = closed {
            return Err(MoveError::Stalled(format!(
                "the merchant's in-flight requests did not finish in 15 s ({err}); the move stays resumable"
            )));
        }
        record.gate_wait_ms = ms(closing.elapsed());
        let paused = Instant::now();
        let outcome = self.cut_over_gated(&mut touched, paused, &mut record).await;
        if outcome.is_err() {
            // Back to serving from the source: nothing flipped.
            let _ = unfence(&self.source, m).await;
            let _ = self.save_cutover(&record).await;
        }
        let _ = gate.close().await;
        outcome?;
        // The flip committed the phase `moved` with it; the source's capture stops.
        drop_capture(&self.source, m).await?;
        Ok(())
    }

    /// The pause, the gate closed since `paused`: the source lets go of the
    /// merchant, the last writes are replayed and rechecked, and the
    /// directory flips.
    async fn cut_over_gated(
        &mut self,
        touched: &mut Touched,
        paused: Instant,
        record: &mut CutoverRecord,
    ) -> Result<(), MoveError> {
        let m = self.merchant();
        // The source stops serving the merchant: its workers no longer see its
        // rows, and a transaction begun there is refused.
        let since = mark_departed(&self.source, m).await?;
        self.wait_for_older_transactions(since).await?;
        record.wait_for_older_ms = ms(paused.elapsed());
        let replaying = Instant::now();
        loop {
            let applied = self.apply_changes(touched).await?;
            self.count_applied(applied).await?;
            record.changes_in_pause += applied;
            if applied == 0 {
                break;
            }
        }
        record.replay_in_pause_ms = ms(replaying.elapsed());
        let rechecking = Instant::now();
        record.keys_rechecked = touched.values().map(HashMap::len).sum();
        self.recheck(touched).await?;
        record.recheck_ms = ms(rechecking.elapsed());
        unfence(&self.target, m).await?;
        self.flip(paused, record).await?;
        Ok(())
    }

    /// Waits until every transaction of the source that began before
    /// `since` (a worker that read the merchant's rows before it was marked
    /// departed) has ended. Sessions waiting at the gate are not waited for.
    async fn wait_for_older_transactions(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), MoveError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Through the owner's function: to the mover role, the other
            // roles' sessions show no `xact_start`, and none would be older.
            let older: i64 = sqlx::query_scalar("select mercato_transactions_begun_before($1)")
                .bind(since)
                .fetch_one(&self.source)
                .await?;
            if older == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(MoveError::Stalled(format!(
                    "{older} transactions of the source older than the cutover did not end in 10 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
