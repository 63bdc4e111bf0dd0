//! The mail outbox's SQL.

use uuid::Uuid;

use super::OutgoingMail;
use crate::db::{text_enum, TenantTx};

text_enum! {
    /// Where a message stands.
    pub enum MailStatus {
        Queued = "queued",
        /// Handed to the transport; a crash here leaves it `unknown`.
        Sending = "sending",
        Sent = "sent",
        /// Perhaps sent: its sender died during the exchange. Never sent again.
        Unknown = "unknown",
        Failed = "failed",
    }
}

pub async fn insert(tx: &mut TenantTx, mail: &OutgoingMail) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let inserted = sqlx::query_scalar!(
        r#"insert into mail_outbox (merchant_id, idempotency_key, id, to_address, subject, text_body, html_body,
                                    from_address)
           values ($1, $2, $3, $4, $5, $6, $7, $8)
           on conflict (merchant_id, idempotency_key) do nothing
           returning 1 as "inserted!""#,
        merchant,
        mail.key,
        Uuid::now_v7(),
        mail.to,
        mail.subject,
        mail.text,
        mail.html,
        mail.from,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(inserted.is_some())
}

pub struct Claimed {
    pub id: Uuid,
    /// `None`: the transport's sender.
    pub from: Option<String>,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Marks up to `limit` queued messages `sending` and returns them.
pub async fn claim(tx: &mut TenantTx, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        Claimed,
        // Materialised, so the locking subquery runs once: rescanned as a join's
        // inner side, SKIP LOCKED could hand out other rows each time, and more
        // than `limit` would be claimed (seen with two senders at once).
        r#"with due as materialized (
               select idempotency_key from mail_outbox
               where merchant_id = $1 and status = 'queued'
               order by created_at limit $2
               for update skip locked)
           update mail_outbox m set status = 'sending', attempts = attempts + 1, claimed_at = now()
           from due
           where m.merchant_id = $1 and m.idempotency_key = due.idempotency_key
           returning m.id, m.from_address as "from", m.to_address as "to", m.subject, m.text_body as "text", m.html_body as "html""#,
        merchant,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

pub async fn mark_sent(tx: &mut TenantTx, id: Uuid) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update mail_outbox set status = 'sent', last_error = null, sent_at = now()
         where merchant_id = $1 and id = $2",
        merchant,
        id,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

/// A message the transport refused: queued again, or `failed` after `max` attempts.
pub async fn retry_or_fail(
    tx: &mut TenantTx,
    id: Uuid,
    error: &str,
    max: i32,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update mail_outbox set last_error = $3,
                status = case when attempts >= $4 then 'failed' else 'queued' end
         where merchant_id = $1 and id = $2",
        merchant,
        id,
        error,
        max,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

pub async fn mark_interrupted(tx: &mut TenantTx) -> Result<u64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update mail_outbox set status = 'unknown', last_error = 'the sender stopped during the exchange'
         where merchant_id = $1 and status = 'sending' and claimed_at < now() - interval '1 minute'",
        merchant,
    )
    .execute(tx.conn())
    .await
    .map(|r| r.rows_affected())
}

pub async fn counts(
    tx: &mut TenantTx,
    prefix: &str,
) -> Result<Vec<(MailStatus, i64)>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let rows = sqlx::query!(
        r#"select status as "status: MailStatus", count(*) as "n!" from mail_outbox
           where merchant_id = $1 and starts_with(idempotency_key, $2)
           group by status order by status"#,
        merchant,
        prefix,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
}

/// Merchants with queued messages (the worker role reads across tenants).
pub async fn merchants_with_queued_mail(worker: &sqlx::PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    // A skip scan of mail_outbox_queued_by_merchant: one index probe per
    // merchant, however many messages each has queued.
    sqlx::query_scalar!(
        r#"with recursive queued (merchant_id) as (
               (select merchant_id from mail_outbox where status = 'queued'
                order by merchant_id limit 1)
               union all
               select (select m.merchant_id from mail_outbox m
                       where m.status = 'queued' and m.merchant_id > queued.merchant_id
                       order by m.merchant_id limit 1)
               from queued where queued.merchant_id is not null
           )
           select merchant_id as "merchant_id!" from queued where merchant_id is not null limit 1000"#
    )
    .fetch_all(worker)
    .await
}

/// A message as a customer's data export lists it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct MailRecord {
    pub id: Uuid,
    pub subject: String,
    pub status: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn messages_to(
    tx: &mut TenantTx,
    email_key: &str,
) -> Result<Vec<MailRecord>, sqlx::Error> {
    sqlx::query_as!(
        MailRecord,
        "select id, subject, status, created_at, sent_at from mail_outbox
         where merchant_id = $1 and lower(to_address) = $2 order by created_at, id",
        tx.merchant_id().0,
        email_key,
    )
    .fetch_all(tx.conn())
    .await
}

/// Replaces the address, subject and bodies of every message to `email_key`;
/// one still queued is never sent (failed, "recipient erased").
pub async fn erase_recipient(
    tx: &mut TenantTx,
    email_key: &str,
    placeholder: &str,
) -> Result<u64, sqlx::Error> {
    let erased = sqlx::query!(
        "update mail_outbox set
             to_address = $3, subject = '[erased]', text_body = '[erased]', html_body = '[erased]',
             status = case when status = 'queued' then 'failed' else status end,
             last_error = case when status = 'queued' then 'recipient erased' else last_error end
         where merchant_id = $1 and lower(to_address) = $2",
        tx.merchant_id().0,
        email_key,
        placeholder,
    )
    .execute(tx.conn())
    .await?;
    Ok(erased.rows_affected())
}

/// Who a merchant's mail is from, as the merchant set it.
pub async fn settings(tx: &mut TenantTx) -> Result<(Option<String>, Option<String>), sqlx::Error> {
    let row = sqlx::query!(
        "select from_name, from_address from mail_settings where merchant_id = $1",
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map_or((None, None), |r| (r.from_name, r.from_address)))
}

pub async fn put_settings(
    tx: &mut TenantTx,
    from_name: Option<&str>,
    from_address: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into mail_settings (merchant_id, from_name, from_address) values ($1, $2, $3)
         on conflict (merchant_id) do update
             set from_name = excluded.from_name, from_address = excluded.from_address, updated_at = now()",
        tx.merchant_id().0,
        from_name,
        from_address,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}
