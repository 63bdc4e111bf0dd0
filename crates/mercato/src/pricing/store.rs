//! Pricing SQL: settings, rule-set revisions, and the usage counters of limited
//! rules. Every function takes a `TenantTx`: RLS scopes it to one merchant.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::Counted;
use crate::db::TenantTx;

/// A settings row, as stored (JSON columns as text; the caller parses).
pub struct SettingsRow {
    pub currency: String,
    pub calculator_version: String,
    pub tax: String,
    pub shipping: String,
}

pub async fn settings(tx: &mut TenantTx) -> Result<Option<SettingsRow>, sqlx::Error> {
    sqlx::query_as!(
        SettingsRow,
        r#"select currency, calculator_version, tax::text as "tax!", shipping::text as "shipping!"
           from pricing_settings where merchant_id = $1"#,
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await
}

pub async fn put_settings(tx: &mut TenantTx, row: &SettingsRow) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into pricing_settings (merchant_id, currency, calculator_version, tax, shipping)
         values ($1, $2, $3, $4::text::jsonb, $5::text::jsonb)
         on conflict (merchant_id) do update
            set currency = excluded.currency, calculator_version = excluded.calculator_version,
                tax = excluded.tax, shipping = excluded.shipping, updated_at = now()",
        tx.merchant_id().0,
        row.currency,
        row.calculator_version,
        row.tax,
        row.shipping,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A stored rule-set revision (its rules as the DSL's JSON text).
pub struct Revision {
    pub revision: i64,
    pub currency: String,
    pub rules: String,
    pub actor: String,
    pub diff: String,
    pub created_at: DateTime<Utc>,
}

/// The newest revision, if the merchant ever wrote rules.
pub async fn current_revision(tx: &mut TenantTx) -> Result<Option<Revision>, sqlx::Error> {
    sqlx::query_as!(
        Revision,
        r#"select revision, currency, rules::text as "rules!", actor, diff::text as "diff!", created_at
           from pricing_rule_revisions where merchant_id = $1
           order by revision desc limit 1"#,
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await
}

pub async fn revision(tx: &mut TenantTx, n: i64) -> Result<Option<Revision>, sqlx::Error> {
    sqlx::query_as!(
        Revision,
        r#"select revision, currency, rules::text as "rules!", actor, diff::text as "diff!", created_at
           from pricing_rule_revisions where merchant_id = $1 and revision = $2"#,
        tx.merchant_id().0,
        n,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Revisions, newest first, at most `limit`, older than `before` when given.
pub async fn revisions(
    tx: &mut TenantTx,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Revision>, sqlx::Error> {
    sqlx::query_as!(
        Revision,
        r#"select revision, currency, rules::text as "rules!", actor, diff::text as "diff!", created_at
           from pricing_rule_revisions
           where merchant_id = $1 and ($2::bigint is null or revision < $2)
           order by revision desc limit $3"#,
        tx.merchant_id().0,
        before,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// Holds the merchant's rule-set lock until the transaction ends, so revisions
/// are numbered one after another and each diff is against its true predecessor.
pub async fn lock_rules(tx: &mut TenantTx) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        r#"select 1 as "locked!" from (
               select pg_advisory_xact_lock(hashtextextended('pricing_rules:' || $1::text, 0))
           ) as held"#,
        tx.merchant_id().0.to_string(),
    )
    .fetch_one(tx.conn())
    .await?;
    Ok(())
}

pub async fn insert_revision(
    tx: &mut TenantTx,
    currency: &str,
    rules: &str,
    actor: &str,
    diff: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"insert into pricing_rule_revisions (merchant_id, revision, currency, rules, actor, diff)
           select $1, coalesce(max(revision), 0) + 1, $2, $3::text::jsonb, $4, $5::text::jsonb
           from pricing_rule_revisions where merchant_id = $1
           returning revision"#,
        tx.merchant_id().0,
        currency,
        rules,
        actor,
        diff,
    )
    .fetch_one(tx.conn())
    .await
}

/// The counters of `rule_ids`, with `email`'s own uses of each.
pub async fn counted(
    tx: &mut TenantTx,
    rule_ids: &[String],
    email: Option<&str>,
) -> Result<BTreeMap<String, Counted>, sqlx::Error> {
    let mut counted: BTreeMap<String, Counted> = BTreeMap::new();
    if rule_ids.is_empty() {
        return Ok(counted);
    }
    let rows = sqlx::query!(
        "select rule_id, uses, spent from pricing_rule_usage
         where merchant_id = $1 and rule_id = any($2)",
        tx.merchant_id().0,
        rule_ids,
    )
    .fetch_all(tx.conn())
    .await?;
    for row in rows {
        let entry = counted.entry(row.rule_id).or_default();
        entry.uses = row.uses;
        entry.spent = row.spent;
    }
    if let Some(email) = email {
        let rows = sqlx::query!(
            "select rule_id, uses from pricing_customer_usage
             where merchant_id = $1 and rule_id = any($2) and customer_email = $3",
            tx.merchant_id().0,
            rule_ids,
            email,
        )
        .fetch_all(tx.conn())
        .await?;
        for row in rows {
            counted.entry(row.rule_id).or_default().customer_uses = row.uses;
        }
    }
    Ok(counted)
}

/// Takes one use (and `amount` of budget) of a limited rule for an order, if its
/// limits allow; `false` when another checkout took the last of it first. The
/// conditional upsert holds the counter's row lock until commit, so concurrent
/// checkouts never take more than the limit together.
#[allow(clippy::too_many_arguments)]
pub async fn take_use(
    tx: &mut TenantTx,
    order: Uuid,
    rule_id: &str,
    email: &str,
    amount: i64,
    max_uses: Option<i64>,
    max_customer_uses: Option<i64>,
    budget: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let taken = sqlx::query_scalar!(
        r#"insert into pricing_rule_usage as u (merchant_id, rule_id, uses, spent)
           select $1, $2, 1, $3
           where ($4::bigint is null or 1 <= $4) and ($5::bigint is null or $3 <= $5)
           on conflict (merchant_id, rule_id) do update
              set uses = u.uses + 1, spent = u.spent + $3
            where ($4::bigint is null or u.uses < $4) and ($5::bigint is null or u.spent + $3 <= $5)
           returning 1 as "taken!""#,
        merchant,
        rule_id,
        amount,
        max_uses,
        budget,
    )
    .fetch_optional(tx.conn())
    .await?;
    if taken.is_none() {
        return Ok(false);
    }
    if max_customer_uses.is_some() {
        let taken = sqlx::query_scalar!(
            r#"insert into pricing_customer_usage as c (merchant_id, rule_id, customer_email, uses)
               select $1, $2, $3, 1 where $4::bigint >= 1
               on conflict (merchant_id, rule_id, customer_email) do update
                  set uses = c.uses + 1 where c.uses < $4
               returning 1 as "taken!""#,
            merchant,
            rule_id,
            email,
            max_customer_uses,
        )
        .fetch_optional(tx.conn())
        .await?;
        if taken.is_none() {
            return Ok(false);
        }
    }
    sqlx::query!(
        "insert into pricing_order_uses (merchant_id, order_id, rule_id, customer_email, amount)
         values ($1, $2, $3, $4, $5)",
        merchant,
        order,
        rule_id,
        email,
        amount,
    )
    .execute(tx.conn())
    .await?;
    Ok(true)
}

/// Gives back what an order took from limited rules, once: a second call (a
/// retried compensation) finds nothing left to release.
pub async fn release_uses(tx: &mut TenantTx, order: Uuid) -> Result<u64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let released = sqlx::query!(
        "update pricing_order_uses set released_at = now()
         where merchant_id = $1 and order_id = $2 and released_at is null
         returning rule_id, customer_email, amount",
        merchant,
        order,
    )
    .fetch_all(tx.conn())
    .await?;
    for row in &released {
        sqlx::query!(
            "update pricing_rule_usage set uses = uses - 1, spent = spent - $3
             where merchant_id = $1 and rule_id = $2",
            merchant,
            row.rule_id,
            row.amount,
        )
        .execute(tx.conn())
        .await?;
        sqlx::query!(
            "update pricing_customer_usage set uses = uses - 1
             where merchant_id = $1 and rule_id = $2 and customer_email = $3 and uses > 0",
            merchant,
            row.rule_id,
            row.customer_email,
        )
        .execute(tx.conn())
        .await?;
    }
    Ok(released.len() as u64)
}
