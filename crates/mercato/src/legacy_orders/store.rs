//! Both shapes of an order: the legacy row (numeric money, customer inline) and
//! the new one (integer minor units, customer in `legacy_customers`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::catalog::Money;
use crate::db::TenantTx;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LegacyCustomer {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LegacyOrder {
    pub id: i64,
    pub customer: LegacyCustomer,
    pub total: Money,
    pub placed_at: DateTime<Utc>,
}

impl LegacyOrder {
    /// What shadow reads compare: everything the two shapes must agree on. (The
    /// customer's name is per order in the old shape and the latest one seen in
    /// the new, by design, so it is left out.)
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.id,
            self.customer.email,
            self.total.amount,
            self.total.currency,
            self.placed_at.timestamp_micros()
        )
    }
}

struct Row {
    id: i64,
    email: String,
    name: String,
    amount: i64,
    currency: String,
    placed_at: DateTime<Utc>,
}

impl From<Row> for LegacyOrder {
    fn from(r: Row) -> Self {
        LegacyOrder {
            id: r.id,
            customer: LegacyCustomer {
                email: r.email,
                name: r.name,
            },
            total: Money {
                amount: r.amount,
                currency: r.currency,
            },
            placed_at: r.placed_at,
        }
    }
}

pub struct NewLegacyOrder {
    pub email: String,
    pub name: String,
    pub total: Money,
}

/// A fresh order id (one sequence serves both shapes, so ids never collide),
/// scrambled so that it does not show how many orders the cell took
/// (migration 0022).
pub async fn next_id(tx: &mut TenantTx) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"select next_legacy_order_id() as "id!""#)
        .fetch_one(tx.conn())
        .await
}

pub async fn insert_old(
    tx: &mut TenantTx,
    id: i64,
    order: &NewLegacyOrder,
) -> Result<(), sqlx::Error> {
    // `$5::bigint::numeric`: the parameter is minor units (a bigint), converted in SQL;
    // typed numeric it would need a Rust decimal type.
    sqlx::query!(
        "insert into legacy_orders (merchant_id, id, customer_email, customer_name, total, currency, placed_at)
         values ($1, $2, $3, $4, $5::bigint::numeric / 100, $6, now())",
        tx.merchant_id().0,
        id,
        order.email,
        order.name,
        order.total.amount,
        order.total.currency,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Upserts the order into the new shape (idempotent, like the backfill's transform).
pub async fn upsert_new(
    tx: &mut TenantTx,
    id: i64,
    order: &NewLegacyOrder,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "with c as (
             insert into legacy_customers (merchant_id, email, name) values ($1, $3, $4)
             on conflict (merchant_id, email) do update set name = excluded.name
             returning id
         )
         insert into order_records (merchant_id, id, customer_id, total_minor, currency, placed_at)
         select $1, $2, c.id, $5, $6, now() from c
         on conflict (merchant_id, id) do update
             set customer_id = excluded.customer_id, total_minor = excluded.total_minor,
                 currency = excluded.currency, placed_at = excluded.placed_at",
        tx.merchant_id().0,
        id,
        order.email,
        order.name,
        order.total.amount,
        order.total.currency,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn read_old(tx: &mut TenantTx, id: i64) -> Result<Option<LegacyOrder>, sqlx::Error> {
    let row = sqlx::query_as!(
        Row,
        r#"select id, lower(customer_email) as "email!", customer_name as name,
                round(total * 100)::bigint as "amount!", currency, placed_at
         from legacy_orders where merchant_id = $1 and id = $2"#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(Into::into))
}

pub async fn read_new(tx: &mut TenantTx, id: i64) -> Result<Option<LegacyOrder>, sqlx::Error> {
    let row = sqlx::query_as!(
        Row,
        "select o.id, c.email, c.name, o.total_minor as amount, o.currency, o.placed_at
         from order_records o join legacy_customers c on c.merchant_id = o.merchant_id and c.id = o.customer_id
         where o.merchant_id = $1 and o.id = $2",
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(Into::into))
}
