//! Store credit: a customer's wallet balance (per merchant, by e-mail), given
//! by remediation and spent by checkout before the card.
//!
//! Owns tables `wallets` and `wallet_entries`. Every movement is an entry with
//! an idempotency key, so a credit or a spend applies once however often it is
//! retried; the balance never goes below zero (a CHECK, and spends take at
//! most what is there under the row lock).

mod store;

pub use store::WalletEntry;

use uuid::Uuid;

use crate::db::TenantTx;

/// Customers are keyed by e-mail, case-insensitively (as pricing counts them).
fn customer_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Credits `amount` (> 0) to the customer once per `key`; `false` when that key
/// was credited before (nothing changes).
pub async fn credit(
    tx: &mut TenantTx,
    email: &str,
    amount: i64,
    currency: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let customer = customer_key(email);
    store::ensure_wallet(tx, &customer, currency).await?;
    if !store::insert_entry(tx, &customer, amount, key, None, None).await? {
        return Ok(false);
    }
    store::add(tx, &customer, amount).await?;
    Ok(true)
}

/// The customer's balance and its currency, if they have a wallet.
pub async fn balance(tx: &mut TenantTx, email: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
    store::balance(tx, &customer_key(email)).await
}

/// Takes up to `up_to` of the customer's balance in `currency` for `order`;
/// returns what was taken (0 without a wallet). Concurrent spends of one wallet
/// queue on its row, so together they never take more than it holds.
pub async fn spend(
    tx: &mut TenantTx,
    email: &str,
    currency: &str,
    up_to: i64,
    order: Uuid,
) -> Result<i64, sqlx::Error> {
    if up_to <= 0 {
        return Ok(0);
    }
    let customer = customer_key(email);
    let taken = store::take(tx, &customer, currency, up_to).await?;
    if taken > 0 {
        let key = format!("order_{}_spend", order.simple());
        store::insert_entry(tx, &customer, -taken, &key, Some(order), None).await?;
    }
    Ok(taken)
}

/// Gives back what `order` spent (its checkout failed), once.
pub async fn give_back(tx: &mut TenantTx, email: &str, order: Uuid) -> Result<i64, sqlx::Error> {
    let customer = customer_key(email);
    let spent = store::spent_by(tx, order).await?;
    if spent <= 0 {
        return Ok(0);
    }
    let key = format!("order_{}_give_back", order.simple());
    if !store::insert_entry(tx, &customer, spent, &key, Some(order), None).await? {
        return Ok(0);
    }
    store::add(tx, &customer, spent).await?;
    Ok(spent)
}

/// What a merchant's credit to a customer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    Credited,
    /// `key` was credited before: nothing changed.
    AlreadyGiven,
    /// The wallet holds another currency (named): nothing changed.
    OtherCurrency(String),
}

/// Credits `amount` (> 0) of `currency` to the customer by hand, once per
/// `key`, with the reason in the ledger. A wallet holds one currency, the
/// first credit's.
pub async fn grant(
    tx: &mut TenantTx,
    email: &str,
    amount: i64,
    currency: &str,
    key: &str,
    reason: &str,
) -> Result<Grant, sqlx::Error> {
    let customer = customer_key(email);
    store::ensure_wallet(tx, &customer, currency).await?;
    match store::lock_currency(tx, &customer).await? {
        Some(held) if held != currency => return Ok(Grant::OtherCurrency(held)),
        _ => {}
    }
    if !store::insert_entry(tx, &customer, amount, key, None, Some(reason)).await? {
        return Ok(Grant::AlreadyGiven);
    }
    store::add(tx, &customer, amount).await?;
    Ok(Grant::Credited)
}

/// The customer's latest `limit` wallet entries, newest first.
pub async fn ledger(
    tx: &mut TenantTx,
    email: &str,
    limit: i64,
) -> Result<Vec<WalletEntry>, sqlx::Error> {
    store::entries(tx, &customer_key(email), limit).await
}

/// Every entry of the customer's wallet, newest first (for their data export).
pub async fn full_ledger(tx: &mut TenantTx, email: &str) -> Result<Vec<WalletEntry>, sqlx::Error> {
    store::entries(tx, &customer_key(email), i64::MAX).await
}

/// The wallet of `email` now belongs to `placeholder` (the customer's address
/// was erased; the balance and its ledger stay, so the books still balance).
pub async fn rekey(tx: &mut TenantTx, email: &str, placeholder: &str) -> Result<(), sqlx::Error> {
    store::rekey(tx, &customer_key(email), &customer_key(placeholder)).await
}
