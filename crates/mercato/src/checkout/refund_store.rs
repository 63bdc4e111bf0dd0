//! Refunds as stored: an order locked for its refund, what was refunded so
//! far, each refund's row and outcome. Owns `order_refunds` and
//! `order_refund_lines` (checkout's tables).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use super::refund_summary::RefundStatus;
use super::store::*;
use crate::db::TenantTx;

/// An order as a refund needs it, its row locked until the transaction ends (so
/// concurrent refunds of one order take turns).
pub struct RefundableOrder {
    pub status: OrderStatus,
    pub fulfillment_status: FulfillmentStatus,
    pub currency: String,
    pub customer_email: String,
    /// What the order was paid in all (card and store credit).
    pub total: i64,
    /// What the card paid: the total less the store credit spent on the order.
    pub card_paid: i64,
    pub payment_id: Option<Uuid>,
    /// The `PricedOrder` JSON, when the order was priced with rules.
    pub pricing: Option<String>,
    /// (sku, quantity, unit amount)
    pub items: Vec<(String, i64, i64)>,
}

pub async fn lock_for_refund(
    tx: &mut TenantTx,
    id: Uuid,
) -> Result<Option<RefundableOrder>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let Some(order) = sqlx::query!(
        r#"select status as "status: OrderStatus",
                  fulfillment_status as "fulfillment_status: FulfillmentStatus",
                  currency, customer_email, total_amount,
                  total_amount - wallet_amount as "card_paid!", payment_id, pricing::text as pricing
           from orders where merchant_id = $1 and id = $2 for update"#,
        merchant,
        id,
    )
    .fetch_optional(tx.conn())
    .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query!(
        "select sku, quantity, unit_amount from order_items where merchant_id = $1 and order_id = $2",
        merchant,
        id,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(Some(RefundableOrder {
        status: order.status,
        fulfillment_status: order.fulfillment_status,
        currency: order.currency,
        customer_email: order.customer_email,
        total: order.total_amount,
        card_paid: order.card_paid,
        payment_id: order.payment_id,
        pricing: order.pricing,
        items: items
            .into_iter()
            .map(|i| (i.sku, i.quantity, i.unit_amount))
            .collect(),
    }))
}

/// What the order's refunds before `refund` (in time order, failed ones aside) returned.
pub async fn refunded_before(
    tx: &mut TenantTx,
    order: Uuid,
    refund: Uuid,
) -> Result<i64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        r#"select coalesce(sum(amount), 0)::bigint as "amount!" from order_refunds
           where merchant_id = $1 and order_id = $2 and id < $3 and status <> 'failed'"#,
        merchant,
        order,
        refund,
    )
    .fetch_one(tx.conn())
    .await
}

/// Units refunded (or being refunded) per SKU, and whether shipping was.
pub async fn refunded_so_far(
    tx: &mut TenantTx,
    order: Uuid,
) -> Result<(BTreeMap<String, i64>, bool), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let units = sqlx::query!(
        r#"select l.sku, sum(l.quantity)::bigint as "units!"
           from order_refund_lines l
           join order_refunds r on r.merchant_id = l.merchant_id and r.id = l.refund_id
           where r.merchant_id = $1 and r.order_id = $2 and r.status <> 'failed'
           group by l.sku"#,
        merchant,
        order,
    )
    .fetch_all(tx.conn())
    .await?;
    let shipping = sqlx::query_scalar!(
        r#"select coalesce(bool_or(includes_shipping), false) as "shipping!" from order_refunds
           where merchant_id = $1 and order_id = $2 and status <> 'failed'"#,
        merchant,
        order,
    )
    .fetch_one(tx.conn())
    .await?;
    Ok((
        units.into_iter().map(|u| (u.sku, u.units)).collect(),
        shipping,
    ))
}

