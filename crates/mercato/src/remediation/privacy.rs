//! A customer's remediation adjustments for their data export, and their
//! address erased from them (amounts, states and ids stay).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::TenantTx;

/// An adjustment as a customer's export shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdjustmentRecord {
    pub id: Uuid,
    pub incident_id: Uuid,
    pub order_id: Uuid,
    /// Expected minus charged, in minor units.
    pub delta: i64,
    pub currency: String,
    pub class: String,
    pub state: String,
    pub choice: Option<String>,
    pub updated_at: DateTime<Utc>,
}

pub async fn adjustments_of(
    tx: &mut TenantTx,
    customer: Uuid,
    email_key: &str,
) -> Result<Vec<AdjustmentRecord>, sqlx::Error> {
    sqlx::query_as!(
        AdjustmentRecord,
        "select id, incident_id, order_id, delta, currency, class, state, choice, updated_at
         from order_adjustments
         where merchant_id = $1 and (customer_id = $2 or lower(customer_email) = $3)
         order by id",
        tx.merchant_id().0,
        customer,
        email_key,
    )
    .fetch_all(tx.conn())
    .await
}

pub async fn erase_customer(
    tx: &mut TenantTx,
    customer: Uuid,
    email_key: &str,
    placeholder: &str,
) -> Result<u64, sqlx::Error> {
    let erased = sqlx::query!(
        "update order_adjustments set customer_email = $4, customer_id = $2, updated_at = now()
         where merchant_id = $1 and (customer_id = $2 or lower(customer_email) = $3)",
        tx.merchant_id().0,
        customer,
        email_key,
        placeholder,
    )
    .execute(tx.conn())
    .await?;
    Ok(erased.rows_affected())
}
