//! Releases reservations whose TTL ran out, and folds confirmed sales into
//! the stock rows that no admission batch folded meanwhile.

use std::time::Duration;

use sqlx::PgPool;

use super::store::{expire_due_reservations, fold_pending_sales};
use crate::tenancy::Rotation;

const BATCH: i64 = 500;

/// Runs until the process ends: each tick expires due reservations in
/// batches, merchants taking turns, until none is due.
pub async fn release_expired_reservations(pool: PgPool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut rotation = Rotation::default();
    loop {
        tick.tick().await;
        loop {
            match expire_batch(&pool, &mut rotation).await {
                Ok((expired, due)) => {
                    if expired > 0 {
                        metrics::counter!("reservations_expired_total").increment(expired);
                    }
                    // A batch that expired nothing (rows settled meanwhile)
                    // must not spin: the next tick looks again.
                    if expired == 0 || due == 0 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "expiring reservations failed; retrying next tick");
                    break;
                }
            }
        }
        match fold_pending_sales(&pool, BATCH).await {
            Ok(units) if units > 0 => {
                metrics::counter!("stock_sales_folded_total").increment(units as u64)
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "folding sales into stock failed; retrying next tick")
            }
        }
    }
}

async fn expire_batch(pool: &PgPool, rotation: &mut Rotation) -> Result<(u64, usize), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let batch = expire_due_reservations(&mut tx, BATCH, rotation).await?;
    tx.commit().await?;
    Ok(batch)
}
