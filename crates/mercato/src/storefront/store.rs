//! The storefront's SQL: publishable keys (a tenant table of the main
//! database, beside the API keys).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::PublishableKey;
use crate::db::TenantTx;

/// A publishable key as the merchant sees it (it is not secret: shown whole).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublishableKeyView {
    pub id: Uuid,
    /// `pk_…`: put it in the shop's web page.
    pub key: String,
    /// The origins whose pages may call the store API with it.
    pub allowed_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn insert_key(
    tx: &mut TenantTx,
    key: &PublishableKey,
    allowed_origins: &[String],
) -> Result<PublishableKeyView, sqlx::Error> {
    sqlx::query_as!(
        PublishableKeyView,
        "insert into publishable_keys (merchant_id, id, key, allowed_origins) values ($1, $2, $3, $4)
         returning id, key, allowed_origins, created_at, revoked_at",
        tx.merchant_id().0,
        Uuid::now_v7(),
        key.to_string(),
        allowed_origins,
    )
    .fetch_one(tx.conn())
    .await
}

pub async fn list_keys(tx: &mut TenantTx) -> Result<Vec<PublishableKeyView>, sqlx::Error> {
    sqlx::query_as!(
        PublishableKeyView,
        "select id, key, allowed_origins, created_at, revoked_at from publishable_keys
         where merchant_id = $1 order by id",
        tx.merchant_id().0,
    )
    .fetch_all(tx.conn())
    .await
}

/// Revokes a key (again: no change); its text, `None` when the merchant
/// has no such key.
pub async fn revoke_key(tx: &mut TenantTx, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "update publishable_keys set revoked_at = coalesce(revoked_at, now())
         where merchant_id = $1 and id = $2 returning key",
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// The origins a live key allows; `None`: no such live key.
pub async fn live_key_origins(
    tx: &mut TenantTx,
    key: &PublishableKey,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar!(
        "select allowed_origins from publishable_keys
         where merchant_id = $1 and key = $2 and revoked_at is null",
        tx.merchant_id().0,
        key.to_string(),
    )
    .fetch_optional(tx.conn())
    .await
}

/// Whether a live key of any merchant lists `origin` (`listed`) or allows
/// any origin (`any`): what a preflight, which carries no key, can know.
pub async fn origin_published(pool: &PgPool, origin: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select mercato_origin_published($1) as "published""#,
        origin
    )
    .fetch_one(pool)
    .await
}
