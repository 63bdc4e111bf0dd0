//! Events and webhooks: a transactional outbox (an event is written in the
//! transaction of the change it describes, with one delivery per subscribed
//! endpoint), the merchant's webhook endpoints, and the worker that delivers,
//! signed per Standard Webhooks, with retries and dead letters.
//!
//! Owns tables `events`, `webhook_endpoints`, `webhook_deliveries` and
//! `webhook_attempts`. Other contexts call `emit` in their own transaction.

pub mod bus;
pub mod http;
mod model;
pub mod privacy;
mod store;
pub mod worker;

use uuid::Uuid;

pub use model::{check_url, is_internal, next_delay, sign, svix_schedule, EventType};
pub use store::{claim_due, Claimed, DeliveryStatus, EndpointStatus, EventRow};

use crate::db::{MerchantId, TenantTx};

static BUS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, events are also queued for the bus (`MERCATO_NATS_URL` set).
/// Per process: an event written while it is off never goes to the bus.
pub fn enable_bus() {
    BUS.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn bus_enabled() -> bool {
    BUS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The largest payload an event may carry (serialised), refused at the source
/// so no receiver is sent more.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Writes event `kind` with `payload` (version 1) in the caller's transaction,
/// and queues it for every enabled endpoint subscribed to it. Returns its id.
pub async fn emit(
    tx: &mut TenantTx,
    kind: EventType,
    payload: serde_json::Value,
) -> Result<Uuid, sqlx::Error> {
    let merchant = tx.merchant_id();
    emit_on(tx.conn(), merchant, kind, payload).await
}

/// `emit` on a connection already in a transaction: a tenant's, or a
/// cross-tenant worker's (the reservation expiry).
pub async fn emit_on(
    conn: &mut sqlx::PgConnection,
    merchant: MerchantId,
    kind: EventType,
    payload: serde_json::Value,
) -> Result<Uuid, sqlx::Error> {
    let text = payload.to_string();
    let size = text.len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(sqlx::Error::Protocol(format!(
            "event {kind} payload of {size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit"
        )));
    }
    let id = Uuid::now_v7();
    // An event about an order names it, for the order's timeline.
    let order = payload
        .get("order_id")
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::try_parse(s).ok());
    store::insert_event(conn, merchant.0, id, kind.as_str(), 1, &text, order).await?;
    metrics::counter!("events_emitted_total", "type" => kind.as_str()).increment(1);
    Ok(id)
}

/// The events about `order`, oldest first: its timeline.
pub async fn order_timeline(tx: &mut TenantTx, order: Uuid) -> Result<Vec<EventRow>, sqlx::Error> {
    store::order_events(tx, order).await
}
