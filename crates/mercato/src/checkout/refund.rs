//! Partial refunds: a refund names the units it returns, and returns what the
//! customer paid for them, discount share and tax included (`refund_share`), so
//! all refunds of an order together never exceed what was captured. The refund
//! that returns the last units also returns the shipping charge, and gives back
//! the order's uses of limited pricing rules.
//!
//! The refund is recorded (`pending`, its units claimed) before the provider is
//! called, outside any transaction, with a key derived from the refund; a retry
//! under the same `Idempotency-Key` finds the pending refund and resumes it, so
//! a crash between the two never refunds twice.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::model::{cap_to_left, refund_share, refundable_left, RefundRequest};
use super::refund_store::{self, RefundStatus, StoredRefund};
use super::saga::Checkout;
use super::store::OrderStatus;
use crate::inventory::Line;
use crate::payments::PaymentError;
use crate::tenancy::MerchantId;
use crate::validation::{FieldErrors, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("order not found")]
    NotFound,
    #[error("the order is {0}: only a confirmed order can be refunded")]
    NotRefundable(OrderStatus),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The provider refused (e.g. the payment was already refunded in full).
    #[error("the payment provider refused the refund: {0}")]
    Refused(PaymentError),
    /// The provider did not answer: the refund stays pending; retry with the same key.
    #[error("the payment provider failed: {0}")]
    Provider(PaymentError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Per SKU: units bought and what they cost in all.
type PaidLines = BTreeMap<String, (i64, i64)>;

/// What each order line and the shipping cost the customer: from the recorded
/// pricing (net, plus tax when prices exclude it), or unit × quantity for an
/// order priced before pricing was recorded.
fn paid(order: &refund_store::RefundableOrder) -> Result<(PaidLines, i64), sqlx::Error> {
    let mut lines: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let Some(recorded) = &order.pricing else {
        for (sku, quantity, unit) in &order.items {
            lines.insert(sku.clone(), (*quantity, quantity.saturating_mul(*unit)));
        }
        return Ok((lines, 0));
    };
    let recorded: crate::pricing::PricedOrder = serde_json::from_str(recorded)
        .map_err(|e| sqlx::Error::Decode(format!("order pricing: {e}").into()))?;
    let breakdown = &recorded.breakdown;
    let exclusive = !breakdown.tax.inclusive;
    for line in &breakdown.lines {
        let tax = if exclusive { line.tax.amount } else { 0 };
        let entry = lines.entry(line.sku.to_string()).or_insert((0, 0));
        entry.0 += i64::from(line.quantity);
        entry.1 += line.net.amount + tax;
    }
    let shipping_tax = if exclusive {
        breakdown.tax.shipping.amount
    } else {
        0
    };
    Ok((lines, breakdown.shipping.amount.amount + shipping_tax))
}

/// The refund of `lines` (not yet recorded): what was paid for those units,
/// discount share included; the shipping charge too when they are the last;
/// never more, all refunds together, than `left` of what the order was paid.
pub(super) fn lines_refund(
    order: &refund_store::RefundableOrder,
    order_id: Uuid,
    lines: &[Line],
    so_far: &BTreeMap<String, i64>,
    shipping_refunded: bool,
    left: i64,
) -> Result<StoredRefund, RefundError> {
    let (paid_lines, shipping_paid) = paid(order)?;
    let mut errors = FieldErrors::default();
    let mut refund_lines = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let sku = line.sku.as_str();
        let Some(&(bought, paid)) = paid_lines.get(sku) else {
            errors.push(format!("lines[{i}].sku"), "is not in this order");
            continue;
        };
        let refunded = so_far.get(sku).copied().unwrap_or(0);
        let units_left = bought - refunded;
        if line.quantity > units_left {
            errors.push(
                format!("lines[{i}].quantity"),
                format!("at most {units_left} units of {sku} are left to refund"),
            );
            continue;
        }
        let amount = refund_share(paid, bought, refunded, line.quantity);
        refund_lines.push((sku.to_owned(), line.quantity, amount));
    }
    errors.finish(Some(()))?;
    let everything_back = paid_lines.iter().all(|(sku, (bought, _))| {
        let now = refund_lines
            .iter()
            .find(|(s, _, _)| s == sku)
            .map_or(0, |(_, q, _)| *q);
        so_far.get(sku).copied().unwrap_or(0) + now == *bought
    });
    let includes_shipping = everything_back && !shipping_refunded;
    // Refunds of amounts may have paid some of these units back already.
    let mut shares: Vec<i64> = refund_lines.iter().map(|(_, _, a)| *a).collect();
    if includes_shipping {
        shares.push(shipping_paid);
    }
    let capped = cap_to_left(&shares, left);
    for (line, amount) in refund_lines.iter_mut().zip(&capped) {
        line.2 = *amount;
    }
    Ok(StoredRefund {
        id: Uuid::now_v7(),
        order_id,
        status: RefundStatus::Pending,
        amount: capped.iter().sum(),
        includes_shipping,
        reason: None,
        lines: refund_lines,
        currency: order.currency.clone(),
        created_at: chrono::Utc::now(),
    })
}

