//! A product's variants after it is created: added, re-priced (each price
//! kept with the period it was in force), archived.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::{announce, get_product, insert_variant, CatalogError, Variant, VariantRow};
use super::{Money, NewVariant, VariantPatch};
use crate::db::TenantTx;
use crate::events::EventType;

/// A price a variant had, and when.
#[derive(Debug, Serialize, ToSchema)]
pub struct PricePeriod {
    pub price: Money,
    pub valid_from: DateTime<Utc>,
    /// `null`: the price in force.
    pub valid_to: Option<DateTime<Utc>>,
}

/// A variant with every price it has had, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariantDetail {
    #[serde(flatten)]
    pub variant: Variant,
    pub product_id: Uuid,
    pub price_history: Vec<PricePeriod>,
}

/// Adds a variant to `product`; `None` when the merchant has no such product.
pub async fn add_variant(
    tx: &mut TenantTx,
    product: Uuid,
    new: &NewVariant,
) -> Result<Option<VariantDetail>, CatalogError> {
    if !lock_product(tx, product).await? {
        return Ok(None);
    }
    insert_variant(tx, product, new).await?;
    announce_product(tx, product).await?;
    Ok(variant_detail(tx, product, new.sku.as_str()).await?)
}

/// Applies `patch` to the variant `sku` of `product`. A new price closes the
/// period of the old one and opens its own, now.
pub async fn change_variant(
    tx: &mut TenantTx,
    product: Uuid,
    sku: &str,
    patch: &VariantPatch,
) -> Result<Option<VariantDetail>, sqlx::Error> {
    let Some(current) = lock_variant(tx, product, sku).await? else {
        return Ok(None);
    };
    if let Some(price) = &patch.price {
        let unchanged =
            current.price.amount == price.amount && current.price.currency == price.currency;
        if !unchanged {
            reprice(tx, current.id, price).await?;
            announce_product(tx, product).await?;
        }
    }
    variant_detail(tx, product, sku).await
}

async fn reprice(tx: &mut TenantTx, variant: Uuid, price: &Money) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update variants set price_amount = $3, currency = $4 where merchant_id = $1 and id = $2",
        merchant,
        variant,
        price.amount,
        price.currency,
    )
    .execute(tx.conn())
    .await?;
    // Two changes in one transaction would share `now()`: the second replaces
    // the first's period rather than opening an empty one.
    sqlx::query!(
        "update variant_prices set valid_to = now()
         where merchant_id = $1 and variant_id = $2 and valid_to is null and valid_from < now()",
        merchant,
        variant,
    )
    .execute(tx.conn())
    .await?;
    sqlx::query!(
        "insert into variant_prices (merchant_id, variant_id, valid_from, price_amount, currency)
         values ($1, $2, now(), $3, $4)
         on conflict (merchant_id, variant_id, valid_from)
         do update set price_amount = excluded.price_amount, currency = excluded.currency",
        merchant,
        variant,
        price.amount,
        price.currency,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Archives the variant `sku` of `product` (already archived: unchanged).
/// Whether it may go is stock's to say (`inventory::archive_variant`).
pub async fn archive_variant(
    tx: &mut TenantTx,
    product: Uuid,
    sku: &str,
) -> Result<bool, sqlx::Error> {
    let archived = sqlx::query!(
        "update variants set archived_at = coalesce(archived_at, now())
         where merchant_id = $1 and product_id = $2 and sku = $3",
        tx.merchant_id().0,
        product,
        sku,
    )
    .execute(tx.conn())
    .await?;
    if archived.rows_affected() == 0 {
        return Ok(false);
    }
    announce_product(tx, product).await?;
    Ok(true)
}

/// The variant `sku` of `product` with its price history.
pub async fn variant_detail(
    tx: &mut TenantTx,
    product: Uuid,
    sku: &str,
) -> Result<Option<VariantDetail>, sqlx::Error> {
    let Some(variant) = find_variant(tx, product, sku, false).await? else {
        return Ok(None);
    };
    let history = sqlx::query!(
        "select price_amount, currency, valid_from, valid_to from variant_prices
         where merchant_id = $1 and variant_id = $2 order by valid_from",
        tx.merchant_id().0,
        variant.id,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(Some(VariantDetail {
        variant,
        product_id: product,
        price_history: history
            .into_iter()
            .map(|h| PricePeriod {
                price: Money {
                    amount: h.price_amount,
                    currency: h.currency,
                },
                valid_from: h.valid_from,
                valid_to: h.valid_to,
            })
            .collect(),
    }))
}

async fn lock_variant(
    tx: &mut TenantTx,
    product: Uuid,
    sku: &str,
) -> Result<Option<Variant>, sqlx::Error> {
    find_variant(tx, product, sku, true).await
}

async fn find_variant(
    tx: &mut TenantTx,
    product: Uuid,
    sku: &str,
    lock: bool,
) -> Result<Option<Variant>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let row = if lock {
        sqlx::query_as!(
            VariantRow,
            r#"select id, product_id, sku, price_amount, currency, archived_at is not null as "archived!"
             from variants where merchant_id = $1 and product_id = $2 and sku = $3 for update"#,
            merchant,
            product,
            sku,
        )
        .fetch_optional(tx.conn())
        .await?
    } else {
        sqlx::query_as!(
            VariantRow,
            r#"select id, product_id, sku, price_amount, currency, archived_at is not null as "archived!"
             from variants where merchant_id = $1 and product_id = $2 and sku = $3"#,
            merchant,
            product,
            sku,
        )
        .fetch_optional(tx.conn())
        .await?
    };
    Ok(row.map(Variant::from))
}

/// Locks the product row (variants added to it queue behind each other and
/// behind its deletion); whether it exists.
async fn lock_product(tx: &mut TenantTx, product: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar!(
        "select 1 as one from products where merchant_id = $1 and id = $2 for update",
        tx.merchant_id().0,
        product,
    )
    .fetch_optional(tx.conn())
    .await?
    .is_some())
}

/// `product.updated` with the product as it now is (analytics makes a new
/// version of it: the new price is in force from this event on).
async fn announce_product(tx: &mut TenantTx, product: Uuid) -> Result<(), sqlx::Error> {
    if let Some(p) = get_product(tx, product).await? {
        announce(tx, EventType::ProductUpdated, &p).await?;
    }
    Ok(())
}
