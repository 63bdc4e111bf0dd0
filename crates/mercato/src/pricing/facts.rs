//! What pricing reads of the orders it priced. The orders are checkout's
//! (checkout prices its carts through pricing, so pricing may not import
//! checkout): checkout implements this (`checkout::PricedOrderFacts`) and
//! `app.rs` hands it to the anomaly watcher and, through the state, to the
//! routes that check on demand.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use super::anomaly::OrderStats;
use crate::db::TenantTx;

/// Confirmed, priced orders of one currency over a period.
pub struct Revenue {
    pub currency: String,
    pub stats: OrderStats,
}

pub trait OrderFacts: Send + Sync + 'static {
    /// What the merchant's confirmed, priced orders placed in `[from, to)`
    /// add up to, per currency.
    fn revenue<'a>(
        &'a self,
        tx: &'a mut TenantTx,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Revenue>, sqlx::Error>>;

    /// Merchants with orders placed since `since`, across merchants (worker role).
    fn merchants_with_orders_since<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Uuid>, sqlx::Error>>;
}
