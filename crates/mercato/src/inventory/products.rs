//! Deleting a product or archiving a variant: stock decides, since neither
//! may go while any of its units are reserved (a buyer's checkout holds them).

use uuid::Uuid;

use crate::catalog;
use crate::db::TenantTx;

/// What became of a product asked to be deleted.
#[derive(Debug, PartialEq, Eq)]
pub enum ProductDeletion {
    Deleted,
    NotFound,
    /// Some of its units are reserved: nothing was deleted.
    UnitsReserved,
}

/// Deletes a product and its variants unless units of them are reserved.
/// The stock rows stay locked from the check to the delete, so nothing can
/// be reserved in between.
pub async fn delete_product(tx: &mut TenantTx, id: Uuid) -> Result<ProductDeletion, sqlx::Error> {
    let Some(product) = catalog::get_product(tx, id).await? else {
        return Ok(ProductDeletion::NotFound);
    };
    let skus: Vec<String> = product.variants.iter().map(|v| v.sku.clone()).collect();
    if super::lock_reserved_units(tx, &skus).await? > 0 {
        return Ok(ProductDeletion::UnitsReserved);
    }
    Ok(if catalog::delete_product(tx, id).await? {
        ProductDeletion::Deleted
    } else {
        ProductDeletion::NotFound
    })
}

/// What became of a variant asked to be archived.
#[derive(Debug, PartialEq, Eq)]
pub enum VariantArchival {
    Archived,
    NotFound,
    /// This many of its units are reserved: nothing changed.
    UnitsReserved(i64),
}

/// Archives the variant `sku` of `product` unless units of it are reserved
/// (the stock row stays locked from the check to the update).
pub async fn archive_variant(
    tx: &mut TenantTx,
    product: Uuid,
    sku: &str,
) -> Result<VariantArchival, sqlx::Error> {
    if catalog::variant_detail(tx, product, sku).await?.is_none() {
        return Ok(VariantArchival::NotFound);
    }
    let reserved = super::lock_reserved_units(tx, &[sku.to_owned()]).await?;
    if reserved > 0 {
        return Ok(VariantArchival::UnitsReserved(reserved));
    }
    Ok(if catalog::archive_variant(tx, product, sku).await? {
        VariantArchival::Archived
    } else {
        VariantArchival::NotFound
    })
}