/// The refund of an amount (not yet recorded), within what is `left`.
fn amount_refund(
    order: &refund_store::RefundableOrder,
    order_id: Uuid,
    (amount, currency, reason): (i64, &str, &str),
    left: i64,
) -> Result<StoredRefund, RefundError> {
    let mut errors = FieldErrors::default();
    if currency != order.currency {
        errors.push(
            "amount.currency",
            format!("must be the order's currency, {}", order.currency),
        );
    } else if amount > left {
        errors.push(
            "amount.amount",
            format!("at most {left} is left to refund of what the order was paid"),
        );
    }
    errors.finish(Some(()))?;
    Ok(StoredRefund {
        id: Uuid::now_v7(),
        order_id,
        status: RefundStatus::Pending,
        amount,
        includes_shipping: false,
        reason: Some(reason.to_owned()),
        lines: Vec::new(),
        currency: order.currency.clone(),
        created_at: chrono::Utc::now(),
    })
}

impl Checkout {
    /// Refunds units or an amount of a confirmed order. With an idempotency
    /// key seen before for this order, answers (or resumes) that refund instead.
    pub async fn refund(
        &self,
        merchant: MerchantId,
        order_id: Uuid,
        request: &RefundRequest,
        idempotency_key: Option<&str>,
    ) -> Result<StoredRefund, RefundError> {
        let mut tx = self.begin_step(merchant).await?;
        let order = refund_store::lock_for_refund(&mut tx, order_id)
            .await?
            .ok_or(RefundError::NotFound)?;
        if let Some(key) = idempotency_key {
            if let Some(existing) =
                refund_store::find_refund(&mut tx, order_id, &order.currency, Some(key), None)
                    .await?
            {
                tx.commit().await?;
                return match existing.status {
                    RefundStatus::Pending => self.pay_back(merchant, &order, existing).await,
                    _ => Ok(existing),
                };
            }
        }
        if order.status != OrderStatus::Confirmed {
            return Err(RefundError::NotRefundable(order.status));
        }
        // Under the order's row lock: concurrent refunds of one order take
        // turns, so what is left is never refunded twice.
        let left = refundable_left(
            order.total,
            refund_store::refunded_total(&mut tx, order_id).await?,
        );
        let refund = match request {
            RefundRequest::Lines(lines) => {
                let (so_far, shipping_refunded) =
                    refund_store::refunded_so_far(&mut tx, order_id).await?;
                lines_refund(&order, order_id, lines, &so_far, shipping_refunded, left)?
            }
            RefundRequest::Amount {
                amount,
                currency,
                reason,
            } => amount_refund(&order, order_id, (*amount, currency, reason), left)?,
        };
        refund_store::insert_refund(&mut tx, &refund, idempotency_key).await?;
        tx.commit().await?;
        self.pay_back(merchant, &order, refund).await
    }

