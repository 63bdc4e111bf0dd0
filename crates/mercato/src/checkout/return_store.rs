//! Returns as stored: shipped units sent back, each with the refund it made.
//! Owns `order_returns` and `order_return_lines` (checkout's tables).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::TenantTx;

#[derive(Debug, Clone)]
pub struct StoredReturn {
    pub id: Uuid,
    pub order_id: Uuid,
    pub refund_id: Uuid,
    pub restock: bool,
    /// (sku, quantity)
    pub lines: Vec<(String, i64)>,
    pub created_at: DateTime<Utc>,
}

/// Units returned per SKU.
pub async fn returned_so_far(
    tx: &mut TenantTx,
    order: Uuid,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select l.sku, sum(l.quantity)::bigint as "units!"
           from order_return_lines l
           join order_returns r on r.merchant_id = l.merchant_id and r.id = l.return_id
           where r.merchant_id = $1 and r.order_id = $2
           group by l.sku"#,
        tx.merchant_id().0,
        order,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| (r.sku, r.units)).collect())
}

pub async fn insert_return(
    tx: &mut TenantTx,
    ret: &StoredReturn,
    key: Option<&str>,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into order_returns (merchant_id, id, order_id, idempotency_key, refund_id, restock, created_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
        merchant,
        ret.id,
        ret.order_id,
        key,
        ret.refund_id,
        ret.restock,
        ret.created_at,
    )
    .execute(tx.conn())
    .await?;
    let skus: Vec<&str> = ret.lines.iter().map(|(s, _)| s.as_str()).collect();
    let quantities: Vec<i64> = ret.lines.iter().map(|(_, q)| *q).collect();
    sqlx::query!(
        "insert into order_return_lines (merchant_id, return_id, sku, quantity)
         select $1, $2, x.sku, x.quantity from unnest($3::text[], $4::bigint[]) as x (sku, quantity)",
        merchant,
        ret.id,
        &skus as &[&str],
        &quantities,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The return an order recorded under an idempotency key.
pub async fn find_return(
    tx: &mut TenantTx,
    order: Uuid,
    key: &str,
) -> Result<Option<StoredReturn>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let Some(head) = sqlx::query!(
        "select id, refund_id, restock, created_at from order_returns
         where merchant_id = $1 and order_id = $2 and idempotency_key = $3",
        merchant,
        order,
        key,
    )
    .fetch_optional(tx.conn())
    .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query!(
        "select sku, quantity from order_return_lines where merchant_id = $1 and return_id = $2 order by sku",
        merchant,
        head.id,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(Some(StoredReturn {
        id: head.id,
        order_id: order,
        refund_id: head.refund_id,
        restock: head.restock,
        lines: lines.into_iter().map(|l| (l.sku, l.quantity)).collect(),
        created_at: head.created_at,
    }))
}
