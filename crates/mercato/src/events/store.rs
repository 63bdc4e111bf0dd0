//! Events and webhook SQL. Tenant functions take a `TenantTx`; the delivery
//! worker's take a connection of the worker role (across merchants).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::{text_enum, TenantTx};

text_enum! {
    /// Whether an endpoint receives deliveries.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum EndpointStatus {
        Enabled = "enabled",
        /// By the merchant, or automatically after a long run of failures.
        Disabled = "disabled",
    }
}

text_enum! {
    /// Where a delivery stands.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum DeliveryStatus {
        /// To be sent at `next_attempt_at`.
        Pending = "pending",
        Succeeded = "succeeded",
        /// Every attempt of the retry schedule failed; `recover` sends it again.
        Dead = "dead",
    }
}

pub struct EventRow {
    pub id: Uuid,
    pub kind: String,
    pub version: i32,
    /// JSON text.
    pub payload: String,
    pub occurred_at: DateTime<Utc>,
}

/// Writes an event and one pending delivery for every enabled endpoint that
/// subscribed to its type, in the caller's transaction (a tenant's, or the
/// worker role's).
pub async fn insert_event(
    conn: &mut PgConnection,
    merchant: Uuid,
    id: Uuid,
    kind: &str,
    version: i32,
    payload: &str,
    order: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    // One statement (one round trip on every order's path): the event, and a
    // delivery per subscribed endpoint.
    sqlx::query!(
        "with event as (
             insert into events (merchant_id, id, type, version, payload, bus_pending, order_id)
             values ($1, $2, $3, $4, $5::text::jsonb, $6, $7)
             returning merchant_id, id, type
         )
         insert into webhook_deliveries (merchant_id, id, endpoint_id, event_id)
         select w.merchant_id, gen_random_uuid(), w.id, event.id
         from event join webhook_endpoints w
           on w.merchant_id = event.merchant_id and w.status = 'enabled' and event.type = any(w.event_types)",
        merchant,
        id,
        kind,
        version,
        payload,
        super::bus_enabled(),
        order,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Events newest last, after `after`, of `kind` if given.
pub async fn events(
    tx: &mut TenantTx,
    kind: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        r#"select id, type as kind, version, payload::text as "payload!", occurred_at from events
           where merchant_id = $1 and ($2::text is null or type = $2) and ($3::uuid is null or id > $3)
           order by id limit $4"#,
        tx.merchant_id().0,
        kind,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// The events about an order, oldest first (those written since events name
/// their order: migration 0024).
pub async fn order_events(tx: &mut TenantTx, order: Uuid) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        r#"select id, type as kind, version, payload::text as "payload!", occurred_at from events
           where merchant_id = $1 and order_id = $2
           order by id"#,
        tx.merchant_id().0,
        order,
    )
    .fetch_all(tx.conn())
    .await
}

pub async fn event(tx: &mut TenantTx, id: Uuid) -> Result<Option<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        r#"select id, type as kind, version, payload::text as "payload!", occurred_at from events
           where merchant_id = $1 and id = $2"#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await
}

pub struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Vec<String>,
    pub secret: String,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert_endpoint(
    tx: &mut TenantTx,
    id: Uuid,
    url: &str,
    description: Option<&str>,
    event_types: &[String],
    secret: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into webhook_endpoints (merchant_id, id, url, description, event_types, secret)
         values ($1, $2, $3, $4, $5, $6)",
        tx.merchant_id().0,
        id,
        url,
        description,
        event_types,
        secret,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn endpoints(tx: &mut TenantTx) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRow,
        r#"select id, url, description, event_types, secret, status as "status: EndpointStatus",
                  disabled_reason, created_at, updated_at
           from webhook_endpoints where merchant_id = $1 order by created_at, id"#,
        tx.merchant_id().0,
    )
    .fetch_all(tx.conn())
    .await
}

