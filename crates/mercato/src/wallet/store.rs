//! Wallets' SQL.

use uuid::Uuid;

use crate::db::TenantTx;

pub async fn ensure_wallet(
    tx: &mut TenantTx,
    customer: &str,
    currency: &str,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into wallets (merchant_id, customer_key, currency, balance) values ($1, $2, $3, 0)
         on conflict (merchant_id, customer_key) do nothing",
        merchant,
        customer,
        currency,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

/// `false` when an entry under `key` exists already.
pub async fn insert_entry(
    tx: &mut TenantTx,
    customer: &str,
    amount: i64,
    key: &str,
    order: Option<Uuid>,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let inserted = sqlx::query_scalar!(
        r#"insert into wallet_entries (merchant_id, id, customer_key, amount, idempotency_key, order_id, reason)
           values ($1, $2, $3, $4, $5, $6, $7)
           on conflict (merchant_id, idempotency_key) do nothing
           returning 1 as "inserted!""#,
        merchant,
        Uuid::now_v7(),
        customer,
        amount,
        key,
        order,
        reason,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(inserted.is_some())
}

pub async fn add(tx: &mut TenantTx, customer: &str, amount: i64) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update wallets set balance = balance + $3, updated_at = now()
         where merchant_id = $1 and customer_key = $2",
        merchant,
        customer,
        amount,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

pub async fn balance(
    tx: &mut TenantTx,
    customer: &str,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let row = sqlx::query!(
        "select balance, currency from wallets where merchant_id = $1 and customer_key = $2",
        merchant,
        customer,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(|r| (r.balance, r.currency)))
}

/// Takes `least(balance, up_to)` under the row lock; 0 without a wallet in `currency`.
pub async fn take(
    tx: &mut TenantTx,
    customer: &str,
    currency: &str,
    up_to: i64,
) -> Result<i64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let taken = sqlx::query_scalar!(
        r#"with w as (select balance from wallets
                      where merchant_id = $1 and customer_key = $2 and currency = $3 and balance > 0
                      for update)
           update wallets set balance = wallets.balance - least(w.balance, $4), updated_at = now()
           from w
           where wallets.merchant_id = $1 and wallets.customer_key = $2
           returning least(w.balance, $4) as "taken!""#,
        merchant,
        customer,
        currency,
        up_to,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(taken.unwrap_or(0))
}

/// What `order` took from its wallet (a positive number; 0 if nothing).
pub async fn spent_by(tx: &mut TenantTx, order: Uuid) -> Result<i64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        r#"select coalesce(-sum(amount) filter (where amount < 0), 0)::bigint as "spent!"
           from wallet_entries where merchant_id = $1 and order_id = $2"#,
        merchant,
        order,
    )
    .fetch_one(tx.conn())
    .await
}

/// The wallet's currency, its row locked (credits to one wallet queue).
pub async fn lock_currency(
    tx: &mut TenantTx,
    customer: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "select currency from wallets where merchant_id = $1 and customer_key = $2 for update",
        tx.merchant_id().0,
        customer,
    )
    .fetch_optional(tx.conn())
    .await
}

/// One movement of a wallet, as its ledger shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WalletEntry {
    pub id: Uuid,
    /// Positive: credit given; negative: spent by an order.
    pub amount: i64,
    pub reason: Option<String>,
    pub order_id: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The wallet's latest `limit` entries, newest first.
pub async fn entries(
    tx: &mut TenantTx,
    customer: &str,
    limit: i64,
) -> Result<Vec<WalletEntry>, sqlx::Error> {
    sqlx::query_as!(
        WalletEntry,
        "select id, amount, reason, order_id, created_at from wallet_entries
         where merchant_id = $1 and customer_key = $2 order by created_at desc, id desc limit $3",
        tx.merchant_id().0,
        customer,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// Moves the wallet and its ledger to another customer key (the entries
/// point at their wallet: the new row first, the old one last).
pub async fn rekey(tx: &mut TenantTx, from: &str, to: &str) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into wallets (merchant_id, customer_key, currency, balance, updated_at)
         select merchant_id, $3, currency, balance, now() from wallets
         where merchant_id = $1 and customer_key = $2",
        merchant,
        from,
        to,
    )
    .execute(tx.conn())
    .await?;
    sqlx::query!(
        "update wallet_entries set customer_key = $3 where merchant_id = $1 and customer_key = $2",
        merchant,
        from,
        to,
    )
    .execute(tx.conn())
    .await?;
    sqlx::query!(
        "delete from wallets where merchant_id = $1 and customer_key = $2",
        merchant,
        from,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}
