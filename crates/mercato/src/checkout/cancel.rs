//! Cancelling a confirmed order nothing of which has shipped: in one
//! transaction the order becomes `cancelled`, a refund of everything left of
//! what it was paid is recorded (pending), its units go back on hand, its uses
//! of limited pricing rules are freed and `order.cancelled` is written to the
//! outbox; then the refund is paid as any refund is (`pay_back`: the card up
//! to what it paid, the rest back to the wallet it came from), keyed by the
//! refund, so a crash between the two pays it once (a retry of the cancel, or
//! the recovery worker, resumes it). Cancelling a cancelled order answers it
//! again.

use uuid::Uuid;

use super::model::refundable_left;
use super::refund::{lines_refund, RefundError};
use super::refund_store::{self, RefundStatus};
use super::saga::Checkout;
use super::store::{self, FulfillmentStatus, Order, OrderStatus};
use crate::catalog::Sku;
use crate::events::EventType;
use crate::inventory::Line;
use crate::tenancy::MerchantId;

/// The idempotency key of an order's cancellation refund: not one a request
/// can send (the header takes visible ASCII only), so no refund asked for
/// takes it, and an order has one cancellation refund at most.
const CANCEL_REFUND_KEY: &str = "·cancel";

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("order not found")]
    NotFound,
    #[error("the order is {0}: only a confirmed order can be cancelled")]
    NotCancellable(OrderStatus),
    #[error("the order is {0}: units have shipped; refund or return them instead")]
    Fulfilled(FulfillmentStatus),
    #[error(transparent)]
    Refund(RefundError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<RefundError> for CancelError {
    fn from(e: RefundError) -> Self {
        match e {
            RefundError::NotFound => CancelError::NotFound,
            RefundError::Db(e) => CancelError::Db(e),
            other => CancelError::Refund(other),
        }
    }
}

impl Checkout {
    /// Cancels a confirmed, unfulfilled order for `reason`; the order as it
    /// stands after.
    pub async fn cancel(
        &self,
        merchant: MerchantId,
        order_id: Uuid,
        reason: &str,
    ) -> Result<Order, CancelError> {
        let mut tx = self.begin_step(merchant).await?;
        let order = refund_store::lock_for_refund(&mut tx, order_id)
            .await?
            .ok_or(CancelError::NotFound)?;
        match order.status {
            OrderStatus::Confirmed => {}
            OrderStatus::Cancelled => {
                // Cancelled before: finish paying its refund if a crash or the
                // provider left it pending, and answer the order again.
                let refund = refund_store::find_refund(
                    &mut tx,
                    order_id,
                    &order.currency,
                    Some(CANCEL_REFUND_KEY),
                    None,
                )
                .await?;
                tx.commit().await?;
                if let Some(refund) = refund.filter(|r| r.status == RefundStatus::Pending) {
                    self.pay_back(merchant, &order, refund).await?;
                }
                return self.order(merchant, order_id).await;
            }
            other => return Err(CancelError::NotCancellable(other)),
        }
        if order.fulfillment_status != FulfillmentStatus::Unfulfilled {
            return Err(CancelError::Fulfilled(order.fulfillment_status));
        }
        let left = refundable_left(
            order.total,
            refund_store::refunded_total(&mut tx, order_id).await?,
        );
        let refund = if left > 0 {
            let (so_far, shipping_refunded) =
                refund_store::refunded_so_far(&mut tx, order_id).await?;
            let mut units = Vec::new();
            for (sku, bought, _) in &order.items {
                let units_left = bought - so_far.get(sku).copied().unwrap_or(0);
                if units_left > 0 {
                    let sku = Sku::parse(sku)
                        .map_err(|e| sqlx::Error::Decode(format!("order sku: {e}").into()))?;
                    units.push(Line {
                        sku,
                        quantity: units_left,
                    });
                }
            }
            let mut refund =
                lines_refund(&order, order_id, &units, &so_far, shipping_refunded, left)?;
            // Everything left goes back, whatever its lines' shares add up to.
            refund.amount = left;
            refund.includes_shipping = !shipping_refunded;
            refund.reason = Some(format!("cancelled: {reason}"));
            refund_store::insert_refund(&mut tx, &refund, Some(CANCEL_REFUND_KEY)).await?;
            Some(refund)
        } else {
            None
        };
        if !store::mark_cancelled(&mut tx, order_id, reason).await? {
            // The row is locked and was checked above: this cannot move under us.
            return Err(CancelError::NotCancellable(order.status));
        }
        let units: Vec<(String, i64)> = order
            .items
            .iter()
            .map(|(sku, quantity, _)| (sku.clone(), *quantity))
            .collect();
        crate::inventory::restock(&mut tx, &units).await?;
        crate::pricing::release_uses(&mut tx, order_id).await?;
        crate::events::emit(
            &mut tx,
            EventType::OrderCancelled,
            serde_json::json!({"order_id": order_id, "reason": reason,
                               "refund_id": refund.as_ref().map(|r| r.id), "amount": left}),
        )
        .await?;
        if let Some(cancelled) = super::store::get_order(&mut tx, order_id).await? {
            super::messages::tell(&mut tx, &cancelled, super::messages::Notice::Cancelled).await?;
        }
        tx.commit().await?;
        metrics::counter!("orders_cancelled_total").increment(1);
        if let Some(refund) = refund {
            self.pay_back(merchant, &order, refund).await?;
        }
        self.order(merchant, order_id).await
    }

    async fn order(&self, merchant: MerchantId, id: Uuid) -> Result<Order, CancelError> {
        let mut tx = self.begin_step(merchant).await?;
        let order = store::get_order(&mut tx, id).await?;
        tx.commit().await?;
        order.ok_or(CancelError::NotFound)
    }
}
