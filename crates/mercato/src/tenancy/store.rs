//! Tenancy SQL: merchants (a platform table) and their API keys.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::scopes::{Access, Scope};
use super::{ApiKey, MerchantId, MerchantName, Slug, Strategy};
use crate::db::{violates, TenantTx};

#[derive(Debug, thiserror::Error)]
pub enum CreateMerchantError {
    #[error("a merchant with slug {0:?} already exists")]
    SlugTaken(String),
    /// The creation key was used before, for a different request.
    #[error("this creation key was used for another merchant request")]
    KeyReused,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The retry key of a merchant creation (`Idempotency-Key`) and a hash of what
/// the request asked for.
pub struct CreationKey<'a> {
    pub key: &'a str,
    pub request_hash: Vec<u8>,
}

/// What creating a merchant did.
pub enum Created {
    /// A new merchant, with its first key (shown this once).
    New { id: MerchantId, key: ApiKey },
    /// The merchant this creation key made before; its key is not kept, so
    /// it cannot be shown again.
    Replayed { id: MerchantId, slug: String },
}

/// Creates a merchant and its first API key in one transaction. Under a
/// creation key seen before, answers that merchant instead (or refuses, when
/// the key came with another request).
pub async fn create_merchant(
    pool: &PgPool,
    name: &MerchantName,
    slug: &Slug,
    creation: Option<&CreationKey<'_>>,
    acting: Option<&crate::db::Acting>,
) -> Result<Created, CreateMerchantError> {
    if let Some(created) = created_before(pool, creation).await? {
        return Ok(created);
    }
    let id = MerchantId::new();
    let mut tx = TenantTx::begin_in_directory(pool, id).await?;
    if let Some(acting) = acting {
        tx.act_for(acting).await?;
    }
    let inserted = sqlx::query!(
        "insert into merchants (id, slug, name, creation_key, creation_hash)
         values ($1, $2, $3, $4, $5)",
        id.0,
        slug.as_str(),
        name.as_str(),
        creation.map(|c| c.key),
        creation.map(|c| c.request_hash.as_slice()),
    )
    .execute(tx.conn())
    .await;
    match inserted {
        Err(e) if violates(&e, "merchants_slug_key") => {
            drop(tx);
            // The same request retried after its first try committed finds that merchant.
            return match created_before(pool, creation).await? {
                Some(created) => Ok(created),
                None => Err(CreateMerchantError::SlugTaken(slug.as_str().to_owned())),
            };
        }
        Err(e) if violates(&e, "merchants_creation_key") => {
            drop(tx);
            // A concurrent request with the same key won the race: answer as it did.
            return created_before(pool, creation)
                .await?
                .ok_or(CreateMerchantError::Db(sqlx::Error::RowNotFound));
        }
        other => other?,
    };
    let key = issue_api_key(&mut tx, &Access::Full, None).await?.key;
    tx.commit().await?;
    Ok(Created::New { id, key })
}

async fn created_before(
    pool: &PgPool,
    creation: Option<&CreationKey<'_>>,
) -> Result<Option<Created>, CreateMerchantError> {
    let Some(creation) = creation else {
        return Ok(None);
    };
    let found = sqlx::query!(
        "select id, slug, creation_hash from merchants where creation_key = $1",
        creation.key,
    )
    .fetch_optional(pool)
    .await?;
    match found {
        None => Ok(None),
        Some(m) if m.creation_hash.as_deref() == Some(creation.request_hash.as_slice()) => {
            Ok(Some(Created::Replayed {
                id: MerchantId(m.id),
                slug: m.slug,
            }))
        }
        Some(_) => Err(CreateMerchantError::KeyReused),
    }
}

/// A key just issued: its id, and the key itself (shown once).
pub struct IssuedKey {
    pub id: Uuid,
    pub key: ApiKey,
}

