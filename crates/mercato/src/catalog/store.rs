//! Catalog SQL. Every function takes a `TenantTx`: RLS scopes it to one merchant.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Money, NewProduct, ProductPatch};
use crate::db::{violates, TenantTx};
use crate::events::EventType;
use crate::pagination::Page;

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
    pub variants: Vec<Variant>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Variant {
    pub id: Uuid,
    pub sku: String,
    pub price: Money,
}

struct ProductRow {
    id: Uuid,
    name: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct VariantRow {
    id: Uuid,
    product_id: Uuid,
    sku: String,
    price_amount: i64,
    currency: String,
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
        sqlx::query!(
            "insert into variants (merchant_id, id, product_id, sku, price_amount, currency)
             values ($1, $2, $3, $4, $5, $6)",
            merchant,
            Uuid::now_v7(),
            id,
            variant.sku.as_str(),
            variant.price.amount,
            variant.price.currency,
        )
        .execute(tx.conn())
        .await
        .map_err(|e| match violates(&e, "variants_sku_unique") {
            true => CatalogError::DuplicateSku {
                index,
                sku: variant.sku.as_str().to_owned(),
            },
            false => e.into(),
        })?;
    }
    let product = get_product(tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    announce(tx, EventType::ProductCreated, &product).await?;
    Ok(product)
}

/// A product's event: its name and its variants' prices as of this write
/// (analytics keeps each as a version of the product).
async fn announce(
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
        "select id, name, description, created_at, updated_at
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

/// Products in id order (creation order), after the page's cursor.
pub async fn list_products(tx: &mut TenantTx, page: Page) -> Result<Vec<Product>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ProductRow,
        "select id, name, description, created_at, updated_at from products
         where merchant_id = $1 and ($2::uuid is null or id > $2)
         order by id limit $3",
        tx.merchant_id().0,
        page.after,
        page.fetch_limit(),
    )
    .fetch_all(tx.conn())
    .await?;
    with_variants(tx, rows).await
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
             updated_at = now()
         where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
        patch.name,
        patch.description.is_some(),
        patch.description.clone().flatten(),
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

async fn with_variants(
    tx: &mut TenantTx,
    rows: Vec<ProductRow>,
) -> Result<Vec<Product>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let variants = sqlx::query_as!(
        VariantRow,
        "select id, product_id, sku, price_amount, currency from variants
         where merchant_id = $1 and product_id = any($2) order by id",
        tx.merchant_id().0,
        &ids,
    )
    .fetch_all(tx.conn())
    .await?;
    let mut by_product: std::collections::HashMap<Uuid, Vec<Variant>> =
        std::collections::HashMap::new();
    for v in variants {
        by_product.entry(v.product_id).or_default().push(Variant {
            id: v.id,
            sku: v.sku,
            price: Money {
                amount: v.price_amount,
                currency: v.currency,
            },
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| Product {
            variants: by_product.remove(&r.id).unwrap_or_default(),
            id: r.id,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

/// A catalog price: the unit price of one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub sku: String,
    pub amount: i64,
    pub currency: String,
}

/// Unit prices of those of `skus` that are in the catalog.
pub async fn prices(tx: &mut TenantTx, skus: &[&str]) -> Result<Vec<Price>, sqlx::Error> {
    sqlx::query_as!(
        Price,
        "select sku, price_amount as amount, currency from variants
         where merchant_id = $1 and sku = any($2)",
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
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The products of `keys` (merchant, SKU) that exist, read by key across
/// merchants (the worker role).
pub async fn product_facts(
    pool: &sqlx::PgPool,
    keys: &[(Uuid, String)],
) -> Result<Vec<ProductFacts>, sqlx::Error> {
    let (merchants, skus): (Vec<Uuid>, Vec<String>) = keys.iter().cloned().unzip();
    type Row = (Uuid, Uuid, String, String, i64, String, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select v.merchant_id, p.id, v.sku, p.name, v.price_amount, v.currency, p.created_at
             from variants v
             join unnest($1::uuid[], $2::text[]) k (merchant_id, sku)
               on v.merchant_id = k.merchant_id and v.sku = k.sku
             join products p on p.merchant_id = v.merchant_id and p.id = v.product_id",
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
            created_at: r.6,
        })
        .collect())
}