pub async fn endpoint(tx: &mut TenantTx, id: Uuid) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRow,
        r#"select id, url, description, event_types, secret, status as "status: EndpointStatus",
                  disabled_reason, created_at, updated_at
           from webhook_endpoints where merchant_id = $1 and id = $2"#,
        tx.merchant_id().0,
        id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Changes what is given (`None` keeps it); enabling clears the failure run.
pub async fn update_endpoint(
    tx: &mut TenantTx,
    id: Uuid,
    url: Option<&str>,
    description: Option<&str>,
    event_types: Option<&[String]>,
    status: Option<EndpointStatus>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "update webhook_endpoints set
             url = coalesce($3, url),
             description = coalesce($4, description),
             event_types = coalesce($5, event_types),
             status = coalesce($6, status),
             disabled_reason = case when $6 = 'enabled' then null
                                    when $6 = 'disabled' then 'disabled by the merchant'
                                    else disabled_reason end,
             consecutive_failures = case when $6 = 'enabled' then 0 else consecutive_failures end,
             updated_at = now()
         where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
        url,
        description,
        event_types,
        status.map(|s| s.as_str()),
    )
    .execute(tx.conn())
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A new secret; the old one keeps signing (beside it) until `overlap_until`.
pub async fn rotate_secret(
    tx: &mut TenantTx,
    id: Uuid,
    secret: &str,
    overlap_until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "update webhook_endpoints set previous_secret = secret, previous_secret_expires_at = $4,
                secret = $3, updated_at = now()
         where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
        secret,
        overlap_until,
    )
    .execute(tx.conn())
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn delete_endpoint(tx: &mut TenantTx, id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "delete from webhook_endpoints where merchant_id = $1 and id = $2",
        tx.merchant_id().0,
        id,
    )
    .execute(tx.conn())
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// A delivery with its attempts, as the API lists it.
pub struct DeliveryRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub struct AttemptRow {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub at: DateTime<Utc>,
}

/// An endpoint's deliveries, newest first (at most `limit`), with their attempts.
pub async fn deliveries(
    tx: &mut TenantTx,
    endpoint: Uuid,
    limit: i64,
) -> Result<(Vec<DeliveryRow>, Vec<AttemptRow>), sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let deliveries = sqlx::query_as!(
        DeliveryRow,
        r#"select d.id, d.event_id, e.type as event_type, d.status as "status: DeliveryStatus",
                  d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, d.created_at
           from webhook_deliveries d
           join events e on e.merchant_id = d.merchant_id and e.id = d.event_id
           where d.merchant_id = $1 and d.endpoint_id = $2
           order by d.created_at desc, d.id limit $3"#,
        merchant,
        endpoint,
        limit,
    )
    .fetch_all(tx.conn())
    .await?;
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let attempts = sqlx::query_as!(
        AttemptRow,
        "select delivery_id, attempt, status_code, latency_ms, error, response_excerpt, at
         from webhook_attempts where merchant_id = $1 and delivery_id = any($2)
         order by delivery_id, attempt",
        merchant,
        &ids,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok((deliveries, attempts))
}

/// Sends dead (and, with `since`, failed-and-waiting) deliveries of an endpoint
/// created since `since` again, now, with a fresh schedule. How many.
pub async fn recover(
    tx: &mut TenantTx,
    endpoint: Uuid,
    since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let recovered = sqlx::query!(
        "update webhook_deliveries set status = 'pending', attempts = 0, next_attempt_at = now(),
                leased_until = null, updated_at = now()
         where merchant_id = $1 and endpoint_id = $2 and created_at >= $3
           and (status = 'dead' or (status = 'pending' and attempts > 0))",
        tx.merchant_id().0,
        endpoint,
        since,
    )
    .execute(tx.conn())
    .await?;
    Ok(recovered.rows_affected())
}

/// A delivery the worker claimed, with what it needs to send it.
pub struct Claimed {
    pub merchant_id: Uuid,
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    pub url: String,
    pub secret: String,
    /// The secret before a rotation, while it still signs.
    pub previous_secret: Option<String>,
    pub event_id: Uuid,
    pub event_type: String,
    pub version: i32,
    /// JSON text.
    pub payload: String,
    pub occurred_at: DateTime<Utc>,
}

