//! Resumes checkouts left mid-way: by a crash, or by a payment call whose
//! outcome was unknown (`pm_card_timeout`).

use std::time::Duration;

use sqlx::PgPool;

use super::refund_store::stalled_refunds;
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
        resume_stalled_refunds(&checkout, &worker_pool, grace).await;
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

/// Refunds left pending (recorded, the provider not known to have paid) for
/// longer than `grace`: paid now, once (the provider's call is keyed by the refund).
async fn resume_stalled_refunds(checkout: &Checkout, worker_pool: &PgPool, grace: Duration) {
    let stalled = match worker_pool.acquire().await {
        Ok(mut conn) => stalled_refunds(&mut conn, grace.as_secs_f64(), 100).await,
        Err(e) => Err(e),
    };
    let stalled = match stalled {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "listing stalled refunds failed");
            return;
        }
    };
    for (merchant, order, refund) in stalled {
        match checkout.resume_refund(merchant, order, refund).await {
            Ok(r) => tracing::info!(%order, %refund, status = %r.status, "resumed refund"),
            Err(err) => {
                tracing::warn!(%order, %refund, error = %err, "resuming refund failed; will retry")
            }
        }
    }
}
