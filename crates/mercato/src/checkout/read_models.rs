//! Orders as other contexts read them: pricing's revenue and recorded
//! pricing, remediation's keyset pages of confirmed orders, analytics' order
//! facts, the merchant of an order. Reads only; the saga writes in `store`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::TenantTx;
use crate::pricing::{OrderStats, Revenue};

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

/// A confirmed order as a re-price needs it.
pub struct PricedOrderRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub customer_email: String,
    pub customer_id: Option<Uuid>,
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
        r#"select id, created_at, customer_email, customer_id, payment_method, payment_id, total_amount,
                  currency, (pricing - 'breakdown')::text as pricing_inputs
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