/// Claims up to `limit` due deliveries of enabled endpoints, merchants taking
/// turns (one endpoint each per turn, at random within it), and at most
/// `per_endpoint` in flight for any one endpoint, so a slow
/// or dead receiver holds its own slots and no more: the others' deliveries
/// are not queued behind it. The claim is a lease: the delivery is due again
/// after `lease_seconds` unless its attempt is recorded first, so a worker that
/// dies mid-delivery loses nothing (at-least-once, same `webhook-id`).
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    per_endpoint: i64,
    lease_seconds: f64,
    paused: &[Uuid],
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"with ready as (
               select w.merchant_id, w.id, $2::bigint - busy.n as room
               from webhook_endpoints w, lateral (
                   -- Only pending deliveries hold a lease (recording clears it).
                   select count(*) as n from webhook_deliveries d
                   where d.merchant_id = w.merchant_id and d.endpoint_id = w.id
                     and d.leased_until is not null and d.leased_until > now()
               ) busy
               where w.status = 'enabled' and busy.n < $2::bigint
                 -- Merchants the platform suspended: their deliveries wait.
                 and w.merchant_id <> all($4::uuid[])
                 and exists (select 1 from webhook_deliveries d
                             where d.merchant_id = w.merchant_id and d.endpoint_id = w.id
                               and d.status = 'pending' and d.next_attempt_at <= now())
               -- Merchants take turns: each one's first ready endpoint before
               -- anyone's second, so a merchant with many endpoints does not
               -- take the batch; random within a turn, so no one always goes last.
               order by row_number() over (partition by w.merchant_id order by random()), random()
               limit $1::bigint
           ), picked as (
               select d.merchant_id, d.id
               from ready r, lateral (
                   select d.merchant_id, d.id from webhook_deliveries d
                   where d.merchant_id = r.merchant_id and d.endpoint_id = r.id
                     and d.status = 'pending' and d.next_attempt_at <= now()
                   order by d.next_attempt_at
                   limit r.room
                   for update skip locked
               ) d
               limit $1::bigint
           )
           update webhook_deliveries d
              set attempts = d.attempts + 1,
                  leased_until = now() + make_interval(secs => $3),
                  next_attempt_at = now() + make_interval(secs => $3),
                  updated_at = now()
           from picked, webhook_endpoints w, events e
           where d.merchant_id = picked.merchant_id and d.id = picked.id
             and w.merchant_id = d.merchant_id and w.id = d.endpoint_id
             and e.merchant_id = d.merchant_id and e.id = d.event_id
           returning d.merchant_id, d.id as delivery_id, d.endpoint_id, d.attempts as attempt,
                     w.url, w.secret,
                     case when w.previous_secret_expires_at > now() then w.previous_secret end as previous_secret,
                     e.id as event_id, e.type as event_type, e.version, e.payload::text as "payload!",
                     e.occurred_at"#,
        limit,
        per_endpoint,
        lease_seconds,
        paused,
    )
    .fetch_all(conn)
    .await
}

/// One attempt, as the worker records it.
pub struct Recorded {
    pub merchant_id: Uuid,
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// The attempt's number (the claim's `attempt`).
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    /// Why it failed; `None` when it succeeded.
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// When to try again after a failure; `None` after a success, or when the
    /// schedule is exhausted (a dead letter).
    pub retry_at: Option<DateTime<Utc>>,
}

impl Recorded {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    pub fn status(&self) -> DeliveryStatus {
        match (self.succeeded(), self.retry_at) {
            (true, _) => DeliveryStatus::Succeeded,
            (false, Some(_)) => DeliveryStatus::Pending,
            (false, None) => DeliveryStatus::Dead,
        }
    }
}

/// How a batch of attempts changes one endpoint's run of consecutive failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunChange {
    /// A success in the batch ended the run: it restarts from `failed`.
    pub reset: bool,
    /// Failures after the batch's last success (or all of them, without one).
    pub failed: i32,
}

