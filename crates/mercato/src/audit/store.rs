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

/// A record as the analytics export takes it: no address or user agent
/// (personal data stays in the trail, not in the marts).
#[derive(Debug, Clone)]
pub struct ExportedRecord {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub action: String,
    pub actor_kind: String,
    pub actor: String,
    pub target_type: String,
    pub target_id: String,
    pub operation: String,
    pub changes: String,
    pub request_id: Option<String>,
    /// The commit position (`xid8` as text); `None` for records from
    /// before the export.
    pub position: Option<String>,
}

/// Records committed at positions in `[from, to)`, after `cursor` (the
/// last one's position, merchant and id), in that order.
pub async fn committed_between(
    pool: &sqlx::PgPool,
    (from, to): (u64, u64),
    cursor: Option<&(String, Uuid, Uuid)>,
    limit: i64,
) -> Result<Vec<ExportedRecord>, sqlx::Error> {
    sqlx::query_as!(
        ExportedRecord,
        r#"select merchant_id, id, at, action, actor_kind, actor, target_type, target_id, operation,
                  changes::text as "changes!", request_id, xid::text as position
           from audit_log a
           where a.xid > '0'::xid8 and a.xid >= $1::text::xid8 and a.xid < $2::text::xid8
             and ($3::text is null or (a.xid, a.merchant_id, a.id) > ($3::text::xid8, $4, $5))
           order by a.xid, a.merchant_id, a.id limit $6"#,
        from.to_string(),
        to.to_string(),
        cursor.map(|c| c.0.clone()),
        cursor.map(|c| c.1),
        cursor.map(|c| c.2),
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Records from before the export (no position), after `cursor`, by key.
pub async fn unpositioned(
    pool: &sqlx::PgPool,
    cursor: Option<(Uuid, Uuid)>,
    limit: i64,
) -> Result<Vec<ExportedRecord>, sqlx::Error> {
    sqlx::query_as!(
        ExportedRecord,
        r#"select merchant_id, id, at, action, actor_kind, actor, target_type, target_id, operation,
                  changes::text as "changes!", request_id, xid::text as position
           from audit_log
           where xid is null and ($1::uuid is null or (merchant_id, id) > ($1, $2))
           order by merchant_id, id limit $3"#,
        cursor.map(|c| c.0),
        cursor.map(|c| c.1),
        limit,
    )
    .fetch_all(pool)
    .await
}
