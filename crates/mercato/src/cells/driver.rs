//! `serve` drives the moves started from the admin API: each instance looks
//! for them at start-up, when one is started, and every few seconds, and
//! carries each on (one driver at a time per move, by its advisory lock), so
//! a move outlives the instance that started it. A move that fails (a stall,
//! a mismatch, a database down) records why in `last_error` and is tried
//! again a minute later (each try of a cutover verifies every row, so not
//! sooner); `mercato tenants abort` stops one for good.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use super::mover::{self, MoveError, Pools, Quiet};

/// How often `serve` looks for moves to carry on besides being woken.
const LOOK_EVERY: Duration = Duration::from_secs(5);

pub struct MoveDriver {
    /// The main database and every cell, as the mover role (never the owner).
    pub pools: Pools,
    wake: Notify,
    /// Moves this process drives now.
    driving: Mutex<HashSet<Uuid>>,
}

impl MoveDriver {
    pub fn new(pools: Pools) -> Arc<MoveDriver> {
        Arc::new(MoveDriver {
            pools,
            wake: Notify::new(),
            driving: Mutex::new(HashSet::new()),
        })
    }

    /// A move was just started: look now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(err) = self.clone().look().await {
                tracing::warn!(error = %err, "cannot look for moves to drive");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    async fn look(self: Arc<Self>) -> Result<(), sqlx::Error> {
        // In progress, or moved and not yet cleaned up as it was asked to
        // be; one that failed, a minute after it did.
        let due: Vec<Uuid> = sqlx::query_scalar(
            "select id from tenant_moves where driven_by = 'api'
               and (phase in ('copying', 'catching_up', 'cutting_over')
                    or (phase = 'moved' and not keep_source))
               and (last_error is null or updated_at < now() - interval '1 minute')",
        )
        .fetch_all(&self.pools.main)
        .await?;
        for id in due {
            if !self
                .driving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id)
            {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.drive(id).await;
                me.driving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        }
        Ok(())
    }

    async fn drive(&self, id: Uuid) {
        let outcome = match mover::load(&self.pools.main, id).await {
            Ok(Some((mv, keep_source))) => mover::drive(&self.pools, mv, keep_source, &Quiet)
                .await
                .map(|_| ()),
            Ok(None) => Ok(()),
            Err(err) => Err(MoveError::Db(err)),
        };
        match outcome {
            Ok(()) | Err(MoveError::DrivenElsewhere) => {}
            Err(err) => {
                tracing::warn!(move_id = %id, error = %err, "a move stopped; it is tried again");
                let _ = sqlx::query(
                    "update tenant_moves set last_error = $2, updated_at = now() where id = $1",
                )
                .bind(id)
                .bind(err.to_string())
                .execute(&self.pools.main)
                .await;
            }
        }
    }
}