/// Each endpoint's change of its failure run over `batch` (its attempts taken
/// in the order they finished), endpoints in key order: the order
/// `record_attempts` locks them in.
pub fn run_changes(batch: &[Recorded]) -> Vec<((Uuid, Uuid), RunChange)> {
    let mut changes = std::collections::BTreeMap::<(Uuid, Uuid), RunChange>::new();
    for r in batch {
        let change = changes.entry((r.merchant_id, r.endpoint_id)).or_default();
        if r.succeeded() {
            *change = RunChange {
                reset: true,
                failed: 0,
            };
        } else {
            change.failed += 1;
        }
    }
    changes.into_iter().collect()
}

/// Records a batch of attempts and moves each delivery on (succeeded, due again
/// at `retry_at`, or dead) in one transaction: a few statements for the whole
/// batch instead of four and a commit per delivery. Returns each endpoint
/// whose run of consecutive failed attempts changed, with its new length (the
/// endpoint row is written only when its run changes, and locked in key order
/// so concurrent recorders cannot deadlock).
pub async fn record_attempts(
    conn: &mut PgConnection,
    batch: &[Recorded],
) -> Result<Vec<(Uuid, Uuid, i32)>, sqlx::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Recorded) -> Uuid| batch.iter().map(f).collect::<Vec<_>>();
    let merchants = column(|r| r.merchant_id);
    let deliveries = column(|r| r.delivery_id);
    let attempts: Vec<i32> = batch.iter().map(|r| r.attempt).collect();
    let codes: Vec<Option<i32>> = batch.iter().map(|r| r.status_code).collect();
    let latencies: Vec<i32> = batch.iter().map(|r| r.latency_ms).collect();
    let errors: Vec<Option<String>> = batch.iter().map(|r| r.error.clone()).collect();
    let excerpts: Vec<Option<String>> = batch.iter().map(|r| r.response_excerpt.clone()).collect();
    let statuses: Vec<&str> = batch.iter().map(|r| r.status().as_str()).collect();
    let retries: Vec<Option<DateTime<Utc>>> = batch.iter().map(|r| r.retry_at).collect();
    let changes = run_changes(batch);

    let mut tx = sqlx::Connection::begin(conn).await?;
    // Not waiting for the WAL flush is safe here: a record lost in a crash only
    // lets the lease lapse, and the delivery is sent again with the same
    // webhook-id (at-least-once, which receivers must handle anyway).
    sqlx::query!("set local synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "insert into webhook_attempts (merchant_id, delivery_id, attempt, status_code, latency_ms, error, response_excerpt)
         select * from unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::int[], $6::text[], $7::text[])
         on conflict (merchant_id, delivery_id, attempt) do nothing",
        &merchants,
        &deliveries,
        &attempts,
        &codes as &[Option<i32>],
        &latencies,
        &errors as &[Option<String>],
        &excerpts as &[Option<String>],
    )
    .execute(&mut *tx)
    .await?;
    // Only the claim this attempt belongs to (`attempts` still its number):
    // a delivery re-claimed after its lease lapsed is the newer claim's.
    sqlx::query!(
        "update webhook_deliveries d
            set status = u.status, next_attempt_at = coalesce(u.retry_at, d.next_attempt_at),
                leased_until = null, last_status_code = u.code, last_error = u.error, updated_at = now()
           from unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[], $6::int[], $7::text[])
                as u(merchant_id, id, attempt, status, retry_at, code, error)
          where d.merchant_id = u.merchant_id and d.id = u.id and d.attempts = u.attempt",
        &merchants,
        &deliveries,
        &attempts,
        &statuses as &[&str],
        &retries as &[Option<DateTime<Utc>>],
        &codes as &[Option<i32>],
        &errors as &[Option<String>],
    )
    .execute(&mut *tx)
    .await?;
    let endpoint_merchants: Vec<Uuid> = changes.iter().map(|((m, _), _)| *m).collect();
    let endpoints: Vec<Uuid> = changes.iter().map(|((_, e), _)| *e).collect();
    let resets: Vec<bool> = changes.iter().map(|(_, c)| c.reset).collect();
    let failed: Vec<i32> = changes.iter().map(|(_, c)| c.failed).collect();
    // Most successes follow successes: no write (and no lock) on the endpoint then.
    let runs = sqlx::query!(
        r#"with u as (
               select * from unnest($1::uuid[], $2::uuid[], $3::bool[], $4::int[])
                   as u(merchant_id, id, reset, failed)
           ), locked as materialized (
               select w.merchant_id, w.id from webhook_endpoints w
               join u on u.merchant_id = w.merchant_id and u.id = w.id
               where u.failed > 0 or w.consecutive_failures <> 0
               order by w.merchant_id, w.id
               for update of w
           )
           update webhook_endpoints w
              set consecutive_failures = case when u.reset then u.failed
                                              else w.consecutive_failures + u.failed end
             from u, locked
            where w.merchant_id = u.merchant_id and w.id = u.id
              and locked.merchant_id = w.merchant_id and locked.id = w.id
           returning w.merchant_id, w.id, w.consecutive_failures as "failures!""#,
        &endpoint_merchants,
        &endpoints,
        &resets,
        &failed,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(runs
        .into_iter()
        .map(|r| (r.merchant_id, r.id, r.failures))
        .collect())
}

