//! Orders: the persisted state of each checkout saga.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::refund_summary::{refund_summaries, RefundStatus, RefundSummary};
use crate::catalog::Money;
use crate::db::{text_enum, violates, TenantTx};
use crate::tenancy::{in_turns, MerchantId, Rotation};

text_enum! {
    /// Where a pending checkout stands; each step is persisted before the next begins.
    pub enum Step {
        /// Units reserved; payment not yet known to be authorized.
        Reserved = "reserved",
        Authorized = "authorized",
        Captured = "captured",
        /// Reservation consumed, order confirmed.
        Confirmed = "confirmed",
        /// Rolled back: reservation released, payment voided or refunded.
        Compensated = "compensated",
    }
}

text_enum! {
    /// What an order's buyer sees of its saga.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum OrderStatus {
        /// The saga is running, or waits on a payment outcome being reconciled.
        Pending = "pending",
        Confirmed = "confirmed",
        /// Compensated: nothing stays reserved or charged.
        Failed = "failed",
        /// Cancelled by the merchant once confirmed: refunded in full, its units back in stock.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// How much of an order has shipped.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum FulfillmentStatus {
        Unfulfilled = "unfulfilled",
        PartiallyFulfilled = "partially_fulfilled",
        Fulfilled = "fulfilled",
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: Money,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Customer {
    /// The customer record (`GET /v1/customers/{id}`); `null` on an order
    /// placed before customers existed that the backfill has not reached.
    pub id: Option<Uuid>,
    pub email: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub status: OrderStatus,
    pub fulfillment_status: FulfillmentStatus,
    pub total: Money,
    pub items: Vec<OrderItem>,
    pub customer: Customer,
    pub payment_method: String,
    pub promo_code: Option<String>,
    pub reservation_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub failure_reason: Option<String>,
    /// The part of the total paid from the customer's store credit; the card pays the rest.
    pub store_credit: Money,
    /// What its refunds returned or are returning (pending and succeeded ones).
    pub refunded: Money,
    /// Its refunds, oldest first (`GET /v1/orders/{id}/refunds` has their lines).
    pub refunds: Vec<RefundSummary>,
    /// How the total was computed (absent on orders placed before pricing existed).
    pub pricing: Option<OrderPricing>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub step: Step,
}

/// The price an order was charged, and how to reproduce it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderPricing {
    /// The calculator that priced it (`v1`, `v2`, …).
    pub version: String,
    /// The merchant's rule-set revision it was priced with.
    pub ruleset_revision: i64,
    /// Every line, discount, shipping and tax amount, and why each rule did or did not apply.
    #[schema(value_type = Object)]
    pub breakdown: serde_json::Value,
}

pub(super) struct OrderRow {
    id: Uuid,
    status: OrderStatus,
    fulfillment_status: FulfillmentStatus,
    saga_step: Step,
    customer_email: String,
    customer_id: Option<Uuid>,
    payment_method: String,
    promo_code: Option<String>,
    reservation_id: Uuid,
    payment_id: Option<Uuid>,
    total_amount: i64,
    currency: String,
    failure_reason: Option<String>,
    wallet_amount: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    calculator_version: Option<String>,
    ruleset_revision: Option<i64>,
    pricing: Option<String>,
}

pub struct NewOrder<'a> {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub idempotency_key: Option<&'a str>,
    pub email: &'a str,
    pub payment_method: &'a str,
    pub promo_code: Option<&'a str>,
    pub reservation_id: Uuid,
    pub currency: &'a str,
    /// (sku, quantity, unit amount)
    pub items: Vec<(String, i64, i64)>,
    /// What the customer is charged: the pricing breakdown's total.
    pub total: i64,
    /// The part of `total` taken from the customer's store credit.
    pub wallet_amount: i64,
    pub calculator_version: &'a str,
    pub ruleset_revision: i64,
    /// The `PricedOrder` as JSON.
    pub pricing: String,
}

/// Inserts a pending order at step `reserved`; `false` if another order already
/// holds the idempotency key.
pub async fn insert_order(tx: &mut TenantTx, order: &NewOrder<'_>) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let inserted = sqlx::query!(
        "insert into orders (merchant_id, id, idempotency_key, status, saga_step, customer_email, payment_method,
                             promo_code, reservation_id, total_amount, currency, calculator_version,
                             ruleset_revision, pricing, wallet_amount, customer_id)
         values ($1, $2, $3, 'pending', 'reserved', $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13, $14)",
        merchant,
        order.id,
        order.idempotency_key,
        order.email,
        order.payment_method,
        order.promo_code,
        order.reservation_id,
        order.total,
        order.currency,
        order.calculator_version,
        order.ruleset_revision,
        order.pricing,
        order.wallet_amount,
        order.customer_id,
    )
    .execute(tx.conn())
    .await;
    match inserted {
        Err(e) if violates(&e, "orders_merchant_id_idempotency_key_key") => return Ok(false),
        other => other?,
    };
    let skus: Vec<&str> = order.items.iter().map(|(s, _, _)| s.as_str()).collect();
    let quantities: Vec<i64> = order.items.iter().map(|(_, q, _)| *q).collect();
    let units: Vec<i64> = order.items.iter().map(|(_, _, u)| *u).collect();
    sqlx::query!(
        "insert into order_items (merchant_id, order_id, sku, quantity, unit_amount)
         select $1, $2, x.sku, x.quantity, x.unit from unnest($3::text[], $4::bigint[], $5::bigint[]) as x(sku, quantity, unit)",
        merchant,
        order.id,
        &skus as &[&str],
        &quantities,
        &units,
    )
    .execute(tx.conn())
    .await?;
    Ok(true)
}

