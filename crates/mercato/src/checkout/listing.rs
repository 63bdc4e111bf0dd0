//! `GET /v1/orders`: a keyset page of the ids that match a filter, then those
//! orders. Every filter is index-backed under row-level security (indexes of
//! migration 0024, `orders_by_customer_id` of 0030 and `orders_by_time`), proven by `EXPLAIN` in the tests
//! (`explain_order_ids`).
//!
//! One statement serves every combination of filters: a filter not given is
//! a `$n is null` that PostgreSQL folds away when it plans with the values.
//! A generic plan (reused across values, as PostgreSQL may choose after five
//! executions of a prepared statement) could not fold them and would page
//! through the merchant's orders by id, filtering; so the listing's
//! transaction plans with its values each time (`plan_cache_mode`).

use uuid::Uuid;

use super::filters::OrderFilter;
use super::store::{orders_by_ids, Order};
use crate::db::TenantTx;
use crate::pagination::Page;

/// The ids of a page of orders matching a filter, by id. Plain columns only
/// (`customer_key` is stored lower-cased): a condition on a function that is
/// not leakproof is not an index condition under the tenant policy.
/// Written out (not a checked macro) so that `explain_order_ids` explains
/// this very text.
const ORDER_IDS: &str = "select o.id from orders o
     where o.merchant_id = $1
       and ($2::uuid is null or o.id > $2)
       and ($3::text is null or o.status = $3)
       and ($4::text is null or o.fulfillment_status = $4)
       and ($5::text is null or o.customer_key = lower($5))
       and ($6::timestamptz is null or o.created_at >= $6)
       and ($7::timestamptz is null or o.created_at < $7)
       and ($8::text is null or exists (
               select 1 from order_items i
               where i.merchant_id = o.merchant_id and i.order_id = o.id and i.sku = $8))
       and ($10::uuid is null or o.customer_id = $10)
       and ($11::uuid is null or o.id >= $11)
     order by o.id
     limit $9";

fn bound<'q>(
    sql: &'q str,
    merchant: Uuid,
    filter: &'q OrderFilter,
    page: Page,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(merchant)
        .bind(page.after)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.fulfillment_status.map(|s| s.as_str()))
        .bind(filter.email.as_deref())
        .bind(filter.created_from)
        .bind(filter.created_to)
        .bind(filter.sku.as_deref())
        .bind(page.fetch_limit())
        .bind(filter.customer_id)
        .bind(filter.created_from.map(first_id_placed_from))
}

/// How much earlier than the clock of the database an order's id may have
/// been taken (the service's and the database's clocks apart, the time
/// between the transaction's start and the id): far more than either.
const ID_CLOCK_MARGIN_MS: i64 = 3_600_000;

/// A lower bound of the ids of the orders placed at or after `from`. Order
/// ids are UUIDv7, taken when the order is placed, so they rise with time;
/// PostgreSQL does not know that, and for `created_from` near the present it
/// may walk the primary key in id order from the merchant's first order,
/// filtering on `created_at`, through every older order (997,261 rows for a
/// page of 51 on the bench's 1,000,000). Bounding the id too starts that walk
/// where the rows are; the exact `created_at` condition still decides. The
/// smallest UUIDv7 of the millisecond an hour before `from`: its 48-bit time,
/// version 7, the variant, nothing else.
pub fn first_id_placed_from(from: chrono::DateTime<chrono::Utc>) -> Uuid {
    let ms = (from.timestamp_millis() - ID_CLOCK_MARGIN_MS).max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

async fn plan_with_values(tx: &mut TenantTx) -> Result<(), sqlx::Error> {
    sqlx::query("set local plan_cache_mode = force_custom_plan")
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// A page of the orders `filter` matches, by id (one more than the page, to
/// tell whether another follows).
pub async fn list_orders(
    tx: &mut TenantTx,
    filter: &OrderFilter,
    page: Page,
) -> Result<Vec<Order>, sqlx::Error> {
    use sqlx::Row;
    plan_with_values(tx).await?;
    let merchant = tx.merchant_id().0;
    let ids = bound(ORDER_IDS, merchant, filter, page)
        .fetch_all(tx.conn())
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid, _>(0))
        .collect::<Result<Vec<Uuid>, _>>()?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    orders_by_ids(tx, &ids).await
}

/// The plan PostgreSQL chooses for the listing's ids with these values, as
/// `EXPLAIN` prints it (text), in the caller's transaction and role.
pub async fn explain_order_ids(
    tx: &mut TenantTx,
    filter: &OrderFilter,
    page: Page,
) -> Result<String, sqlx::Error> {
    use sqlx::Row;
    plan_with_values(tx).await?;
    let merchant = tx.merchant_id().0;
    let sql = format!("explain {ORDER_IDS}");
    let lines = bound(&sql, merchant, filter, page)
        .fetch_all(tx.conn())
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<Vec<String>, _>>()?;
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every UUIDv7 taken at or after `from` (and up to an hour before it)
        /// sorts at or after the bound, byte-wise as PostgreSQL compares uuids.
        #[test]
        fn ids_placed_from_a_time_are_above_its_bound(
            from_ms in 3_600_000i64..4_000_000_000_000,
            after_ms in -3_600_000i64..10_000_000_000,
            random in any::<u128>(),
        ) {
            let from = chrono::DateTime::from_timestamp_millis(from_ms).unwrap();
            let at = (from_ms + after_ms) as u64;
            let id = uuid::Builder::from_unix_timestamp_millis(at, &random.to_be_bytes()[..10].try_into().unwrap()).into_uuid();
            prop_assert!(id.as_bytes() >= first_id_placed_from(from).as_bytes());
        }
    }

    #[test]
    fn the_bound_is_a_version_7_uuid_of_an_hour_before() {
        let from = chrono::DateTime::from_timestamp_millis(1_765_000_000_000).unwrap();
        let bound = first_id_placed_from(from);
        assert_eq!(bound.get_version_num(), 7);
        let (secs, _) = bound.get_timestamp().unwrap().to_unix();
        assert_eq!(secs as i64, 1_765_000_000 - 3_600);
    }
}
