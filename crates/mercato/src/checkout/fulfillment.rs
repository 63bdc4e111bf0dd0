//! Fulfilments: shipping some of a confirmed order's units through the
//! merchant's `FulfillmentProvider`. Under the order's row lock (so
//! concurrent fulfilments, refunds and a cancel take turns) each line is
//! checked against what is left to ship (`fulfillable`: bought, less shipped,
//! less refunded instead of shipped), the provider is asked, and the
//! shipment, the order's new `fulfillment_status` and `order.fulfilled` are
//! written in the same transaction. The provider is called inside that
//! transaction: a provider is expected to answer in moments, and its request
//! carries the fulfilment's id and the Idempotency-Key, with which one that
//! ships for real deduplicates a retry after a crash.

use uuid::Uuid;

use super::fulfillment_provider::{ShipmentError, ShipmentRequest, MANUAL};
use super::fulfillment_store::{self, StoredFulfillment};
use super::model::{fulfillable, fulfillment_status};
use super::refund_store;
use super::saga::Checkout;
use super::store::{self, FulfillmentStatus, OrderStatus};
use crate::events::EventType;
use crate::inventory::Line;
use crate::tenancy::MerchantId;
use crate::validation::{FieldErrors, Invalid};

/// A shipment asked for, parsed.
#[derive(Debug, Clone)]
pub struct NewFulfillment {
    pub lines: Vec<Line>,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FulfillError {
    #[error("order not found")]
    NotFound,
    #[error("the order is {0}: only a confirmed order is fulfilled")]
    NotFulfillable(OrderStatus),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The merchant's provider is not one this service knows (any more).
    #[error("fulfilment provider {0:?} is not available")]
    UnknownProvider(String),
    #[error("the fulfilment provider refused: {0}")]
    Refused(String),
    #[error("the fulfilment provider did not answer: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Checkout {
    /// Ships `new.lines` of a confirmed order; the shipment and where the
    /// order's shipping stands after it. An Idempotency-Key seen before for
    /// this order answers that shipment.
    pub async fn fulfill(
        &self,
        merchant: MerchantId,
        order_id: Uuid,
        new: &NewFulfillment,
        idempotency_key: Option<&str>,
    ) -> Result<(StoredFulfillment, FulfillmentStatus), FulfillError> {
        let mut tx = self.begin_step(merchant).await?;
        let order = refund_store::lock_for_refund(&mut tx, order_id)
            .await?
            .ok_or(FulfillError::NotFound)?;
        if let Some(key) = idempotency_key {
            let existing = fulfillment_store::fulfillments_of(&mut tx, order_id, Some(key)).await?;
            if let Some(existing) = existing.into_iter().next() {
                tx.commit().await?;
                return Ok((existing, order.fulfillment_status));
            }
        }
        if order.status != OrderStatus::Confirmed {
            return Err(FulfillError::NotFulfillable(order.status));
        }
        let (refunded, _) = refund_store::refunded_so_far(&mut tx, order_id).await?;
        let mut shipped = fulfillment_store::fulfilled_so_far(&mut tx, order_id).await?;
        let returned_units = super::return_store::returned_so_far(&mut tx, order_id).await?;
        let returned = |sku: &str| returned_units.get(sku).copied().unwrap_or(0);
        let mut errors = FieldErrors::default();
        let mut lines = Vec::with_capacity(new.lines.len());
        for (i, line) in new.lines.iter().enumerate() {
            let sku = line.sku.as_str();
            let Some((_, bought, _)) = order.items.iter().find(|(s, _, _)| s == sku) else {
                errors.push(format!("lines[{i}].sku"), "is not in this order");
                continue;
            };
            let left = fulfillable(
                *bought,
                refunded.get(sku).copied().unwrap_or(0),
                shipped.get(sku).copied().unwrap_or(0),
                returned(sku),
            );
            if line.quantity > left {
                errors.push(
                    format!("lines[{i}].quantity"),
                    format!("at most {left} units of {sku} are left to fulfil"),
                );
                continue;
            }
            lines.push((sku.to_owned(), line.quantity));
        }
        errors.finish(Some(()))?;
        let name = fulfillment_store::chosen_provider(&mut tx)
            .await?
            .unwrap_or_else(|| MANUAL.to_owned());
        let provider = self
            .fulfillment
            .get(&name)
            .ok_or_else(|| FulfillError::UnknownProvider(name.clone()))?;
        let id = Uuid::now_v7();
        let shipment = provider
            .ship(ShipmentRequest {
                merchant,
                order_id,
                fulfillment_id: id,
                idempotency_key,
                lines: &lines,
                carrier: new.carrier.as_deref(),
                tracking_number: new.tracking_number.as_deref(),
            })
            .await
            .map_err(|e| match e {
                ShipmentError::Refused(why) => FulfillError::Refused(why),
                ShipmentError::Unavailable(why) => FulfillError::Unavailable(why),
            })?;
        let fulfillment = StoredFulfillment {
            id,
            order_id,
            provider: name,
            carrier: shipment.carrier,
            tracking_number: shipment.tracking_number,
            lines,
            created_at: chrono::Utc::now(),
        };
        fulfillment_store::insert_fulfillment(&mut tx, &fulfillment, idempotency_key).await?;
        for (sku, quantity) in &fulfillment.lines {
            *shipped.entry(sku.clone()).or_insert(0) += quantity;
        }
        let standing: Vec<(i64, i64)> = order
            .items
            .iter()
            .map(|(sku, bought, _)| {
                let shipped = shipped.get(sku).copied().unwrap_or(0);
                let refunded = refunded.get(sku).copied().unwrap_or(0);
                (
                    fulfillable(*bought, refunded, shipped, returned(sku)),
                    shipped,
                )
            })
            .collect();
        let status = fulfillment_status(&standing);
        store::set_fulfillment_status(&mut tx, order_id, status).await?;
        let lines: Vec<serde_json::Value> = fulfillment
            .lines
            .iter()
            .map(|(sku, quantity)| serde_json::json!({"sku": sku, "quantity": quantity}))
            .collect();
        crate::events::emit(
            &mut tx,
            EventType::OrderFulfilled,
            serde_json::json!({"order_id": order_id, "fulfillment_id": fulfillment.id,
                               "lines": lines, "carrier": fulfillment.carrier,
                               "tracking_number": fulfillment.tracking_number,
                               "fulfillment_status": status.as_str()}),
        )
        .await?;
        if let Some(shipped) = super::store::get_order(&mut tx, order_id).await? {
            let notice = super::messages::Notice::Shipped {
                fulfillment: fulfillment.id,
                lines: &fulfillment.lines,
                carrier: fulfillment.carrier.as_deref(),
                tracking_number: fulfillment.tracking_number.as_deref(),
            };
            super::messages::tell(&mut tx, &shipped, notice).await?;
        }
        tx.commit().await?;
        Ok((fulfillment, status))
    }

    /// The fulfilments of an order, oldest first; `None` if there is no such order.
    pub async fn fulfillments(
        &self,
        merchant: MerchantId,
        order_id: Uuid,
    ) -> Result<Option<Vec<StoredFulfillment>>, sqlx::Error> {
        let mut tx = self.begin_step(merchant).await?;
        if store::get_order(&mut tx, order_id).await?.is_none() {
            return Ok(None);
        }
        let all = fulfillment_store::fulfillments_of(&mut tx, order_id, None).await?;
        tx.commit().await?;
        Ok(Some(all))
    }

    /// Makes `provider` the one that ships the merchant's orders; `false` if
    /// no provider of that name is plugged in.
    pub async fn choose_fulfillment_provider(
        &self,
        merchant: MerchantId,
        provider: &str,
    ) -> Result<bool, sqlx::Error> {
        if self.fulfillment.get(provider).is_none() {
            return Ok(false);
        }
        let mut tx = self.begin_step(merchant).await?;
        fulfillment_store::choose_provider(&mut tx, provider).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The provider that ships the merchant's orders.
    pub async fn fulfillment_provider(&self, merchant: MerchantId) -> Result<String, sqlx::Error> {
        let mut tx = self.begin_step(merchant).await?;
        let chosen = fulfillment_store::chosen_provider(&mut tx).await?;
        tx.commit().await?;
        Ok(chosen.unwrap_or_else(|| MANUAL.to_owned()))
    }
}
