//! Returns: shipped units sent back. Under the order's row lock each line is
//! checked against what was shipped and not yet returned; the refund is the
//! refund of those lines (`lines_refund`: what was paid for them, discount
//! share included, within what is left of the order's total), recorded
//! pending with the return, the units put back on hand if asked, and
//! `order.returned` written, in one transaction; then the refund is paid as
//! any refund is (a crash in between: the recovery worker pays it, a retry
//! with the same Idempotency-Key answers the same return).

use uuid::Uuid;

use super::fulfillment_store;
use super::model::refundable_left;
use super::refund::{lines_refund, RefundError};
use super::refund_store::{self, RefundStatus, StoredRefund};
use super::return_store::{self, StoredReturn};
use super::saga::Checkout;
use super::store::OrderStatus;
use crate::events::EventType;
use crate::inventory::Line;
use crate::tenancy::MerchantId;
use crate::validation::{FieldErrors, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum ReturnError {
    #[error("order not found")]
    NotFound,
    #[error("the order is {0}: only a confirmed order takes returns")]
    NotReturnable(OrderStatus),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Refund(RefundError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<RefundError> for ReturnError {
    fn from(e: RefundError) -> Self {
        match e {
            RefundError::NotFound => ReturnError::NotFound,
            RefundError::Invalid(invalid) => ReturnError::Invalid(invalid),
            RefundError::Db(e) => ReturnError::Db(e),
            other => ReturnError::Refund(other),
        }
    }
}

impl Checkout {
    /// Takes back shipped `lines`, puts them back on hand if `restock`; the
    /// return and its refund.
    pub async fn take_return(
        &self,
        merchant: MerchantId,
        order_id: Uuid,
        lines: &[Line],
        restock: bool,
        idempotency_key: Option<&str>,
    ) -> Result<(StoredReturn, StoredRefund), ReturnError> {
        let mut tx = self.begin_step(merchant).await?;
        let order = refund_store::lock_for_refund(&mut tx, order_id)
            .await?
            .ok_or(ReturnError::NotFound)?;
        if let Some(key) = idempotency_key {
            if let Some(existing) = return_store::find_return(&mut tx, order_id, key).await? {
                let refund = refund_store::find_refund(
                    &mut tx,
                    order_id,
                    &order.currency,
                    None,
                    Some(existing.refund_id),
                )
                .await?
                .ok_or(ReturnError::NotFound)?;
                tx.commit().await?;
                let refund = match refund.status {
                    RefundStatus::Pending => self.pay_back(merchant, &order, refund).await?,
                    _ => refund,
                };
                return Ok((existing, refund));
            }
        }
        if order.status != OrderStatus::Confirmed {
            return Err(ReturnError::NotReturnable(order.status));
        }
        let shipped = fulfillment_store::fulfilled_so_far(&mut tx, order_id).await?;
        let returned = return_store::returned_so_far(&mut tx, order_id).await?;
        let mut errors = FieldErrors::default();
        for (i, line) in lines.iter().enumerate() {
            let sku = line.sku.as_str();
            let out =
                shipped.get(sku).copied().unwrap_or(0) - returned.get(sku).copied().unwrap_or(0);
            if !order.items.iter().any(|(s, _, _)| s == sku) {
                errors.push(format!("lines[{i}].sku"), "is not in this order");
            } else if line.quantity > out {
                errors.push(
                    format!("lines[{i}].quantity"),
                    format!("at most {out} units of {sku} were shipped and not returned"),
                );
            }
        }
        errors.finish(Some(()))?;
        let left = refundable_left(
            order.total,
            refund_store::refunded_total(&mut tx, order_id).await?,
        );
        let (so_far, shipping_refunded) = refund_store::refunded_so_far(&mut tx, order_id).await?;
        let mut refund = lines_refund(&order, order_id, lines, &so_far, shipping_refunded, left)?;
        refund.reason = Some("return".to_owned());
        refund_store::insert_refund(&mut tx, &refund, None).await?;
        let ret = StoredReturn {
            id: Uuid::now_v7(),
            order_id,
            refund_id: refund.id,
            restock,
            lines: lines
                .iter()
                .map(|l| (l.sku.as_str().to_owned(), l.quantity))
                .collect(),
            created_at: chrono::Utc::now(),
        };
        return_store::insert_return(&mut tx, &ret, idempotency_key).await?;
        if restock {
            crate::inventory::restock(&mut tx, &ret.lines).await?;
        }
        let returned_lines: Vec<serde_json::Value> = ret
            .lines
            .iter()
            .map(|(sku, quantity)| serde_json::json!({"sku": sku, "quantity": quantity}))
            .collect();
        crate::events::emit(
            &mut tx,
            EventType::OrderReturned,
            serde_json::json!({"order_id": order_id, "return_id": ret.id, "refund_id": refund.id,
                               "amount": refund.amount, "lines": returned_lines,
                               "restock": restock}),
        )
        .await?;
        tx.commit().await?;
        let refund = self.pay_back(merchant, &order, refund).await?;
        Ok((ret, refund))
    }
}
