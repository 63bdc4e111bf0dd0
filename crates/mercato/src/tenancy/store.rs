use sqlx::PgPool;

use super::{ApiKey, MerchantId, MerchantName, Slug, Strategy};
use crate::db::{violates, TenantTx};

#[derive(Debug, thiserror::Error)]
pub enum CreateMerchantError {
    #[error("a merchant with slug {0:?} already exists")]
    SlugTaken(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Creates a merchant and its first API key in one transaction.
pub async fn create_merchant(
    pool: &PgPool,
    name: &MerchantName,
    slug: &Slug,
) -> Result<(MerchantId, ApiKey), CreateMerchantError> {
    let id = MerchantId::new();
    let mut tx = TenantTx::begin(pool, id).await?;
    sqlx::query!(
        "insert into merchants (id, slug, name) values ($1, $2, $3)",
        id.0,
        slug.as_str(),
        name.as_str(),
    )
    .execute(tx.conn())
    .await
    .map_err(|e| match violates(&e, "merchants_slug_key") {
        true => CreateMerchantError::SlugTaken(slug.as_str().to_owned()),
        false => e.into(),
    })?;
    let key = issue_api_key(&mut tx).await?;
    tx.commit().await?;
    Ok((id, key))
}

/// Creates a new API key for the transaction's merchant.
pub async fn issue_api_key(tx: &mut TenantTx) -> Result<ApiKey, sqlx::Error> {
    let key = ApiKey::generate(tx.merchant_id());
    sqlx::query!(
        "insert into api_keys (merchant_id, id, key_hash) values ($1, $2, $3)",
        tx.merchant_id().0,
        uuid::Uuid::now_v7(),
        key.hash(),
    )
    .execute(tx.conn())
    .await?;
    Ok(key)
}

/// Sets a merchant's stock strategy; `false` if there is no such merchant.
pub async fn set_stock_strategy(
    pool: &PgPool,
    id: MerchantId,
    strategy: Strategy,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "update merchants set stock_strategy = $2 where id = $1",
        id.0,
        strategy.as_str(),
    )
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn find_merchant_by_slug(
    pool: &PgPool,
    slug: &Slug,
) -> Result<Option<MerchantId>, sqlx::Error> {
    let id = sqlx::query_scalar!("select id from merchants where slug = $1", slug.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(id.map(MerchantId))
}

/// The stock strategy of `key`'s merchant if `key` is one of its live keys
/// (checked under that merchant's RLS); `None` for a dead or unknown key.
pub async fn authenticate_key(
    tx: &mut TenantTx,
    key: &ApiKey,
) -> Result<Option<Strategy>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select m.stock_strategy as "stock_strategy: Strategy"
         from api_keys k join merchants m on m.id = k.merchant_id
         where k.merchant_id = $1 and k.key_hash = $2 and k.revoked_at is null"#,
        tx.merchant_id().0,
        key.hash(),
    )
    .fetch_optional(tx.conn())
    .await
}
