//! Catalog SQL. Every function takes a `TenantTx`: RLS scopes it to one merchant.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::ProductStatus;
use super::{Money, NewProduct, NewVariant, ProductPatch};
use crate::db::{violates, TenantTx};
use crate::events::EventType;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("SKU {sku:?} already exists")]
    DuplicateSku { index: usize, sku: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub status: ProductStatus,
    /// Archived variants included (their `status` says so).
    pub variants: Vec<Variant>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Variant {
    pub id: Uuid,
    pub sku: String,
    pub price: Money,
    /// `archived`: deleted by the merchant, no longer sold.
    pub status: ProductStatus,
}

pub(super) struct ProductRow {
    pub(super) id: Uuid,
    pub(super) name: String,
    pub(super) description: Option<String>,
    pub(super) status: String,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
}

pub(super) struct VariantRow {
    pub(super) id: Uuid,
    pub(super) product_id: Uuid,
    pub(super) sku: String,
    pub(super) price_amount: i64,
    pub(super) currency: String,
    pub(super) archived: bool,
}

impl From<VariantRow> for Variant {
    fn from(v: VariantRow) -> Self {
        Variant {
            id: v.id,
            sku: v.sku,
            price: Money {
                amount: v.price_amount,
                currency: v.currency,
            },
            status: if v.archived {
                ProductStatus::Archived
            } else {
                ProductStatus::Active
            },
        }
    }
}

pub async fn create_product(tx: &mut TenantTx, new: &NewProduct) -> Result<Product, CatalogError> {
    let merchant = tx.merchant_id().0;
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into products (merchant_id, id, name, description) values ($1, $2, $3, $4)",
        merchant,
        id,
        new.name,
        new.description,
    )
    .execute(tx.conn())
    .await?;
    for (index, variant) in new.variants.iter().enumerate() {
        insert_variant(tx, id, variant).await.map_err(|e| match e {
            CatalogError::DuplicateSku { sku, .. } => CatalogError::DuplicateSku { index, sku },
            other => other,
        })?;
    }
    let product = get_product(tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    announce(tx, EventType::ProductCreated, &product).await?;
    Ok(product)
}

/// Inserts a variant of `product` with its first price period.
pub(super) async fn insert_variant(
    tx: &mut TenantTx,
    product: Uuid,
    variant: &NewVariant,
) -> Result<Uuid, CatalogError> {
    let merchant = tx.merchant_id().0;
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into variants (merchant_id, id, product_id, sku, price_amount, currency)
         values ($1, $2, $3, $4, $5, $6)",
        merchant,
        id,
        product,
        variant.sku.as_str(),
        variant.price.amount,
        variant.price.currency,
    )
    .execute(tx.conn())
    .await
    .map_err(|e| match violates(&e, "variants_sku_unique") {
        true => CatalogError::DuplicateSku {
            index: 0,
            sku: variant.sku.as_str().to_owned(),
        },
        false => e.into(),
    })?;
    sqlx::query!(
        "insert into variant_prices (merchant_id, variant_id, valid_from, price_amount, currency)
         values ($1, $2, now(), $3, $4)",
        merchant,
        id,
        variant.price.amount,
        variant.price.currency,
    )
    .execute(tx.conn())
    .await?;
    Ok(id)
}

/// A product's event: its name and its variants' prices as of this write
/// (analytics keeps each as a version of the product).
pub(super) async fn announce(
    tx: &mut TenantTx,
    kind: EventType,
    product: &Product,
) -> Result<(), sqlx::Error> {
    let variants: Vec<serde_json::Value> = product
        .variants
        .iter()
        .map(|v| serde_json::json!({"sku": v.sku, "price": v.price}))
        .collect();
    crate::events::emit(
        tx,
        kind,
        serde_json::json!({"product_id": product.id, "name": product.name, "variants": variants}),
    )
    .await?;
    Ok(())
}

