//! Remediation's SQL: incidents, adjustments and the effects log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{Choice, Class, State};
use crate::db::TenantTx;
use crate::payments::MethodStatus;

pub struct IncidentRow {
    pub id: Uuid,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub bad_version: String,
    pub fixed_version: String,
    pub scan_after_at: Option<DateTime<Utc>>,
    pub scan_after_id: Option<Uuid>,
    pub scanned: i64,
    pub skipped: i64,
    pub scan_finished_at: Option<DateTime<Utc>>,
    pub reported_scan: Option<DateTime<Utc>>,
    pub link_secret: Vec<u8>,
}

impl IncidentRow {
    /// Whether the report of the finished scan has been produced (settle's condition).
    pub fn reported(&self) -> bool {
        self.scan_finished_at.is_some() && self.reported_scan == self.scan_finished_at
    }
}

/// Serialises the opening of incidents of one merchant (the overlap check).
pub async fn lock_incidents(tx: &mut TenantTx) -> Result<(), sqlx::Error> {
    let key = format!("remediation:{}", tx.merchant_id());
    sqlx::query!("select pg_advisory_xact_lock(hashtextextended($1, 0))", key)
        .execute(tx.conn())
        .await
        .map(|_| ())
}

/// An open incident whose window overlaps `[from, to)`.
pub async fn overlapping_open(
    tx: &mut TenantTx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        "select id from remediation_incidents
         where merchant_id = $1 and status = 'open' and window_from < $3 and $2 < window_to
         limit 1",
        merchant,
        from,
        to,
    )
    .fetch_optional(tx.conn())
    .await
}

pub async fn insert_incident(
    tx: &mut TenantTx,
    id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bad: &str,
    fixed: &str,
    secret: &[u8],
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into remediation_incidents (merchant_id, id, window_from, window_to, bad_version, fixed_version, link_secret)
         values ($1, $2, $3, $4, $5, $6, $7)",
        merchant,
        id,
        from,
        to,
        bad,
        fixed,
        secret,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

pub async fn incident(tx: &mut TenantTx, id: Uuid) -> Result<Option<IncidentRow>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        IncidentRow,
        "select id, window_from, window_to, bad_version, fixed_version, scan_after_at,
                scan_after_id, scanned, skipped, scan_finished_at, reported_scan, link_secret
         from remediation_incidents where merchant_id = $1 and id = $2",
        merchant,
        id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// The merchant of an incident (the command line names only the incident).
pub async fn merchant_of_incident(
    pool: &sqlx::PgPool,
    id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "select merchant_id from remediation_incidents where id = $1",
        id
    )
    .fetch_optional(pool)
    .await
}

