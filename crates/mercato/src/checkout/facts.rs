//! The read model of orders that pricing consumes (its anomaly check), as
//! pricing's port `pricing::OrderFacts` asks for it.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use super::store;
use crate::db::TenantTx;
use crate::pricing::{OrderFacts, Revenue};

/// Checkout's orders, read for pricing.
pub struct PricedOrderFacts;

impl OrderFacts for PricedOrderFacts {
    fn revenue<'a>(
        &'a self,
        tx: &'a mut TenantTx,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Revenue>, sqlx::Error>> {
        store::revenue(tx, from, to).boxed()
    }

    fn merchants_with_orders_since<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<Uuid>, sqlx::Error>> {
        store::merchants_with_orders_since(conn, since).boxed()
    }
}