/// Creates a new API key for the transaction's merchant.
pub async fn issue_api_key(
    tx: &mut TenantTx,
    access: &Access,
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedKey, sqlx::Error> {
    let key = ApiKey::generate(tx.merchant_id());
    let id = Uuid::now_v7();
    let scopes: Option<Vec<String>> = access
        .scopes()
        .map(|s| s.iter().map(|s| s.as_str().to_owned()).collect());
    sqlx::query!(
        "insert into api_keys (merchant_id, id, key_hash, scopes, expires_at) values ($1, $2, $3, $4, $5)",
        tx.merchant_id().0,
        id,
        key.hash(),
        scopes.as_deref(),
        expires_at,
    )
    .execute(tx.conn())
    .await?;
    Ok(IssuedKey { id, key })
}

/// What is known of an API key (never the key: only its hash is stored).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// When a request last authenticated with it (to within the key cache's 30 s).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set once revoked: the key no longer authenticates.
    pub revoked_at: Option<DateTime<Utc>>,
    /// What it may do (`catalog:read`, `orders:write`, …); `null`: full access.
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<Vec<Scope>>,
    /// When it stops working; `null`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The transaction merchant's keys, oldest first.
pub async fn list_api_keys(tx: &mut TenantTx) -> Result<Vec<ApiKeyInfo>, sqlx::Error> {
    let rows = sqlx::query!(
        "select id, created_at, last_used_at, revoked_at, scopes, expires_at from api_keys
         where merchant_id = $1 order by id",
        tx.merchant_id().0,
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|r| {
            let access =
                Access::from_stored(r.scopes).map_err(|e| sqlx::Error::Decode(e.into()))?;
            Ok(ApiKeyInfo {
                id: r.id,
                created_at: r.created_at,
                last_used_at: r.last_used_at,
                revoked_at: r.revoked_at,
                scopes: access.scopes(),
                expires_at: r.expires_at,
            })
        })
        .collect()
}

/// Revokes a key (revoking a revoked key changes nothing); `false` if the
/// merchant has no such key.
pub async fn revoke_api_key(tx: &mut TenantTx, id: Uuid) -> Result<bool, sqlx::Error> {
    let found = sqlx::query_scalar!(
        r#"update api_keys set revoked_at = coalesce(revoked_at, now())
           where merchant_id = $1 and id = $2 returning id as "id!""#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(found.is_some())
}

/// Whether a merchant with this id exists.
pub async fn merchant_exists(pool: &PgPool, id: MerchantId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from merchants where id = $1) as "exists!""#,
        id.0
    )
    .fetch_one(pool)
    .await
}

/// Sets a merchant's stock strategy; `false` if there is no such merchant.
pub async fn set_stock_strategy(
    conn: &mut sqlx::PgConnection,
    id: MerchantId,
    strategy: Strategy,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "update merchants set stock_strategy = $2 where id = $1",
        id.0,
        strategy.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Sets (or clears, with `None`) the merchant's plan of rate limits; `false`
/// when there is no such merchant.
pub async fn set_rate_limits(
    conn: &mut sqlx::PgConnection,
    id: MerchantId,
    plan: Option<&crate::quotas::Plan>,
) -> Result<bool, sqlx::Error> {
    let plan = plan
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let updated = sqlx::query!(
        "update merchants set rate_limits = $2::text::jsonb where id = $1",
        id.0,
        plan,
    )
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The merchant's stock strategy and plan.
pub async fn merchant_settings(
    pool: &PgPool,
    id: MerchantId,
) -> Result<Option<(Strategy, Option<crate::quotas::Plan>)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select stock_strategy as "stock_strategy: Strategy", rate_limits::text as rate_limits
           from merchants where id = $1"#,
        id.0,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.stock_strategy, parse_plan(r.rate_limits.as_deref()))))
}

