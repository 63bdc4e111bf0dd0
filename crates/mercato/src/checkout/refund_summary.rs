//! An order's refunds as the order shows them (status and amount), and the
//! states a refund goes through. Apart from `refund_store` so that orders
//! (`store`) read them without the refund's own machinery.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{text_enum, TenantTx};

text_enum! {
    /// Where a refund stands. `pending`: recorded (its units no longer refundable),
    /// the provider not yet known to have paid it; a retry with the same key resumes it.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum RefundStatus {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// A refund as an order lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundSummary {
    pub id: Uuid,
    pub status: RefundStatus,
    /// Minor units of the order's currency.
    pub amount: i64,
    pub created_at: DateTime<Utc>,
}

/// The refunds of each of `orders`, oldest first: (order, refund).
pub async fn refund_summaries(
    tx: &mut TenantTx,
    orders: &[Uuid],
) -> Result<Vec<(Uuid, RefundSummary)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select order_id, id, status as "status: RefundStatus", amount, created_at
           from order_refunds where merchant_id = $1 and order_id = any($2) order by id"#,
        tx.merchant_id().0,
        orders,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.order_id,
                RefundSummary {
                    id: r.id,
                    status: r.status,
                    amount: r.amount,
                    created_at: r.created_at,
                },
            )
        })
        .collect())
}
