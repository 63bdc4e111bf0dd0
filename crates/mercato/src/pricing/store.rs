//! Pricing SQL: settings, rule-set revisions, and the usage counters of limited
//! rules. Every function takes a `TenantTx`: RLS scopes it to one merchant.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::anomaly::AlertKind;
use super::model::Counted;
use crate::db::{text_enum, TenantTx};

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

/// What pricing a cart needs to know first, in one round trip: the settings (if
/// ever set), the revision in force (0: none) and the running rollout, if any.
pub struct PricingState {
    pub settings: Option<SettingsRow>,
    pub live_revision: i64,
    pub rollout: Option<RunningRollout>,
}

pub struct RunningRollout {
    pub id: Uuid,
    pub candidate_revision: i64,
    pub candidate_version: String,
    pub stage: Stage,
    pub percent: i32,
}

pub async fn pricing_state(tx: &mut TenantTx) -> Result<PricingState, sqlx::Error> {
    let row = sqlx::query!(
        r#"select s.currency as "currency?", s.calculator_version as "calculator_version?",
                  s.tax::text as "tax?", s.shipping::text as "shipping?",
                  coalesce(s.live_revision,
                           (select max(revision) from pricing_rule_revisions where merchant_id = $1),
                           0) as "live_revision!",
                  r.id as "rollout_id?", r.candidate_revision as "candidate_revision?",
                  r.candidate_version as "candidate_version?", r.stage as "stage?: Stage",
                  r.percent as "percent?"
           from (select $1::uuid as merchant_id) as m
           left join pricing_settings s on s.merchant_id = m.merchant_id
           left join pricing_rollouts r
                  on r.merchant_id = m.merchant_id and r.stage in ('shadow', 'percentage')"#,
        tx.merchant_id().0,
    )
    .fetch_one(tx.conn())
    .await?;
    let settings = match (row.currency, row.calculator_version, row.tax, row.shipping) {
        (Some(currency), Some(calculator_version), Some(tax), Some(shipping)) => {
            Some(SettingsRow {
                currency,
                calculator_version,
                tax,
                shipping,
            })
        }
        _ => None,
    };
    let rollout = match (
        row.rollout_id,
        row.candidate_revision,
        row.candidate_version,
        row.stage,
        row.percent,
    ) {
        (
            Some(id),
            Some(candidate_revision),
            Some(candidate_version),
            Some(stage),
            Some(percent),
        ) => Some(RunningRollout {
            id,
            candidate_revision,
            candidate_version,
            stage,
            percent,
        }),
        _ => None,
    };
    Ok(PricingState {
        settings,
        live_revision: row.live_revision,
        rollout,
    })
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

/// The revision in force: the one the settings name, else the newest; none when
/// the merchant never wrote rules (or put revision 0, no rules, in force).
pub async fn current_revision(tx: &mut TenantTx) -> Result<Option<Revision>, sqlx::Error> {
    sqlx::query_as!(
        Revision,
        r#"select revision, currency, rules::text as "rules!", actor, diff::text as "diff!", created_at
           from pricing_rule_revisions
           where merchant_id = $1
             and revision = coalesce(
                 (select live_revision from pricing_settings where merchant_id = $1),
                 (select max(revision) from pricing_rule_revisions where merchant_id = $1))"#,
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Puts revision `n` in force (0: no rules). The settings row must exist.
pub async fn set_live_revision(tx: &mut TenantTx, n: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update pricing_settings set live_revision = $2, updated_at = now() where merchant_id = $1",
        tx.merchant_id().0,
        n,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Sets the calculator that charges. The settings row must exist.
pub async fn set_calculator_version(tx: &mut TenantTx, version: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update pricing_settings set calculator_version = $2, updated_at = now() where merchant_id = $1",
        tx.merchant_id().0,
        version,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
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
    // Only the counters a limit reads are taken: a rule limited per customer
    // alone does not queue every checkout on its rule-wide row.
    let took_total = max_uses.is_some() || budget.is_some();
    if took_total {
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
    }
    let took_customer = max_customer_uses.is_some();
    if took_customer {
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
        "insert into pricing_order_uses
             (merchant_id, order_id, rule_id, customer_email, amount, took_total, took_customer)
         values ($1, $2, $3, $4, $5, $6, $7)",
        merchant,
        order,
        rule_id,
        email,
        amount,
        took_total,
        took_customer,
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
         returning rule_id, customer_email, amount, took_total, took_customer",
        merchant,
        order,
    )
    .fetch_all(tx.conn())
    .await?;
    for row in &released {
        if row.took_total {
            sqlx::query!(
                "update pricing_rule_usage set uses = uses - 1, spent = spent - $3
                 where merchant_id = $1 and rule_id = $2",
                merchant,
                row.rule_id,
                row.amount,
            )
            .execute(tx.conn())
            .await?;
        }
        if row.took_customer {
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
    }
    Ok(released.len() as u64)
}

text_enum! {
    /// Where a rollout stands. `shadow` and `percentage` are running (at most one
    /// per merchant); `complete` and `rolled_back` are over.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Stage {
        /// The candidate is priced beside the rules in force and never charged.
        Shadow = "shadow",
        /// The candidate is charged to a stable share of customers.
        Percentage = "percentage",
        /// The candidate is in force for everyone.
        Complete = "complete",
        /// Stopped; what was in force before it stays (or is restored) in force.
        RolledBack = "rolled_back",
    }
}

impl Stage {
    pub fn is_running(self) -> bool {
        matches!(self, Stage::Shadow | Stage::Percentage)
    }
}

text_enum! {
    /// Which price an order was charged during a rollout.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Arm {
        /// The rules and calculator in force.
        Live = "live",
        Candidate = "candidate",
    }
}

/// A rollout, as stored and as the API shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Rollout {
    pub id: Uuid,
    /// The revision tried (0: no rules).
    pub candidate_revision: i64,
    /// The calculator tried.
    pub candidate_version: String,
    /// What was in force when it started (rolling back a completed rollout restores it).
    pub previous_revision: i64,
    pub previous_version: String,
    pub stage: Stage,
    /// Share of customers charged the candidate (stage `percentage`; 100 once complete).
    pub percent: i32,
    /// The API key that started it (a fingerprint).
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert_rollout(tx: &mut TenantTx, row: &Rollout) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into pricing_rollouts (merchant_id, id, candidate_revision, candidate_version,
                                       previous_revision, previous_version, stage, percent, actor)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        tx.merchant_id().0,
        row.id,
        row.candidate_revision,
        row.candidate_version,
        row.previous_revision,
        row.previous_version,
        row.stage as Stage,
        row.percent,
        row.actor,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn set_rollout_stage(
    tx: &mut TenantTx,
    id: Uuid,
    stage: Stage,
    percent: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update pricing_rollouts set stage = $3, percent = $4, updated_at = now()
         where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
        stage as Stage,
        percent,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn rollout(tx: &mut TenantTx, id: Uuid) -> Result<Option<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        Rollout,
        r#"select id, candidate_revision, candidate_version, previous_revision, previous_version,
                  stage as "stage: Stage", percent, actor, created_at, updated_at
           from pricing_rollouts where merchant_id = $1 and id = $2"#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// The rollout in shadow or percentage stage, if any.
pub async fn running_rollout(tx: &mut TenantTx) -> Result<Option<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        Rollout,
        r#"select id, candidate_revision, candidate_version, previous_revision, previous_version,
                  stage as "stage: Stage", percent, actor, created_at, updated_at
           from pricing_rollouts
           where merchant_id = $1 and stage in ('shadow', 'percentage')"#,
        tx.merchant_id().0,
    )
    .fetch_optional(tx.conn())
    .await
}

/// The newest rollouts first, at most `limit`.
pub async fn rollouts(tx: &mut TenantTx, limit: i64) -> Result<Vec<Rollout>, sqlx::Error> {
    sqlx::query_as!(
        Rollout,
        r#"select id, candidate_revision, candidate_version, previous_revision, previous_version,
                  stage as "stage: Stage", percent, actor, created_at, updated_at
           from pricing_rollouts where merchant_id = $1
           order by created_at desc, id desc limit $2"#,
        tx.merchant_id().0,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// One order priced during a rollout: both totals and which was charged.
pub struct RolloutOrderRow {
    pub order_id: Uuid,
    pub charged: Arm,
    pub currency: String,
    pub live_total: i64,
    pub candidate_total: Option<i64>,
    pub same_charge: bool,
    pub created_at: DateTime<Utc>,
}

pub async fn insert_rollout_order(
    tx: &mut TenantTx,
    rollout: Uuid,
    row: &RolloutOrderRow,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into pricing_rollout_orders (merchant_id, rollout_id, order_id, charged, currency,
                                             live_total, candidate_total, same_charge)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        tx.merchant_id().0,
        rollout,
        row.order_id,
        row.charged as Arm,
        row.currency,
        row.live_total,
        row.candidate_total,
        row.same_charge,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The orders priced during `rollout`, oldest first, after order `after`.
pub async fn rollout_orders(
    tx: &mut TenantTx,
    rollout: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RolloutOrderRow>, sqlx::Error> {
    sqlx::query_as!(
        RolloutOrderRow,
        r#"select order_id, charged as "charged: Arm", currency, live_total, candidate_total,
                  same_charge, created_at
           from pricing_rollout_orders
           where merchant_id = $1 and rollout_id = $2 and ($3::uuid is null or order_id > $3)
           order by order_id limit $4"#,
        tx.merchant_id().0,
        rollout,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// What a rollout's orders show so far.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RolloutSummary {
    /// Orders priced while it ran.
    pub orders: i64,
    /// Orders the candidate would have charged differently (any line, shipping or tax).
    pub different: i64,
    /// Orders charged the candidate's price.
    pub charged_candidate: i64,
    /// Orders the candidate could not price (charged the live price).
    pub candidate_failed: i64,
    /// Σ (candidate total − live total), minor units, over the orders the
    /// candidate priced: positive when the candidate charges more.
    pub delta_sum: i64,
    pub delta_min: Option<i64>,
    pub delta_max: Option<i64>,
}

pub async fn rollout_tally(
    tx: &mut TenantTx,
    rollout: Uuid,
) -> Result<RolloutSummary, sqlx::Error> {
    sqlx::query_as!(
        RolloutSummary,
        r#"select count(*) as "orders!",
                  count(*) filter (where not same_charge) as "different!",
                  count(*) filter (where charged = 'candidate') as "charged_candidate!",
                  count(*) filter (where candidate_total is null) as "candidate_failed!",
                  coalesce(sum(candidate_total - live_total), 0)::bigint as "delta_sum!",
                  min(candidate_total - live_total) as delta_min,
                  max(candidate_total - live_total) as delta_max
           from pricing_rollout_orders where merchant_id = $1 and rollout_id = $2"#,
        tx.merchant_id().0,
        rollout,
    )
    .fetch_one(tx.conn())
    .await
}

/// A stored anomaly alert.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: Uuid,
    pub kind: AlertKind,
    pub currency: String,
    /// The period judged (`window_start` to `window_end`) and the baseline it was
    /// judged against (`baseline_start` to `window_start`).
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub baseline_start: DateTime<Utc>,
    /// Average order value (minor units) or discount rate (basis points) in the window.
    pub observed: i64,
    /// The same measure over the baseline.
    pub expected: i64,
    pub window_orders: i64,
    pub baseline_orders: i64,
    pub created_at: DateTime<Utc>,
}

/// Stores an alert unless one of the same kind and currency was raised since
/// `quiet_since` (a check every minute raises one alert per incident, not one a minute).
pub async fn insert_alert(
    tx: &mut TenantTx,
    row: &Alert,
    quiet_since: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query_scalar!(
        r#"insert into pricing_alerts (merchant_id, id, kind, currency, window_start, window_end,
                                     baseline_start, observed, expected, window_orders, baseline_orders)
           select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
           where not exists (
               select 1 from pricing_alerts
               where merchant_id = $1 and kind = $3 and currency = $4 and created_at >= $12)
           returning 1 as "inserted!""#,
        tx.merchant_id().0,
        row.id,
        row.kind as AlertKind,
        row.currency,
        row.window_start,
        row.window_end,
        row.baseline_start,
        row.observed,
        row.expected,
        row.window_orders,
        row.baseline_orders,
        quiet_since,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(inserted.is_some())
}

/// Alerts, newest first, at most `limit`.
pub async fn alerts(tx: &mut TenantTx, limit: i64) -> Result<Vec<Alert>, sqlx::Error> {
    sqlx::query_as!(
        Alert,
        r#"select id, kind as "kind: AlertKind", currency, window_start, window_end, baseline_start,
                  observed, expected, window_orders, baseline_orders, created_at
           from pricing_alerts where merchant_id = $1
           order by created_at desc, id desc limit $2"#,
        tx.merchant_id().0,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}
