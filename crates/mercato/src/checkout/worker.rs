//! Resumes checkouts left mid-way: by a crash, or by a payment call whose
//! outcome was unknown (`pm_card_timeout`).

use std::time::Duration;

use sqlx::PgPool;

use super::saga::{Checkout, Driver};
use super::store::stalled_orders;
use crate::tenancy::Rotation;

pub async fn recover_stalled_checkouts(
    checkout: Checkout,
    worker_pool: PgPool,
    every: Duration,
    grace: Duration,
) {
    let mut tick = tokio::time::interval(every);
    let mut rotation = Rotation::default();
    loop {
        tick.tick().await;
        let stalled = match worker_pool.acquire().await {
            Ok(mut conn) => {
                stalled_orders(&mut conn, grace.as_secs_f64(), 100, &mut rotation).await
            }
            Err(e) => Err(e),
        };
        let stalled = match stalled {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "listing stalled checkouts failed");
                continue;
            }
        };
        for (merchant, order) in stalled {
            match checkout.advance(merchant, order, Driver::Recovery).await {
                Ok(o) => {
                    metrics::counter!("checkouts_recovered_total", "status" => o.status.as_str())
                        .increment(1);
                    tracing::info!(%order, status = %o.status, "recovered checkout");
                }
                Err(err) => {
                    tracing::warn!(%order, error = %err, "recovering checkout failed; will retry")
                }
            }
        }
    }
}
