//! An erased customer's address taken out of the event log (webhook
//! deliveries not yet made send the events as they now are).

use crate::db::TenantTx;

/// Replaces `email` (any case) with `placeholder` in every event payload of
/// the merchant that holds it; how many events changed. A scan of the
/// merchant's events: erasure is rare, and no index finds a string inside
/// a JSON payload.
pub async fn erase_email(
    tx: &mut TenantTx,
    email: &str,
    placeholder: &str,
) -> Result<u64, sqlx::Error> {
    let erased = sqlx::query!(
        r#"update events set payload = regexp_replace(
                payload::text,
                '"' || regexp_replace($2, '([.*+?^${}()|\[\]\\])', '\\\1', 'g') || '"',
                to_json($3::text)::text, 'gi')::jsonb
           where merchant_id = $1 and strpos(lower(payload::text), '"' || lower($2) || '"') > 0"#,
        tx.merchant_id().0,
        email,
        placeholder,
    )
    .execute(tx.conn())
    .await?;
    Ok(erased.rows_affected())
}