pub async fn find_by_idempotency_key(
    tx: &mut TenantTx,
    key: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select id from orders where merchant_id = $1 and idempotency_key = $2",
        tx.merchant_id().0,
        key,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Confirms a pending order (whatever payment step it reached: those are not
/// written, see the saga) with its payment; when it was confirmed, or `None` if
/// it is no longer pending (a concurrent driver confirmed or failed it first).
pub async fn confirm(
    tx: &mut TenantTx,
    id: Uuid,
    payment_id: Option<Uuid>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        "update orders set saga_step = 'confirmed', status = 'confirmed',
                           payment_id = coalesce($3, payment_id), updated_at = now()
         where merchant_id = $1 and id = $2 and status = 'pending'
         returning updated_at",
        tx.merchant_id().0,
        id,
        payment_id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Cancels a confirmed order nothing of which has shipped; `false` if it is
/// not (any more) in that state.
pub async fn mark_cancelled(
    tx: &mut TenantTx,
    id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let cancelled = sqlx::query!(
        "update orders set status = 'cancelled', cancel_reason = $3, cancelled_at = now(), updated_at = now()
         where merchant_id = $1 and id = $2 and status = 'confirmed' and fulfillment_status = 'unfulfilled'",
        tx.merchant_id().0,
        id,
        reason,
    )
    .execute(tx.conn())
    .await?;
    Ok(cancelled.rows_affected() == 1)
}

/// Records where the order's shipping stands.
pub async fn set_fulfillment_status(
    tx: &mut TenantTx,
    id: Uuid,
    status: FulfillmentStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update orders set fulfillment_status = $3, updated_at = now()
         where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
        status.as_str(),
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Marks a pending order failed (its compensations are the caller's to run first).
pub async fn mark_failed(
    tx: &mut TenantTx,
    id: Uuid,
    reason: &str,
    payment_id: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let failed = sqlx::query!(
        "update orders set status = 'failed', saga_step = 'compensated', failure_reason = $3,
                           payment_id = coalesce($4, payment_id), updated_at = now()
         where merchant_id = $1 and id = $2 and status = 'pending'",
        tx.merchant_id().0,
        id,
        reason,
        payment_id,
    )
    .execute(tx.conn())
    .await?;
    Ok(failed.rows_affected() == 1)
}

pub async fn get_order(tx: &mut TenantTx, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let row = sqlx::query_as!(
        OrderRow,
        r#"select id, status as "status: OrderStatus", saga_step as "saga_step: Step",
                  fulfillment_status as "fulfillment_status: FulfillmentStatus", customer_email,
                  customer_id, payment_method, promo_code, reservation_id, payment_id, total_amount, currency,
                  failure_reason, wallet_amount, created_at, updated_at, calculator_version,
                  ruleset_revision, pricing::text as pricing
         from orders where merchant_id = $1 and id = $2"#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    match row {
        Some(row) => Ok(with_items(tx, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

/// The orders of `ids` that exist, in id order.
pub async fn orders_by_ids(tx: &mut TenantTx, ids: &[Uuid]) -> Result<Vec<Order>, sqlx::Error> {
    let rows = sqlx::query_as!(
        OrderRow,
        r#"select id, status as "status: OrderStatus", saga_step as "saga_step: Step",
                  fulfillment_status as "fulfillment_status: FulfillmentStatus", customer_email,
                  customer_id, payment_method, promo_code, reservation_id, payment_id, total_amount, currency,
                  failure_reason, wallet_amount, created_at, updated_at, calculator_version,
                  ruleset_revision, pricing::text as pricing
         from orders where merchant_id = $1 and id = any($2)
         order by id"#,
        tx.merchant_id().0,
        ids,
    )
    .fetch_all(tx.conn())
    .await?;
    with_items(tx, rows).await
}

async fn with_items(tx: &mut TenantTx, rows: Vec<OrderRow>) -> Result<Vec<Order>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(Vec::new());
    };
    // The range of ids bounds the index scan whatever the planner thinks of
    // the merchant. With `order_id = any($2)` alone, a merchant the table's
    // statistics do not know yet (new since the last ANALYZE, next to a big
    // one) is estimated at one row, and PostgreSQL 15 then scans all of the
    // merchant's items filtering by the array: on the bench, 36 ms for one
    // order of a merchant with 50,000, in every checkout, growing with it.
    let items = sqlx::query!(
        "select order_id, sku, quantity, unit_amount from order_items
         where merchant_id = $1 and order_id >= $2 and order_id <= $3 and order_id = any($4)
         order by sku",
        tx.merchant_id().0,
        first,
        last,
        &ids,
    )
    .fetch_all(tx.conn())
    .await?;
    let refunds = refund_summaries(tx, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| Order {
            refunds: refunds
                .iter()
                .filter(|(order, _)| *order == r.id)
                .map(|(_, refund)| refund.clone())
                .collect(),
            refunded: Money {
                amount: refunds
                    .iter()
                    .filter(|(order, refund)| {
                        *order == r.id && refund.status != RefundStatus::Failed
                    })
                    .map(|(_, refund)| refund.amount)
                    .sum(),
                currency: r.currency.clone(),
            },
            items: items
                .iter()
                .filter(|item| item.order_id == r.id)
                .map(|item| OrderItem {
                    sku: item.sku.clone(),
                    quantity: item.quantity,
                    unit_price: Money {
                        amount: item.unit_amount,
                        currency: r.currency.clone(),
                    },
                })
                .collect(),
            id: r.id,
            status: r.status,
            fulfillment_status: r.fulfillment_status,
            step: r.saga_step,
            total: Money {
                amount: r.total_amount,
                currency: r.currency.clone(),
            },
            customer: Customer {
                id: r.customer_id,
                email: r.customer_email,
            },
            payment_method: r.payment_method,
            promo_code: r.promo_code,
            reservation_id: r.reservation_id,
            payment_id: r.payment_id,
            failure_reason: r.failure_reason,
            store_credit: Money {
                amount: r.wallet_amount,
                currency: r.currency,
            },
            pricing: order_pricing(
                r.calculator_version,
                r.ruleset_revision,
                r.pricing.as_deref(),
            ),
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

fn order_pricing(
    version: Option<String>,
    revision: Option<i64>,
    pricing: Option<&str>,
) -> Option<OrderPricing> {
    let mut recorded: serde_json::Value = serde_json::from_str(pricing?).ok()?;
    Some(OrderPricing {
        version: version?,
        ruleset_revision: revision?,
        breakdown: recorded.get_mut("breakdown")?.take(),
    })
}

/// Whether the customer already has a confirmed order (pricing's `first_order`).
pub async fn has_confirmed_order(tx: &mut TenantTx, email: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (
               select 1 from orders
               where merchant_id = $1 and customer_key = lower($2) and status = 'confirmed'
           ) as "exists!""#,
        tx.merchant_id().0,
        email,
    )
    .fetch_one(tx.conn())
    .await
}

/// Pending orders untouched for `grace_seconds`, across merchants (worker
/// role), in turns: each merchant with stalled orders gets an equal share of
/// the `limit`, merchants taken from where `rotation` left off.
pub async fn stalled_orders(
    conn: &mut PgConnection,
    grace_seconds: f64,
    limit: i64,
    rotation: &mut Rotation,
) -> Result<Vec<(MerchantId, Uuid)>, sqlx::Error> {
    let stalled = sqlx::query!(
        r#"with recursive pending (merchant_id) as (
               -- One index probe per merchant with pending orders.
               (select merchant_id from orders where status = 'pending'
                order by merchant_id limit 1)
               union all
               select (select o.merchant_id from orders o
                       where o.status = 'pending' and o.merchant_id > p.merchant_id
                       order by o.merchant_id limit 1)
               from pending p where p.merchant_id is not null
           ), waiting as (
               select p.merchant_id, count(*) over () as merchants
               from pending p
               where p.merchant_id is not null
                 and exists (select 1 from orders o
                             where o.merchant_id = p.merchant_id and o.status = 'pending'
                               and o.updated_at < now() - make_interval(secs => $1))
               order by p.merchant_id <= $3, p.merchant_id
           )
           select o.merchant_id as "merchant_id!", o.id as "id!", w.merchants as "merchants!"
           from waiting w, lateral (
               select o.merchant_id, o.id from orders o
               where o.merchant_id = w.merchant_id and o.status = 'pending'
                 and o.updated_at < now() - make_interval(secs => $1)
               order by o.updated_at
               limit ceil($2::bigint / w.merchants::float8)::bigint
           ) o
           limit $2"#,
        grace_seconds,
        limit,
        rotation.after(),
    )
    .fetch_all(conn)
    .await?;
    let waiting = stalled.first().map_or(0, |o| o.merchants as usize);
    let stalled: Vec<(MerchantId, Uuid)> = stalled
        .into_iter()
        .map(|o| (MerchantId(o.merchant_id), o.id))
        .collect();
    let merchants: Vec<MerchantId> = stalled.iter().map(|(m, _)| *m).collect();
    rotation.served(&merchants, waiting);
    Ok(in_turns(stalled))
}
