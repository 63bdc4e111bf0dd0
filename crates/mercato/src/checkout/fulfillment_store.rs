//! Fulfilments as stored: each shipment with its lines, the units shipped so
//! far, and which provider ships a merchant's orders. Owns
//! `order_fulfillments`, `order_fulfillment_lines` and `fulfillment_settings`
//! (checkout's tables).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::TenantTx;

/// A shipment as stored.
#[derive(Debug, Clone)]
pub struct StoredFulfillment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub provider: String,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    /// (sku, quantity)
    pub lines: Vec<(String, i64)>,
    pub created_at: DateTime<Utc>,
}

/// Units shipped per SKU.
pub async fn fulfilled_so_far(
    tx: &mut TenantTx,
    order: Uuid,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select l.sku, sum(l.quantity)::bigint as "units!"
           from order_fulfillment_lines l
           join order_fulfillments f on f.merchant_id = l.merchant_id and f.id = l.fulfillment_id
           where f.merchant_id = $1 and f.order_id = $2
           group by l.sku"#,
        tx.merchant_id().0,
        order,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| (r.sku, r.units)).collect())
}

pub async fn insert_fulfillment(
    tx: &mut TenantTx,
    fulfillment: &StoredFulfillment,
    key: Option<&str>,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into order_fulfillments (merchant_id, id, order_id, idempotency_key, provider,
                                         carrier, tracking_number, created_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        merchant,
        fulfillment.id,
        fulfillment.order_id,
        key,
        fulfillment.provider,
        fulfillment.carrier,
        fulfillment.tracking_number,
        fulfillment.created_at,
    )
    .execute(tx.conn())
    .await?;
    let skus: Vec<&str> = fulfillment.lines.iter().map(|(s, _)| s.as_str()).collect();
    let quantities: Vec<i64> = fulfillment.lines.iter().map(|(_, q)| *q).collect();
    sqlx::query!(
        "insert into order_fulfillment_lines (merchant_id, fulfillment_id, sku, quantity)
         select $1, $2, x.sku, x.quantity from unnest($3::text[], $4::bigint[]) as x (sku, quantity)",
        merchant,
        fulfillment.id,
        &skus as &[&str],
        &quantities,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The fulfilments of an order, oldest first, or the one recorded under `key`.
pub async fn fulfillments_of(
    tx: &mut TenantTx,
    order: Uuid,
    key: Option<&str>,
) -> Result<Vec<StoredFulfillment>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let heads = sqlx::query!(
        "select id, provider, carrier, tracking_number, created_at from order_fulfillments
         where merchant_id = $1 and order_id = $2 and ($3::text is null or idempotency_key = $3)
         order by id",
        merchant,
        order,
        key,
    )
    .fetch_all(tx.conn())
    .await?;
    let ids: Vec<Uuid> = heads.iter().map(|h| h.id).collect();
    let lines = sqlx::query!(
        "select fulfillment_id, sku, quantity from order_fulfillment_lines
         where merchant_id = $1 and fulfillment_id = any($2) order by sku",
        merchant,
        &ids,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(heads
        .into_iter()
        .map(|h| StoredFulfillment {
            lines: lines
                .iter()
                .filter(|l| l.fulfillment_id == h.id)
                .map(|l| (l.sku.clone(), l.quantity))
                .collect(),
            id: h.id,
            order_id: order,
            provider: h.provider,
            carrier: h.carrier,
            tracking_number: h.tracking_number,
            created_at: h.created_at,
        })
        .collect())
}

/// The provider the merchant chose, if they chose one.
pub async fn chosen_provider(tx: &mut TenantTx) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "select provider from fulfillment_settings where merchant_id = $1",
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await
}

pub async fn choose_provider(tx: &mut TenantTx, provider: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into fulfillment_settings (merchant_id, provider) values ($1, $2)
         on conflict (merchant_id) do update set provider = excluded.provider, updated_at = now()",
        tx.merchant_id().0,
        provider,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}