/// A refund as stored.
#[derive(Debug, Clone)]
pub struct StoredRefund {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: RefundStatus,
    pub amount: i64,
    pub includes_shipping: bool,
    /// Why, for a refund of an amount.
    pub reason: Option<String>,
    /// (sku, quantity, amount)
    pub lines: Vec<(String, i64, i64)>,
    /// The order's currency (amounts are its minor units).
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_refund(
    tx: &mut TenantTx,
    refund: &StoredRefund,
    key: Option<&str>,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into order_refunds (merchant_id, id, order_id, idempotency_key, status, amount,
                                    includes_shipping, reason)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        merchant,
        refund.id,
        refund.order_id,
        key,
        refund.status.as_str(),
        refund.amount,
        refund.includes_shipping,
        refund.reason,
    )
    .execute(tx.conn())
    .await?;
    let skus: Vec<&str> = refund.lines.iter().map(|(s, _, _)| s.as_str()).collect();
    let quantities: Vec<i64> = refund.lines.iter().map(|(_, q, _)| *q).collect();
    let amounts: Vec<i64> = refund.lines.iter().map(|(_, _, a)| *a).collect();
    sqlx::query!(
        "insert into order_refund_lines (merchant_id, refund_id, sku, quantity, amount)
         select $1, $2, x.sku, x.quantity, x.amount
         from unnest($3::text[], $4::bigint[], $5::bigint[]) as x(sku, quantity, amount)",
        merchant,
        refund.id,
        &skus as &[&str],
        &quantities,
        &amounts,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The refund an order (in `currency`) recorded under an idempotency key, or with this id.
pub async fn find_refund(
    tx: &mut TenantTx,
    order: Uuid,
    currency: &str,
    key: Option<&str>,
    id: Option<Uuid>,
) -> Result<Option<StoredRefund>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let Some(head) = sqlx::query!(
        r#"select id, order_id, status as "status: RefundStatus", amount, includes_shipping, reason,
                  created_at
           from order_refunds
           where merchant_id = $1 and order_id = $2
             and (idempotency_key = $3 or id = $4)"#,
        merchant,
        order,
        key,
        id,
    )
    .fetch_optional(tx.conn())
    .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query!(
        "select sku, quantity, amount from order_refund_lines
         where merchant_id = $1 and refund_id = $2 order by sku",
        merchant,
        head.id,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(Some(StoredRefund {
        id: head.id,
        order_id: head.order_id,
        status: head.status,
        amount: head.amount,
        includes_shipping: head.includes_shipping,
        reason: head.reason,
        lines: lines
            .into_iter()
            .map(|l| (l.sku, l.quantity, l.amount))
            .collect(),
        currency: currency.to_owned(),
        created_at: head.created_at,
    }))
}

/// Moves a pending refund to its outcome; `false` if it was not pending.
pub async fn settle_refund(
    tx: &mut TenantTx,
    id: Uuid,
    to: RefundStatus,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query!(
        "update order_refunds set status = $3 where merchant_id = $1 and id = $2 and status = 'pending'",
        tx.merchant_id().0,
        id,
        to.as_str(),
    )
    .execute(tx.conn())
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// What the order's refunds returned or are returning (failed ones aside).
pub async fn refunded_total(tx: &mut TenantTx, order: Uuid) -> Result<i64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        r#"select coalesce(sum(amount), 0)::bigint as "amount!" from order_refunds
           where merchant_id = $1 and order_id = $2 and status <> 'failed'"#,
        merchant,
        order,
    )
    .fetch_one(tx.conn())
    .await
}

/// Every refund of an order (in `currency`), oldest first, with its lines.
pub async fn refunds_of(
    tx: &mut TenantTx,
    order: Uuid,
    currency: &str,
) -> Result<Vec<StoredRefund>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let heads = sqlx::query!(
        r#"select id, status as "status: RefundStatus", amount, includes_shipping, reason, created_at
           from order_refunds where merchant_id = $1 and order_id = $2 order by id"#,
        merchant,
        order,
    )
    .fetch_all(tx.conn())
    .await?;
    let ids: Vec<Uuid> = heads.iter().map(|h| h.id).collect();
    let lines = sqlx::query!(
        "select refund_id, sku, quantity, amount from order_refund_lines
         where merchant_id = $1 and refund_id = any($2) order by sku",
        merchant,
        &ids,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(heads
        .into_iter()
        .map(|h| StoredRefund {
            lines: lines
                .iter()
                .filter(|l| l.refund_id == h.id)
                .map(|l| (l.sku.clone(), l.quantity, l.amount))
                .collect(),
            id: h.id,
            order_id: order,
            status: h.status,
            amount: h.amount,
            includes_shipping: h.includes_shipping,
            reason: h.reason,
            currency: currency.to_owned(),
            created_at: h.created_at,
        })
        .collect())
}

/// Pending refunds recorded more than `grace_seconds` ago, across merchants
/// (worker role): left by a crash or a provider that did not answer.
pub async fn stalled_refunds(
    conn: &mut sqlx::PgConnection,
    grace_seconds: f64,
    limit: i64,
) -> Result<Vec<(crate::tenancy::MerchantId, Uuid, Uuid)>, sqlx::Error> {
    let rows = sqlx::query!(
        "select merchant_id, order_id, id from order_refunds
         where status = 'pending' and created_at < now() - make_interval(secs => $1)
         order by created_at limit $2",
        grace_seconds,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (crate::tenancy::MerchantId(r.merchant_id), r.order_id, r.id))
        .collect())
}
