//! The demo merchant (products and stock) a fresh `mercato serve` seeds, so a newcomer can try the API at once,
//! `mercato demo migration` and `mercato demo incident`.

pub mod incident;

use std::path::Path;

use crate::catalog::{create_product, Money, NewProduct, NewVariant, Sku};
use crate::db::{Db, TenantTx};
use crate::inventory::{set_on_hand, InventoryError};
use crate::tenancy::{
    create_merchant, find_merchant_by_slug, issue_api_key, Created, MerchantName, Slug,
};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("seeding the demo merchant: {0}")]
    Db(#[from] sqlx::Error),
    #[error("seeding the demo merchant: {0}")]
    Merchant(#[from] crate::tenancy::CreateMerchantError),
    #[error("seeding the demo products: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("seeding the demo stock: {0}")]
    Inventory(#[from] InventoryError),
    #[error("demo API key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
}

const DEMO_STOCK: i64 = 100;

const DEMO_PRODUCTS: &[(&str, &[(&str, i64)])] = &[
    ("Espresso beans 1 kg", &[("BEANS-1KG", 2490)]),
    ("Hand grinder", &[("GRINDER-01", 12900)]),
    ("Mug", &[("MUG-WHITE", 1200), ("MUG-BLACK", 1200)]),
];

/// Seeds the demo merchant once and returns its API key (kept in `data_dir`,
/// since only the key's hash is in the database).
/// The demo shop owner's login.
pub const DEMO_OWNER: &str = "owner@demo.mercato.local";

/// The demo owner's login: made with a random password on the first run,
/// which is kept (private) in `demo-login` and printed at every start.
pub async fn seed_login(db: &Db, data_dir: &Path) -> Result<(String, String), DemoError> {
    let file = data_dir.join("demo-login");
    let file_error = |source| DemoError::KeyFile {
        path: file.display().to_string(),
        source,
    };
    if let Ok(password) = std::fs::read_to_string(&file) {
        return Ok((DEMO_OWNER.to_owned(), password.trim().to_owned()));
    }
    let slug = Slug::parse("demo").expect("valid demo slug");
    let merchant = find_merchant_by_slug(&db.app, &slug)
        .await?
        .ok_or(DemoError::Db(sqlx::Error::RowNotFound))?;
    let mut secret = [0u8; 9];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    let password = format!("demo-{}", hex::encode(secret));
    let email = crate::tenancy::people::Email::parse(DEMO_OWNER).expect("valid demo address");
    crate::tenancy::people::put_staff_login(
        &db.app,
        merchant,
        &email,
        &password,
        crate::tenancy::people::Role::Owner,
    )
    .await?;
    localpg::write_private(&file, &password).map_err(file_error)?;
    Ok((DEMO_OWNER.to_owned(), password))
}

pub async fn seed(db: &Db, data_dir: &Path) -> Result<String, DemoError> {
    let key_file = data_dir.join("demo-api-key");
    let key_error = |source| DemoError::KeyFile {
        path: key_file.display().to_string(),
        source,
    };
    // The constants below are valid by construction; parsing them cannot fail.
    let slug = Slug::parse("demo").expect("valid demo slug");
    if let Some(merchant) = find_merchant_by_slug(&db.app, &slug).await? {
        if let Ok(key) = std::fs::read_to_string(&key_file) {
            return Ok(key.trim().to_owned());
        }
        let mut tx = TenantTx::begin(&db.app, merchant).await?;
        let key = issue_api_key(&mut tx, &crate::tenancy::scopes::Access::Full, None)
            .await?
            .key
            .to_string();
        tx.commit().await?;
        localpg::write_private(&key_file, &key).map_err(key_error)?;
        return Ok(key);
    }
    let name = MerchantName::parse("Demo Coffee Shop").expect("valid demo name");
    // Without a creation key, a creation is never a replay.
    let Created::New { id: merchant, key } =
        create_merchant(&db.app, &name, &slug, None, None).await?
    else {
        return Err(DemoError::Db(sqlx::Error::RowNotFound));
    };
    {
        let mut conn = db.app.acquire().await?;
        crate::tenancy::set_rate_limits(&mut conn, merchant, Some(&crate::quotas::Plan::demo()))
            .await?;
    }
    let mut tx = TenantTx::begin(&db.app, merchant).await?;
    for (name, variants) in DEMO_PRODUCTS {
        let variants = variants
            .iter()
            .map(|(sku, amount)| NewVariant {
                sku: Sku::parse(sku).expect("valid demo SKU"),
                price: Money {
                    amount: *amount,
                    currency: "EUR".into(),
                },
            })
            .collect();
        let product = NewProduct {
            name: (*name).to_owned(),
            description: None,
            variants,
        };
        create_product(&mut tx, &product).await?;
        for variant in &product.variants {
            set_on_hand(&mut tx, &variant.sku, DEMO_STOCK, None).await?;
        }
    }
    tx.commit().await?;
    let key = key.to_string();
    localpg::write_private(&key_file, &key).map_err(key_error)?;
    Ok(key)
}
