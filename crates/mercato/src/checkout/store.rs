//! Orders: the persisted state of each checkout saga.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::catalog::Money;
use crate::db::{text_enum, violates, TenantTx};
use crate::pagination::Page;
use crate::pricing::{OrderStats, Revenue};
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
    pub email: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub status: OrderStatus,
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

struct OrderRow {
    id: Uuid,
    status: OrderStatus,
    saga_step: Step,
    customer_email: String,
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
                             ruleset_revision, pricing, wallet_amount)
         values ($1, $2, $3, 'pending', 'reserved', $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13)",
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
        r#"select id, status as "status: OrderStatus", saga_step as "saga_step: Step", customer_email,
                  payment_method, promo_code, reservation_id, payment_id, total_amount, currency,
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

pub async fn list_orders(tx: &mut TenantTx, page: Page) -> Result<Vec<Order>, sqlx::Error> {
    let rows = sqlx::query_as!(
        OrderRow,
        r#"select id, status as "status: OrderStatus", saga_step as "saga_step: Step", customer_email,
                  payment_method, promo_code, reservation_id, payment_id, total_amount, currency,
                  failure_reason, wallet_amount, created_at, updated_at, calculator_version,
                  ruleset_revision, pricing::text as pricing
         from orders where merchant_id = $1 and ($2::uuid is null or id > $2)
         order by id limit $3"#,
        tx.merchant_id().0,
        page.after,
        page.fetch_limit(),
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
    Ok(rows
        .into_iter()
        .map(|r| Order {
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
            step: r.saga_step,
            total: Money {
                amount: r.total_amount,
                currency: r.currency.clone(),
            },
            customer: Customer {
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

/// The recorded pricing of an order (`PricedOrder` JSON), for re-pricing.
pub async fn recorded_pricing(tx: &mut TenantTx, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query_scalar!(
        "select pricing::text from orders where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.flatten())
}

/// What confirmed, priced orders placed in `[from, to)` add up to, per currency.
pub async fn revenue(
    tx: &mut TenantTx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Revenue>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select currency,
                  count(*) as "orders!",
                  coalesce(sum((pricing->'breakdown'->'subtotal'->>'amount')::bigint), 0)::bigint as "subtotal!",
                  coalesce(sum((pricing->'breakdown'->'discount_total'->>'amount')::bigint), 0)::bigint as "discount!",
                  coalesce(sum(total_amount), 0)::bigint as "total!"
           from orders
           where merchant_id = $1 and status = 'confirmed' and pricing is not null
             and created_at >= $2 and created_at < $3
           group by currency order by currency"#,
        tx.merchant_id().0,
        from,
        to,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Revenue {
            currency: r.currency,
            stats: OrderStats {
                orders: r.orders,
                subtotal: r.subtotal,
                discount: r.discount,
                total: r.total,
            },
        })
        .collect())
}

/// Merchants with orders placed since `since`, across merchants (worker role).
pub async fn merchants_with_orders_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select distinct merchant_id from orders where created_at >= $1",
        since,
    )
    .fetch_all(conn)
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

/// The merchant an order belongs to, looked up across merchants (owner or
/// worker connections only: under the app role RLS hides other merchants).
pub async fn merchant_of_order(
    pool: &sqlx::PgPool,
    id: Uuid,
) -> Result<Option<crate::tenancy::MerchantId>, sqlx::Error> {
    let merchant = sqlx::query_scalar!("select merchant_id from orders where id = $1", id)
        .fetch_optional(pool)
        .await?;
    Ok(merchant.map(crate::tenancy::MerchantId))
}

text_enum! {
    /// Where a refund stands. `pending`: recorded (its units no longer refundable),
    /// the provider not yet known to have paid it; a retry with the same key resumes it.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum RefundStatus {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// An order as a refund needs it, its row locked until the transaction ends (so
/// concurrent refunds of one order take turns).
pub struct RefundableOrder {
    pub status: OrderStatus,
    pub currency: String,
    pub customer_email: String,
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
        r#"select status as "status: OrderStatus", currency, customer_email,
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
        currency: order.currency,
        customer_email: order.customer_email,
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
        "insert into order_refunds (merchant_id, id, order_id, idempotency_key, status, amount, includes_shipping)
         values ($1, $2, $3, $4, $5, $6, $7)",
        merchant,
        refund.id,
        refund.order_id,
        key,
        refund.status.as_str(),
        refund.amount,
        refund.includes_shipping,
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
        r#"select id, order_id, status as "status: RefundStatus", amount, includes_shipping, created_at
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

/// A confirmed order as a re-price needs it.
pub struct PricedOrderRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub customer_email: String,
    pub payment_method: String,
    pub payment_id: Option<Uuid>,
    pub total_amount: i64,
    pub currency: String,
    /// What priced it (`pricing::PricingInputs` as JSON: the recorded
    /// `PricedOrder` without its breakdown).
    pub pricing_inputs: Option<String>,
}

/// Confirmed orders placed in `[from, to)` after `(after_at, after_id)`, in
/// (created_at, id) order: a keyset page of up to `limit`.
pub async fn confirmed_orders_between(
    tx: &mut TenantTx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<PricedOrderRow>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let (after_at, after_id) = after.unwrap_or((from, Uuid::nil()));
    sqlx::query_as!(
        PricedOrderRow,
        r#"select id, created_at, customer_email, payment_method, payment_id, total_amount, currency,
                  (pricing - 'breakdown')::text as pricing_inputs
           from orders
           where merchant_id = $1 and created_at >= $2 and created_at < $3
             and (created_at, id) > ($4, $5) and status = 'confirmed'
           order by created_at, id
           limit $6"#,
        merchant,
        from,
        to,
        after_at,
        after_id,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// How many confirmed orders were placed in `[from, to)`.
pub async fn count_confirmed_between(
    tx: &mut TenantTx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from orders
           where merchant_id = $1 and created_at >= $2 and created_at < $3 and status = 'confirmed'"#,
        merchant,
        from,
        to,
    )
    .fetch_one(tx.conn())
    .await
}

/// An order as analytics needs it (read by key, across merchants, by the
/// worker role).
#[derive(Debug, Clone)]
pub struct OrderFacts {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub customer_key: String,
    pub customer_email: String,
    pub payment_method: String,
    pub currency: String,
    pub total_amount: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub ruleset_revision: i64,
    pub calculator_version: String,
    /// In the order's line order: its pricing breakdown's lines, or (for an
    /// order priced before pricing kept breakdowns) its items at list price.
    pub lines: Vec<LineFacts>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct LineFacts {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
    /// `unit_price × quantity`.
    pub gross: i64,
    /// `gross − discounts`.
    pub net: i64,
    pub tax: i64,
}

/// The orders of `keys` (merchant, order) that exist.
pub async fn order_facts(
    pool: &sqlx::PgPool,
    keys: &[(Uuid, Uuid)],
) -> Result<Vec<OrderFacts>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (merchants, ids): (Vec<Uuid>, Vec<Uuid>) = keys.iter().copied().unzip();
    type Row = (
        Uuid,
        Uuid,
        String,
        String,
        String,
        String,
        i64,
        chrono::DateTime<chrono::Utc>,
        i64,
        String,
        serde_json::Value,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select o.merchant_id, o.id, o.customer_key, o.customer_email, o.payment_method, o.currency,
                o.total_amount, o.created_at, coalesce(o.ruleset_revision, 0),
                coalesce(o.calculator_version, ''),
                coalesce(
                    (select jsonb_agg(jsonb_build_object(
                                'sku', l ->> 'sku', 'quantity', (l ->> 'quantity')::bigint,
                                'unit_price', (l -> 'unit_price' ->> 'amount')::bigint,
                                'gross', (l -> 'base' ->> 'amount')::bigint,
                                'net', (l -> 'net' ->> 'amount')::bigint,
                                'tax', (l -> 'tax' ->> 'amount')::bigint) order by n)
                     from jsonb_array_elements(o.pricing -> 'breakdown' -> 'lines') with ordinality x (l, n)),
                    (select jsonb_agg(jsonb_build_object(
                                'sku', i.sku, 'quantity', i.quantity, 'unit_price', i.unit_amount,
                                'gross', i.unit_amount * i.quantity, 'net', i.unit_amount * i.quantity,
                                'tax', 0) order by i.sku)
                     from order_items i where i.merchant_id = o.merchant_id and i.order_id = o.id),
                    '[]')
         from orders o join unnest($1::uuid[], $2::uuid[]) k (merchant_id, id)
           on o.merchant_id = k.merchant_id and o.id = k.id",
    )
    .bind(&merchants)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let lines: Vec<LineFacts> =
                serde_json::from_value(r.10).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(OrderFacts {
                merchant_id: r.0,
                id: r.1,
                customer_key: r.2,
                customer_email: r.3,
                payment_method: r.4,
                currency: r.5,
                total_amount: r.6,
                created_at: r.7,
                ruleset_revision: r.8,
                calculator_version: r.9,
                lines,
            })
        })
        .collect()
}