pub async fn get_product(tx: &mut TenantTx, id: Uuid) -> Result<Option<Product>, sqlx::Error> {
    let row = sqlx::query_as!(
        ProductRow,
        "select id, name, description, status, created_at, updated_at
         from products where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    match row {
        Some(row) => Ok(with_variants(tx, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

pub async fn update_product(
    tx: &mut TenantTx,
    id: Uuid,
    patch: &ProductPatch,
) -> Result<Option<Product>, sqlx::Error> {
    let updated = sqlx::query!(
        "update products set
             name = coalesce($3, name),
             description = case when $4 then $5 else description end,
             status = coalesce($6, status),
             updated_at = now()
         where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
        patch.name,
        patch.description.is_some(),
        patch.description.clone().flatten(),
        patch.status.map(ProductStatus::as_str),
    )
    .execute(tx.conn())
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    let product = get_product(tx, id).await?;
    if let Some(product) = &product {
        announce(tx, EventType::ProductUpdated, product).await?;
    }
    Ok(product)
}

/// Deletes a product and its variants; `false` when there was none.
pub async fn delete_product(tx: &mut TenantTx, id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "delete from products where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
    )
    .execute(tx.conn())
    .await?;
    Ok(deleted.rows_affected() > 0)
}

pub(super) async fn with_variants(
    tx: &mut TenantTx,
    rows: Vec<ProductRow>,
) -> Result<Vec<Product>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let variants = sqlx::query_as!(
        VariantRow,
        r#"select id, product_id, sku, price_amount, currency, archived_at is not null as "archived!"
         from variants where merchant_id = $1 and product_id = any($2) order by id"#,
        tx.merchant_id().0,
        &ids,
    )
    .fetch_all(tx.conn())
    .await?;
    let mut by_product: std::collections::HashMap<Uuid, Vec<Variant>> =
        std::collections::HashMap::new();
    for v in variants {
        by_product.entry(v.product_id).or_default().push(v.into());
    }
    rows.into_iter()
        .map(|r| {
            Ok(Product {
                variants: by_product.remove(&r.id).unwrap_or_default(),
                status: ProductStatus::parse(&r.status).map_err(|e| {
                    sqlx::Error::Decode(format!("products.status {:?}: {e}", r.status).into())
                })?,
                id: r.id,
                name: r.name,
                description: r.description,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

/// A catalog price: the unit price of one SKU, and whether it is sold (its
/// variant and its product are active).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub sku: String,
    pub amount: i64,
    pub currency: String,
    pub for_sale: bool,
}

/// Unit prices of those of `skus` that are in the catalog, archived or not.
pub async fn prices(tx: &mut TenantTx, skus: &[&str]) -> Result<Vec<Price>, sqlx::Error> {
    sqlx::query_as!(
        Price,
        r#"select v.sku, v.price_amount as amount, v.currency,
                  (v.archived_at is null and p.status = 'active') as "for_sale!"
         from variants v join products p on p.merchant_id = v.merchant_id and p.id = v.product_id
         where v.merchant_id = $1 and v.sku = any($2)"#,
        tx.merchant_id().0,
        skus as &[&str],
    )
    .fetch_all(tx.conn())
    .await
}

/// Whether `sku` is one of the merchant's variants.
pub async fn sku_exists(tx: &mut TenantTx, sku: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from variants where merchant_id = $1 and sku = $2) as "exists!""#,
        tx.merchant_id().0,
        sku,
    )
    .fetch_one(tx.conn())
    .await
}

/// A SKU's product as analytics needs it.
#[derive(Debug, Clone)]
pub struct ProductFacts {
    pub merchant_id: Uuid,
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: i64,
    pub currency: String,
    /// From when this price was in force.
    pub valid_from: chrono::DateTime<chrono::Utc>,
}

/// The products of `keys` (merchant, SKU) that exist, one fact per price the
/// SKU has had (from when it was in force), read by key across merchants
/// (the worker role).
pub async fn product_facts(
    pool: &sqlx::PgPool,
    keys: &[(Uuid, String)],
) -> Result<Vec<ProductFacts>, sqlx::Error> {
    let (merchants, skus): (Vec<Uuid>, Vec<String>) = keys.iter().cloned().unzip();
    type Row = (Uuid, Uuid, String, String, i64, String, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select v.merchant_id, p.id, v.sku, p.name, vp.price_amount, vp.currency,
                case when vp.valid_from = first.valid_from then least(p.created_at, vp.valid_from)
                     else vp.valid_from end
             from variants v
             join unnest($1::uuid[], $2::text[]) k (merchant_id, sku)
               on v.merchant_id = k.merchant_id and v.sku = k.sku
             join products p on p.merchant_id = v.merchant_id and p.id = v.product_id
             join variant_prices vp on vp.merchant_id = v.merchant_id and vp.variant_id = v.id
             cross join lateral (
                 select min(valid_from) as valid_from from variant_prices f
                 where f.merchant_id = v.merchant_id and f.variant_id = v.id
             ) first",
    )
    .bind(&merchants)
    .bind(&skus)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ProductFacts {
            merchant_id: r.0,
            product_id: r.1,
            sku: r.2,
            name: r.3,
            price: r.4,
            currency: r.5,
            valid_from: r.6,
        })
        .collect())
}
