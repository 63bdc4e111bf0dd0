//! Stock, reservations with a TTL, and the three ways to take stock.
//!
//! Owns tables `stock`, `reservations` and `reservation_items`. Asks the
//! catalog whether a SKU exists; checkout marks the reservation its order holds
//! (`hold_for_order`) and settles it (`settle_reservation`).

mod admission;
pub mod http;
mod model;
mod products;
mod store;
pub mod worker;

use std::sync::Arc;

use sqlx::PgPool;

pub use crate::tenancy::Strategy;
pub use admission::Admission;
pub use model::{
    allocate_in_order, parse_lines, parse_ttl, ItemBody, Line, ReservationStatus, StrategyParam,
};
pub use products::{archive_variant, delete_product, ProductDeletion, VariantArchival};
pub use store::{
    available_units, expire_due_reservations, get_reservation, get_stock, hold_for_order,
    lock_reserved_units, restock, set_on_hand, settle_reservation, InventoryError, Reservation,
    ReserveError, Settlement, StockLevel,
};

use crate::db::TenantTx;
use crate::tenancy::MerchantId;

/// Takes stock with the chosen strategy; every request under `reservation`
/// goes through the FIFO admission, single-SKU or a whole cart (all or nothing).
#[derive(Clone)]
pub struct Inventory {
    pool: PgPool,
    admission: Arc<Admission>,
}

impl Inventory {
    pub fn new(pool: PgPool) -> Self {
        Inventory {
            admission: Admission::new(pool.clone()),
            pool,
        }
    }

    pub async fn reserve(
        &self,
        merchant: MerchantId,
        strategy: Strategy,
        lines: &[Line],
        ttl_seconds: i64,
    ) -> Result<Reservation, ReserveError> {
        metrics::counter!("reservations_requested_total", "strategy" => strategy.as_str())
            .increment(1);
        self.reserve_unlocated(merchant, strategy, lines, ttl_seconds)
            .await
            .map_err(|e| e.locate(lines))
    }

    async fn reserve_unlocated(
        &self,
        merchant: MerchantId,
        strategy: Strategy,
        lines: &[Line],
        ttl_seconds: i64,
    ) -> Result<Reservation, ReserveError> {
        if strategy == Strategy::Reservation {
            return self.admission.reserve(merchant, lines, ttl_seconds).await;
        }
        let mut tx = TenantTx::begin(&self.pool, merchant).await?;
        let reservation = match strategy {
            Strategy::Pessimistic => store::reserve_locking(&mut tx, lines, ttl_seconds).await?,
            Strategy::Optimistic | Strategy::Reservation => {
                store::reserve_conditional(&mut tx, lines, ttl_seconds).await?
            }
        };
        tx.commit().await?;
        Ok(reservation)
    }
}