    /// Resumes a refund left pending (by a crash, or a provider that did not
    /// answer): the provider call is keyed by the refund, so it pays once.
    pub async fn resume_refund(
        &self,
        merchant: MerchantId,
        order_id: Uuid,
        refund_id: Uuid,
    ) -> Result<StoredRefund, RefundError> {
        let mut tx = self.begin_step(merchant).await?;
        let order = refund_store::lock_for_refund(&mut tx, order_id)
            .await?
            .ok_or(RefundError::NotFound)?;
        let refund =
            refund_store::find_refund(&mut tx, order_id, &order.currency, None, Some(refund_id))
                .await?
                .ok_or(RefundError::NotFound)?;
        tx.commit().await?;
        match refund.status {
            RefundStatus::Pending => self.pay_back(merchant, &order, refund).await,
            _ => Ok(refund),
        }
    }

    /// Has the provider return a pending refund's amount, then settles it.
    pub(super) async fn pay_back(
        &self,
        merchant: MerchantId,
        order: &refund_store::RefundableOrder,
        mut refund: StoredRefund,
    ) -> Result<StoredRefund, RefundError> {
        // The card is paid back first, up to what it paid; the rest of an order
        // paid partly with store credit goes back to the wallet. Earlier refunds
        // took the card's share first too, so the split is the same on a retry.
        let mut tx = self.begin_step(merchant).await?;
        let before = refund_store::refunded_before(&mut tx, refund.order_id, refund.id).await?;
        tx.commit().await?;
        let card_part = refund.amount.min((order.card_paid - before).max(0));
        let wallet_part = refund.amount - card_part;
        if card_part > 0 {
            let payment = order.payment_id.ok_or(RefundError::NotFound)?;
            let key = format!("refund:{}", refund.id);
            match self
                .payments
                .refund_amount(merchant, payment, card_part, &key)
                .await
            {
                Ok(()) => {}
                Err(refused @ PaymentError::InvalidState { .. }) => {
                    let mut tx = self.begin_step(merchant).await?;
                    refund_store::settle_refund(&mut tx, refund.id, RefundStatus::Failed).await?;
                    tx.commit().await?;
                    return Err(RefundError::Refused(refused));
                }
                Err(other) => return Err(RefundError::Provider(other)),
            }
        }
        let mut tx = self.begin_step(merchant).await?;
        if wallet_part > 0 {
            crate::wallet::credit(
                &mut tx,
                &order.customer_email,
                wallet_part,
                &order.currency,
                &format!("refund_{}_credit", refund.id.simple()),
            )
            .await?;
        }
        // Only the driver that settles it (a request, or the recovery worker
        // resuming it) reports it: once.
        let settled =
            refund_store::settle_refund(&mut tx, refund.id, RefundStatus::Succeeded).await?;
        if settled {
            crate::events::emit(
                &mut tx,
                crate::events::EventType::OrderRefunded,
                serde_json::json!({"order_id": refund.order_id, "refund_id": refund.id,
                                   "amount": refund.amount, "full": refund.includes_shipping,
                                   "reason": refund.reason}),
            )
            .await?;
            if let Some(refunded) = super::store::get_order(&mut tx, refund.order_id).await? {
                let notice = super::messages::Notice::Refunded {
                    refund: refund.id,
                    amount: refund.amount,
                };
                super::messages::tell(&mut tx, &refunded, notice).await?;
            }
            if refund.includes_shipping {
                // Refunded in full: the order's uses of limited rules are free again.
                crate::pricing::release_uses(&mut tx, refund.order_id).await?;
            }
        }
        tx.commit().await?;
        refund.status = RefundStatus::Succeeded;
        if settled {
            metrics::counter!("refunds_total").increment(1);
        }
        Ok(refund)
    }
}