/// Moves the scan's cursor past a page of `scanned` orders (`skipped` of them unpriced).
pub async fn advance_scan(
    tx: &mut TenantTx,
    id: Uuid,
    after: (DateTime<Utc>, Uuid),
    scanned: i64,
    skipped: i64,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update remediation_incidents
         set scan_after_at = $3, scan_after_id = $4, scanned = scanned + $5, skipped = skipped + $6
         where merchant_id = $1 and id = $2",
        merchant,
        id,
        after.0,
        after.1,
        scanned,
        skipped,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

pub async fn finish_scan(tx: &mut TenantTx, id: Uuid) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update remediation_incidents set scan_finished_at = coalesce(scan_finished_at, now())
         where merchant_id = $1 and id = $2",
        merchant,
        id,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

pub async fn mark_reported(
    tx: &mut TenantTx,
    id: Uuid,
    scan: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update remediation_incidents set reported_scan = $3 where merchant_id = $1 and id = $2",
        merchant,
        id,
        scan,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

/// Adjustments of one page of the scan, as columns.
#[derive(Default)]
pub struct NewAdjustments {
    pub ids: Vec<Uuid>,
    pub orders: Vec<Uuid>,
    pub placed: Vec<DateTime<Utc>>,
    pub emails: Vec<String>,
    /// The orders' customers (`None`: an order not linked to one yet).
    pub customers: Vec<Option<Uuid>>,
    pub charged: Vec<i64>,
    pub expected: Vec<i64>,
    pub currencies: Vec<String>,
    pub classes: Vec<String>,
    pub references: Vec<Option<Uuid>>,
    pub methods: Vec<String>,
    pub method_statuses: Vec<String>,
    pub states: Vec<String>,
}

/// Inserts a page of adjustments; those of orders already adjusted for this
/// incident are left as they are. Returns how many were new.
pub async fn insert_adjustments(
    tx: &mut TenantTx,
    incident: Uuid,
    rows: &NewAdjustments,
) -> Result<u64, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    // `uuid[]` with nulls: sqlx binds Vec<Option<Uuid>> as such.
    sqlx::query!(
        "insert into order_adjustments (merchant_id, id, incident_id, order_id, order_placed_at, customer_email,
                                        customer_id, charged, expected, delta, currency, class, payment_provider,
                                        payment_reference, payment_method, payment_method_status, state)
         select $1, x.id, $2, x.order_id, x.placed, x.email, x.customer, x.charged, x.expected,
                x.expected - x.charged, x.currency, x.class, 'sandbox', x.reference, x.method, x.method_status,
                x.state
         from unnest($3::uuid[], $4::uuid[], $14::timestamptz[], $5::text[], $15::uuid[], $6::bigint[],
                     $7::bigint[], $8::text[], $9::text[], $10::uuid[], $11::text[], $12::text[], $13::text[])
              as x(id, order_id, placed, email, customer, charged, expected, currency, class, reference,
                   method, method_status, state)
         on conflict (merchant_id, incident_id, order_id) do nothing",
        merchant,
        incident,
        &rows.ids,
        &rows.orders,
        &rows.emails,
        &rows.charged,
        &rows.expected,
        &rows.currencies,
        &rows.classes,
        &rows.references as &[Option<Uuid>],
        &rows.methods,
        &rows.method_statuses,
        &rows.states,
        &rows.placed,
        &rows.customers as &[Option<Uuid>],
    )
    .execute(tx.conn())
    .await
    .map(|r| r.rows_affected())
}

/// One line of the report: the adjustments of a class and method status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportLine {
    pub class: Class,
    pub payment_method_status: MethodStatus,
    pub orders: i64,
    pub charged: i64,
    pub expected: i64,
    pub delta: i64,
}

pub async fn report_lines(
    tx: &mut TenantTx,
    incident: Uuid,
) -> Result<Vec<ReportLine>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        ReportLine,
        r#"select class as "class: Class", payment_method_status as "payment_method_status: MethodStatus",
                  count(*) as "orders!", sum(charged)::bigint as "charged!",
                  sum(expected)::bigint as "expected!", sum(delta)::bigint as "delta!"
           from order_adjustments where merchant_id = $1 and incident_id = $2
           group by class, payment_method_status order by class, payment_method_status"#,
        merchant,
        incident,
    )
    .fetch_all(tx.conn())
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LargeDelta {
    pub adjustment_id: Uuid,
    pub order_id: Uuid,
    pub customer_email: String,
    pub charged: i64,
    pub expected: i64,
    pub delta: i64,
    pub class: Class,
}

pub async fn largest_deltas(
    tx: &mut TenantTx,
    incident: Uuid,
    limit: i64,
) -> Result<Vec<LargeDelta>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        LargeDelta,
        r#"select id as adjustment_id, order_id, customer_email, charged, expected, delta,
                  class as "class: Class"
           from order_adjustments where merchant_id = $1 and incident_id = $2 and delta <> 0
           order by abs(delta) desc, id limit $3"#,
        merchant,
        incident,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// Rows whose own arithmetic is off (none, while the CHECK holds), and rows in all.
pub async fn reconcile(tx: &mut TenantTx, incident: Uuid) -> Result<(i64, i64), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let row = sqlx::query!(
        r#"select count(*) filter (where charged + delta <> expected) as "off!", count(*) as "all!"
           from order_adjustments where merchant_id = $1 and incident_id = $2"#,
        merchant,
        incident,
    )
    .fetch_one(tx.conn())
    .await?;
    Ok((row.off, row.all))
}

#[derive(Debug, Clone)]
pub struct AdjustmentRow {
    pub id: Uuid,
    pub incident_id: Uuid,
    pub order_id: Uuid,
    pub order_placed_at: DateTime<Utc>,
    pub customer_email: String,
    pub charged: i64,
    pub expected: i64,
    pub delta: i64,
    pub currency: String,
    pub class: Class,
    pub payment_reference: Option<Uuid>,
    pub payment_method: String,
    pub payment_method_status: MethodStatus,
    pub state: State,
    pub reminders_sent: i32,
    pub next_action_at: Option<DateTime<Utc>>,
    pub choice: Option<Choice>,
    pub new_payment_method: Option<String>,
    pub last_error: Option<String>,
}

