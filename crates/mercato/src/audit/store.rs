//! The trail's SQL (its records are written by migration 0034's triggers).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::{AuditFilter, AuditRecord};
use crate::db::{ActorKind, TenantTx};
use crate::pagination::Page;

struct Row {
    id: Uuid,
    at: DateTime<Utc>,
    action: String,
    actor_kind: ActorKind,
    actor: String,
    target_type: String,
    target_id: String,
    operation: String,
    changes: String,
    address: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
}

/// The merchant's records matching `filter`, newest first; a page continues
/// below its cursor (the id of the last record of the page before).
pub async fn list(
    tx: &mut TenantTx,
    filter: &AuditFilter,
    page: Page,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Row,
        r#"select id, at, action, actor_kind as "actor_kind: ActorKind", actor, target_type, target_id,
                  operation, changes::text as "changes!", address, user_agent, request_id
           from audit_log
           where merchant_id = $1
             and ($2::uuid is null or id < $2)
             and ($3::text is null or actor = $3)
             and ($4::text is null or action = $4)
             and ($5::text is null or target_type = $5)
             and ($6::text is null or target_id = $6)
             and ($7::timestamptz is null or at >= $7)
             and ($8::timestamptz is null or at < $8)
           order by id desc
           limit $9"#,
        tx.merchant_id().0,
        page.after,
        filter.actor,
        filter.action,
        filter.target_type,
        filter.target_id,
        filter.from,
        filter.to,
        page.fetch_limit(),
    )
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(AuditRecord {
                changes: serde_json::from_str(&r.changes)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                id: r.id,
                at: r.at,
                action: r.action,
                actor_kind: r.actor_kind,
                actor: r.actor,
                target_type: r.target_type,
                target_id: r.target_id,
                operation: r.operation,
                address: r.address,
                user_agent: r.user_agent,
                request_id: r.request_id,
            })
        })
        .collect()
}