/// Disables an enabled endpoint with `reason`; whether it was enabled.
pub async fn auto_disable(tx: &mut TenantTx, id: Uuid, reason: &str) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "update webhook_endpoints set status = 'disabled', disabled_reason = $3, updated_at = now()
         where merchant_id = $1 and id = $2 and status = 'enabled'",
        tx.merchant_id().0,
        id,
        reason,
    )
    .execute(tx.conn())
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// An event waiting to be published on the bus.
pub struct BusEvent {
    pub merchant_id: Uuid,
    pub id: Uuid,
    pub kind: String,
    pub version: i32,
    /// The receiver's body: the event as `GET /v1/events/{id}` shows it.
    pub payload: String,
}

/// Up to `limit` events waiting for the bus, oldest first, locked until the
/// transaction ends (several processes publish without sending one twice at once).
pub async fn bus_pending(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<BusEvent>, sqlx::Error> {
    sqlx::query_as!(
        BusEvent,
        r#"select merchant_id, id, type as kind, version,
                  json_build_object('id', id, 'type', type, 'merchant_id', merchant_id, 'version', version,
                                    'occurred_at', occurred_at, 'data', payload)::text as "payload!"
           from events where bus_pending
           order by id limit $1
           for update skip locked"#,
        limit,
    )
    .fetch_all(conn)
    .await
}

pub async fn bus_published(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update events set bus_pending = false where bus_pending and id = any($1)",
        ids,
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(endpoint: u128, ok: bool) -> Recorded {
        Recorded {
            merchant_id: Uuid::nil(),
            delivery_id: Uuid::new_v4(),
            endpoint_id: Uuid::from_u128(endpoint),
            attempt: 1,
            status_code: Some(if ok { 204 } else { 500 }),
            latency_ms: 1,
            error: (!ok).then(|| "HTTP 500".to_owned()),
            response_excerpt: None,
            retry_at: None,
        }
    }

    #[test]
    fn a_batch_changes_each_endpoint_run_as_its_attempts_finished_in_order() {
        let batch = [
            attempt(2, false),
            attempt(1, false),
            attempt(1, true),
            attempt(1, false),
            attempt(2, false),
            attempt(3, true),
        ];
        let changes: Vec<(u128, RunChange)> = run_changes(&batch)
            .into_iter()
            .map(|((_, e), c)| (e.as_u128(), c))
            .collect();
        let run = |reset, failed| RunChange { reset, failed };
        assert_eq!(
            changes,
            [(1, run(true, 1)), (2, run(false, 2)), (3, run(true, 0))]
        );
    }
}
