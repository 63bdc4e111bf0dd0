//! A customer's data: all of it exported, or their personal data erased
//! everywhere Mercato holds it (customers, orders, remediation adjustments,
//! the wallet's key, mail, the event log), money, quantities and ids kept so
//! the books still balance. A process across contexts, each asked through its
//! own functions; it owns no table (checkout links orders to customers, so
//! the customers context cannot be the one that calls checkout).

pub mod http;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::catalog::Money;
use crate::checkout::Order;
use crate::customers::{self, email_key, Customer};
use crate::db::TenantTx;
use crate::events::EventType;
use crate::mail::MailRecord;
use crate::remediation::privacy::AdjustmentRecord;
use crate::wallet::WalletEntry;

/// Everything Mercato holds about one customer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerExport {
    pub customer: Customer,
    /// Newest first, at most 10,000.
    pub orders: Vec<Order>,
    pub wallet_balance: Option<Money>,
    /// Newest first.
    pub wallet_entries: Vec<WalletEntry>,
    pub adjustments: Vec<AdjustmentRecord>,
    /// Messages sent or queued to their address (subjects; bodies are the
    /// templates' with their order's figures).
    pub mail: Vec<MailRecord>,
}

pub async fn export(tx: &mut TenantTx, id: Uuid) -> Result<Option<CustomerExport>, sqlx::Error> {
    let Some(customer) = customers::find(tx, id).await? else {
        return Ok(None);
    };
    let key = email_key(&customer.email);
    let orders = crate::checkout::privacy::orders_of_customer(tx, id, &key).await?;
    let wallet_balance = crate::wallet::balance(tx, &customer.email)
        .await?
        .map(|(amount, currency)| Money { amount, currency });
    let wallet_entries = crate::wallet::full_ledger(tx, &customer.email).await?;
    let adjustments = crate::remediation::privacy::adjustments_of(tx, id, &key).await?;
    let mail = crate::mail::messages_to(tx, &key).await?;
    Ok(Some(CustomerExport {
        customer,
        orders,
        wallet_balance,
        wallet_entries,
        adjustments,
        mail,
    }))
}

/// The address an erased customer is left with: unique, and undeliverable
/// (`.invalid` is reserved, RFC 2606).
pub fn placeholder(id: Uuid) -> String {
    format!("erased-{}@erased.invalid", id.simple())
}

/// Erases the customer's personal data in one transaction; `None` when there
/// is no such customer. Erasing again changes nothing more.
pub async fn erase(tx: &mut TenantTx, id: Uuid) -> Result<Option<Customer>, sqlx::Error> {
    let placeholder = placeholder(id);
    let Some((customer, before)) = customers::erase(tx, id, &placeholder).await? else {
        return Ok(None);
    };
    if before == placeholder {
        return Ok(Some(customer));
    }
    let key = email_key(&before);
    crate::checkout::privacy::erase_customer(tx, id, &key, &placeholder).await?;
    crate::remediation::privacy::erase_customer(tx, id, &key, &placeholder).await?;
    crate::wallet::rekey(tx, &before, &placeholder).await?;
    crate::mail::erase_recipient(tx, &key, &placeholder).await?;
    crate::events::privacy::erase_email(tx, &before, &placeholder).await?;
    crate::events::emit(
        tx,
        EventType::CustomerErased,
        serde_json::json!({"customer_id": id}),
    )
    .await?;
    Ok(Some(customer))
}