/// Adjustments with something to do now, after `after` in id order.
pub async fn due(
    tx: &mut TenantTx,
    incident: Uuid,
    after: Uuid,
    limit: i64,
) -> Result<Vec<AdjustmentRow>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        AdjustmentRow,
        r#"select id, incident_id, order_id, order_placed_at, customer_email, charged, expected, delta, currency,
                  class as "class: Class", payment_reference, payment_method,
                  payment_method_status as "payment_method_status: MethodStatus",
                  state as "state: State", reminders_sent, next_action_at,
                  choice as "choice: Choice", new_payment_method, last_error
           from order_adjustments
           where merchant_id = $1 and incident_id = $2 and id > $3
             and state in ('pending', 'awaiting_payment_method', 'choice_made')
             and (next_action_at is null or next_action_at <= now() or new_payment_method is not null)
           order by id limit $4"#,
        merchant,
        incident,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// One adjustment, its row locked until the transaction ends.
pub async fn adjustment_for_update(
    tx: &mut TenantTx,
    id: Uuid,
) -> Result<Option<AdjustmentRow>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        AdjustmentRow,
        r#"select id, incident_id, order_id, order_placed_at, customer_email, charged, expected, delta, currency,
                  class as "class: Class", payment_reference, payment_method,
                  payment_method_status as "payment_method_status: MethodStatus",
                  state as "state: State", reminders_sent, next_action_at,
                  choice as "choice: Choice", new_payment_method, last_error
           from order_adjustments where merchant_id = $1 and id = $2
           for update"#,
        merchant,
        id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Moves an adjustment from `from` to `to` (with the reminder count, the next
/// due time and the error); `false` when it was no longer in `from`.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    tx: &mut TenantTx,
    id: Uuid,
    from: State,
    to: State,
    reminders_sent: i32,
    next_action_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let moved = sqlx::query!(
        "update order_adjustments
         set state = $4, reminders_sent = $5, next_action_at = $6, last_error = $7, updated_at = now(),
             settled_at = case when $4 = 'settled' then now() else settled_at end
         where merchant_id = $1 and id = $2 and state = $3",
        merchant,
        id,
        from.as_str(),
        to.as_str(),
        reminders_sent,
        next_action_at,
        error,
    )
    .execute(tx.conn())
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Counts reminder `sent` (moving from `sent - 1`, so two settles never send
/// one reminder twice); `false` when another got there first.
pub async fn count_reminder(
    tx: &mut TenantTx,
    id: Uuid,
    sent: i32,
    next_action_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let moved = sqlx::query!(
        "update order_adjustments set reminders_sent = $3, next_action_at = $4, updated_at = now()
         where merchant_id = $1 and id = $2 and state = 'awaiting_payment_method' and reminders_sent = $3 - 1",
        merchant,
        id,
        sent,
        next_action_at,
    )
    .execute(tx.conn())
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// The key of an adjustment's customer charge that is under way or done, if any.
pub async fn customer_charge(
    tx: &mut TenantTx,
    adjustment: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        "select idempotency_key from remediation_effects
         where merchant_id = $1 and adjustment_id = $2 and step = 'customer_charge'
           and status in ('started', 'succeeded')
         limit 1",
        merchant,
        adjustment,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Records the customer's choice once: `false` when one was recorded before.
pub async fn record_choice(
    tx: &mut TenantTx,
    id: Uuid,
    choice: Choice,
) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let moved = sqlx::query!(
        "update order_adjustments set choice = $3, state = 'choice_made', next_action_at = null, updated_at = now()
         where merchant_id = $1 and id = $2 and state = 'awaiting_choice' and choice is null",
        merchant,
        id,
        choice.as_str(),
    )
    .execute(tx.conn())
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Records the method a customer gave, or forgets it (`None`) after it failed.
pub async fn set_new_method(
    tx: &mut TenantTx,
    id: Uuid,
    method: Option<&str>,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update order_adjustments set new_payment_method = $3, updated_at = now()
         where merchant_id = $1 and id = $2",
        merchant,
        id,
        method,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

/// Keys an external step before it is attempted (once: the key is the row's).
pub async fn begin_effect(
    tx: &mut TenantTx,
    key: &str,
    adjustment: Uuid,
    step: &str,
    amount: i64,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "insert into remediation_effects (merchant_id, idempotency_key, adjustment_id, step, amount)
         values ($1, $2, $3, $4, $5)
         on conflict (merchant_id, idempotency_key) do nothing",
        merchant,
        key,
        adjustment,
        step,
        amount,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

pub async fn finish_effect(
    tx: &mut TenantTx,
    key: &str,
    succeeded: bool,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query!(
        "update remediation_effects set status = $3, outcome = $4, finished_at = now()
         where merchant_id = $1 and idempotency_key = $2",
        merchant,
        key,
        if succeeded { "succeeded" } else { "failed" },
        outcome,
    )
    .execute(tx.conn())
    .await
    .map(|_| ())
}

/// Adjustments per state, and money moved per step, of an incident.
pub struct Tally {
    pub states: Vec<(State, Class, i64, i64)>,
    pub effects: Vec<(String, String, i64, i64)>,
    pub failures: Vec<(String, i64)>,
}

pub async fn tally(tx: &mut TenantTx, incident: Uuid) -> Result<Tally, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let states = sqlx::query!(
        r#"select state as "state: State", class as "class: Class", count(*) as "n!",
                  sum(abs(delta))::bigint as "amount!"
           from order_adjustments where merchant_id = $1 and incident_id = $2
           group by state, class order by state, class"#,
        merchant,
        incident,
    )
    .fetch_all(tx.conn())
    .await?
    .into_iter()
    .map(|r| (r.state, r.class, r.n, r.amount))
    .collect();
    let effects = sqlx::query!(
        r#"select e.step, e.status, count(*) as "n!", sum(e.amount)::bigint as "amount!"
           from remediation_effects e
           join order_adjustments a on a.merchant_id = e.merchant_id and a.id = e.adjustment_id
           where e.merchant_id = $1 and a.incident_id = $2
           group by e.step, e.status order by e.step, e.status"#,
        merchant,
        incident,
    )
    .fetch_all(tx.conn())
    .await?
    .into_iter()
    .map(|r| (r.step, r.status, r.n, r.amount))
    .collect();
    let failures = sqlx::query!(
        r#"select last_error as "error!", count(*) as "n!" from order_adjustments
           where merchant_id = $1 and incident_id = $2 and last_error is not null
           group by last_error order by 2 desc limit 20"#,
        merchant,
        incident,
    )
    .fetch_all(tx.conn())
    .await?
    .into_iter()
    .map(|r| (r.error, r.n))
    .collect();
    Ok(Tally {
        states,
        effects,
        failures,
    })
}

/// A case handed to people.
#[derive(Debug, Serialize, ToSchema)]
pub struct Escalation {
    pub adjustment_id: Uuid,
    pub incident_id: Uuid,
    pub order_id: Uuid,
    pub customer_email: String,
    /// `GET /v1/customers/{id}`; `null` for an order not linked to one yet.
    pub customer_id: Option<Uuid>,
    /// What the customer still owes, in minor units.
    pub amount: i64,
    pub currency: String,
    pub payment_method_status: MethodStatus,
    pub reminders_sent: i32,
    pub reason: Option<String>,
    pub escalated_at: DateTime<Utc>,
}

pub async fn escalations(
    tx: &mut TenantTx,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Escalation>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_as!(
        Escalation,
        r#"select id as adjustment_id, incident_id, order_id, customer_email, customer_id, delta as amount, currency,
                  payment_method_status as "payment_method_status: MethodStatus", reminders_sent,
                  last_error as reason, updated_at as escalated_at
           from order_adjustments
           where merchant_id = $1 and state = 'escalated' and id > coalesce($2, '00000000-0000-0000-0000-000000000000'::uuid)
           order by id limit $3"#,
        merchant,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// The e-mails of an incident's underpaid customers with a mandate (who get the apology code).
pub async fn chargeable_emails(
    tx: &mut TenantTx,
    incident: Uuid,
) -> Result<Vec<String>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    sqlx::query_scalar!(
        r#"select distinct lower(customer_email) as "email!" from order_adjustments
           where merchant_id = $1 and incident_id = $2 and class = 'underpaid'
             and payment_method_status = 'valid'
           order by 1"#,
        merchant,
        incident,
    )
    .fetch_all(tx.conn())
    .await
}