/// A stored plan; one that no longer parses limits nothing (and says so).
fn parse_plan(raw: Option<&str>) -> Option<crate::quotas::Plan> {
    let raw = raw?;
    match serde_json::from_str(raw) {
        Ok(plan) => Some(plan),
        Err(err) => {
            tracing::warn!(error = %err, "a stored plan of rate limits does not parse; not limiting");
            None
        }
    }
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

/// What a live key stands for: its merchant's settings and its own access.
pub struct KeyGrant {
    pub strategy: Strategy,
    pub plan: Option<crate::quotas::Plan>,
    pub access: Access,
    pub expires_at: Option<DateTime<Utc>>,
    /// The platform suspended the merchant: the key is refused (403).
    pub suspended: bool,
}

/// What `key` stands for if it is one of its merchant's live, unexpired keys
/// (checked under that merchant's RLS), noting that it was used; `None` for a
/// dead, expired or unknown key.
pub async fn authenticate_key(
    tx: &mut TenantTx,
    key: &ApiKey,
) -> Result<Option<KeyGrant>, sqlx::Error> {
    let row = sqlx::query!(
        r#"update api_keys k set last_used_at = now()
           from merchants m
           where m.id = k.merchant_id and k.merchant_id = $1 and k.key_hash = $2
             and k.revoked_at is null and (k.expires_at is null or k.expires_at > now())
           returning m.stock_strategy as "stock_strategy: Strategy", m.rate_limits::text as rate_limits,
                     k.scopes, k.expires_at, m.status = 'suspended' as "suspended!""#,
        tx.merchant_id().0,
        key.hash(),
    )
    .fetch_optional(tx.conn())
    .await?;
    row.map(|r| {
        Ok(KeyGrant {
            strategy: r.stock_strategy,
            plan: parse_plan(r.rate_limits.as_deref()),
            // A scope this release does not know: refused, not widened.
            access: Access::from_stored(r.scopes).map_err(|e| sqlx::Error::Decode(e.into()))?,
            expires_at: r.expires_at,
            suspended: r.suspended,
        })
    })
    .transpose()
}

/// The transaction merchant's settings, as a person's session works with
/// them: (strategy, plan, suspended); `None`: no such merchant.
pub async fn merchant_grant(
    tx: &mut TenantTx,
) -> Result<Option<(Strategy, Option<crate::quotas::Plan>, bool)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select stock_strategy as "stock_strategy: Strategy", rate_limits::text as rate_limits,
                  status = 'suspended' as "suspended!"
           from merchants where id = $1"#,
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(|r| {
        (
            r.stock_strategy,
            parse_plan(r.rate_limits.as_deref()),
            r.suspended,
        )
    }))
}

/// A merchant as the operators' list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MerchantListed {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    /// Why it was suspended (or reactivated), as the operator said.
    pub status_reason: Option<String>,
    /// The cell serving it (`main` unless moved).
    pub cell: String,
    pub created_at: DateTime<Utc>,
}

/// What the operators' list of merchants is narrowed to.
#[derive(Debug, Default)]
pub struct MerchantFilter<'a> {
    /// A prefix of the slug or name (any case).
    pub q: Option<&'a str>,
    pub status: Option<&'a str>,
    pub cell: Option<&'a str>,
    /// Merchants after this id (the previous page's last).
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// Merchants by id, filtered; the cell is the directory's entry (none: `main`).
pub async fn list_merchants(
    pool: &PgPool,
    f: &MerchantFilter<'_>,
) -> Result<Vec<MerchantListed>, sqlx::Error> {
    sqlx::query_as!(
        MerchantListed,
        r#"select m.id, m.slug, m.name, m.status, m.status_reason,
                  coalesce((select d.cell from mercato_directory_entry(m.id) d), 'main') as "cell!",
                  m.created_at
           from merchants m
           where ($1::text is null or lower(m.slug) like lower($1) || '%' escape '\'
                  or lower(m.name) like lower($1) || '%' escape '\')
             and ($2::text is null or m.status = $2)
             and ($3::text is null or coalesce((select d.cell from mercato_directory_entry(m.id) d), 'main') = $3)
             and ($4::uuid is null or m.id > $4)
           order by m.id
           limit $5"#,
        f.q.map(|q| q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")),
        f.status,
        f.cell,
        f.after,
        f.limit,
    )
    .fetch_all(pool)
    .await
}

/// Suspends or reactivates the transaction's merchant; `false` if no such merchant.
pub async fn set_merchant_status(
    tx: &mut TenantTx,
    suspended: bool,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "update merchants set status = $2, status_reason = $3, status_changed_at = now() where id = $1",
        tx.merchant_id().0,
        if suspended { "suspended" } else { "active" },
        reason,
    )
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The suspended merchants (workers skip them).
pub async fn suspended_merchants(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!("select id from merchants where status = 'suspended'")
        .fetch_all(pool)
        .await
}

/// A merchant's slug and name.
pub async fn merchant_names(
    pool: &PgPool,
    id: uuid::Uuid,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("select slug, name from merchants where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The name of the transaction's merchant.
pub async fn merchant_name(tx: &mut crate::db::TenantTx) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "select name from merchants where id = $1",
        tx.merchant_id().0
    )
    .fetch_optional(tx.conn())
    .await
}
