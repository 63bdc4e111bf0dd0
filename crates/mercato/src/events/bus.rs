//! Events for other services: with `MERCATO_NATS_URL` set, every event is also
//! published to NATS JetStream, subject `mercato.<merchant>.<type>`, with the
//! event id as `Nats-Msg-Id` (the stream drops a repeat within its duplicate
//! window). Published from the outbox after commit, at least once: an event is
//! marked published only after JetStream acknowledged it.

use std::time::Duration;

use sqlx::PgPool;

use super::store;

/// The JetStream stream the events go to (subjects `mercato.>`).
pub const STREAM: &str = "MERCATO";

/// The subject of an event.
pub fn subject(merchant: uuid::Uuid, kind: &str) -> String {
    format!("mercato.{merchant}.{kind}")
}

/// Runs until the process ends: connects (retrying), makes sure the stream
/// exists, then publishes pending events in id order, a batch at a time.
pub async fn publish_events(worker: PgPool, url: String, idle: Duration) {
    loop {
        match connect(&url).await {
            Ok(js) => {
                if let Err(err) = publish_loop(&worker, &js, idle).await {
                    tracing::warn!(error = %err, "publishing events to NATS failed; reconnecting");
                }
            }
            Err(err) => {
                let server = crate::telemetry::without_credentials(&url);
                tracing::warn!(error = %err, %server, "NATS unreachable; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["mercato.>".into()],
        ..Default::default()
    })
    .await?;
    Ok(js)
}

async fn publish_loop(
    worker: &PgPool,
    js: &async_nats::jetstream::Context,
    idle: Duration,
) -> anyhow::Result<()> {
    loop {
        let mut tx = worker.begin().await?;
        let pending = store::bus_pending(&mut tx, 500).await?;
        if pending.is_empty() {
            tx.commit().await?;
            tokio::time::sleep(idle).await;
            continue;
        }
        let mut acks = Vec::with_capacity(pending.len());
        for event in &pending {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                event.id.to_string().as_str(),
            );
            headers.insert("Mercato-Event-Version", event.version.to_string().as_str());
            let ack = js
                .publish_with_headers(
                    subject(event.merchant_id, &event.kind),
                    headers,
                    event.payload.clone().into(),
                )
                .await?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await?;
        }
        let ids: Vec<uuid::Uuid> = pending.iter().map(|e| e.id).collect();
        store::bus_published(&mut tx, &ids).await?;
        tx.commit().await?;
        metrics::counter!("events_published_total").increment(ids.len() as u64);
    }
}
