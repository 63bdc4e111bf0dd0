//! A customer's orders for their data export, and their address erased from
//! them (the money, quantities and ids stay: the books still balance).

use uuid::Uuid;

use super::store::{get_order, Order};
use crate::db::TenantTx;

/// Most orders an export lists (newest first): beyond it, the rest are named
/// by `GET /v1/orders?customer_id=`.
pub const EXPORTED_ORDERS: i64 = 10_000;

/// The orders of `customer`, or placed under its address and not linked yet.
pub async fn orders_of_customer(
    tx: &mut TenantTx,
    customer: Uuid,
    email_key: &str,
) -> Result<Vec<Order>, sqlx::Error> {
    let ids = sqlx::query_scalar!(
        "select id from orders where merchant_id = $1 and (customer_id = $2 or customer_key = $3)
         order by id desc limit $4",
        tx.merchant_id().0,
        customer,
        email_key,
        EXPORTED_ORDERS,
    )
    .fetch_all(tx.conn())
    .await?;
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(order) = get_order(tx, id).await? {
            orders.push(order);
        }
    }
    Ok(orders)
}

/// Replaces the address on the customer's orders (and in the pricing inputs
/// they recorded) with `placeholder`, linking the unlinked ones; how many.
pub async fn erase_customer(
    tx: &mut TenantTx,
    customer: Uuid,
    email_key: &str,
    placeholder: &str,
) -> Result<u64, sqlx::Error> {
    let erased = sqlx::query!(
        "update orders set
             customer_email = $4,
             customer_id = $2,
             pricing = case when pricing #> '{cart,customer,email}' is not null
                            then jsonb_set(pricing, '{cart,customer,email}', to_jsonb($4::text))
                            else pricing end,
             updated_at = now()
         where merchant_id = $1 and (customer_id = $2 or customer_key = $3)",
        tx.merchant_id().0,
        customer,
        email_key,
        placeholder,
    )
    .execute(tx.conn())
    .await?;
    Ok(erased.rows_affected())
}
