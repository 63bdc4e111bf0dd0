//! Releases reservations whose TTL ran out, and folds confirmed sales into
//! the stock rows that no admission batch folded meanwhile.

use std::time::Duration;

use sqlx::PgPool;

use super::store::{expire_due_reservations, fold_pending_sales};

const BATCH: i64 = 500;

/// Runs until the process ends: each tick expires due reservations in batches.
pub async fn release_expired_reservations(pool: PgPool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        loop {
            match expire_batch(&pool).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(n) => {
                    if n > 0 {
                        metrics::counter!("reservations_expired_total").increment(n);
                    }
                    break;
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

async fn expire_batch(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = expire_due_reservations(&mut tx, BATCH).await?;
    tx.commit().await?;
    Ok(n)
}
