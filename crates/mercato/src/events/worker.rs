//! Delivers webhooks: claims due deliveries (`FOR UPDATE SKIP LOCKED`, so several
//! processes share the work), signs each per Standard Webhooks, POSTs it with a
//! timeout and without following redirects, records the attempt and schedules
//! the retry (or parks a dead letter). An endpoint failing too long in a row
//! is disabled, and the merchant is told with a `webhook_endpoint.disabled` event.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::model::{is_internal, next_delay, sign, Envelope};
use super::store::{self, Claimed, DeliveryStatus, Recorded};
use crate::db::{MerchantId, TenantTx};

/// How the worker behaves; `Default` is production's.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Delays before each attempt (the first is normally 0).
    pub schedule: Vec<Duration>,
    /// Each request's timeout.
    pub timeout: Duration,
    /// Deliveries in flight at once, and at most this many of one endpoint.
    pub concurrency: usize,
    pub per_endpoint: usize,
    /// Failed attempts in a row after which an endpoint is disabled.
    pub disable_after: i32,
    /// Whether receivers may be internal addresses (`--webhooks-allow-internal`,
    /// never implied): what those answer is still not kept.
    pub allow_internal: bool,
    /// Pause when nothing was due.
    pub idle: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            schedule: super::svix_schedule(),
            timeout: Duration::from_secs(10),
            concurrency: 64,
            per_endpoint: 8,
            disable_after: 100,
            allow_internal: false,
            idle: Duration::from_millis(200),
        }
    }
}

/// A resolver that refuses names resolving only to internal addresses: checked
/// when the connection is made, so a name cannot pass a check and then
/// resolve elsewhere (DNS rebinding).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| !is_internal(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(
                    format!("{} resolves only to internal addresses", name.as_str()).into(),
                );
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client deliveries use: a timeout, no redirects, no proxy, and
/// (unless `--webhooks-allow-internal`) no internal addresses.
pub fn client(config: &DeliveryConfig) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        // HTTP(S)_PROXY from the environment would send every delivery to
        // the proxy, whose address the resolver below never checks.
        .no_proxy()
        .user_agent("Mercato-Webhooks/1");
    let builder = if config.allow_internal {
        builder
    } else {
        builder.dns_resolver(Arc::new(PublicOnly))
    };
    builder.build()
}

/// Runs until the process ends.
pub async fn deliver_webhooks(
    app: PgPool,
    worker: PgPool,
    config: DeliveryConfig,
    suspended: crate::tenancy::Suspended,
) {
    let client = match client(&config) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "webhook client could not be built; no deliveries");
            return;
        }
    };
    let config = Arc::new(config);
    // Bounded: a recorder that falls behind holds the senders' slots, so no
    // more is claimed than can be recorded.
    let (recorder, finished) = mpsc::channel(RECORD_BATCH * 4);
    let recorded = Arc::new(Notify::new());
    tokio::spawn(record_attempts(
        app,
        worker.clone(),
        config.disable_after,
        finished,
        recorded.clone(),
    ));
    // Past the request's timeout, with room to record the attempt: a delivery
    // still leased after that belonged to a worker that died.
    let lease = config.timeout.as_secs_f64() * 2.0 + 5.0;
    let mut in_flight: JoinSet<()> = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let free = config.concurrency.saturating_sub(in_flight.len());
        // Claim in batches (no slot free counts too): one claim per freed slot
        // would run the claim query once per delivery when receivers answer fast.
        if free < config.concurrency.div_ceil(4) && !in_flight.is_empty() {
            tokio::select! {
                _ = in_flight.join_next() => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            continue;
        }
        let claimed = match worker.acquire().await {
            Ok(mut conn) => {
                let paused = suspended.ids();
                store::claim_due(
                    &mut conn,
                    free as i64,
                    config.per_endpoint as i64,
                    lease,
                    &paused,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let claimed = match claimed {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "claiming webhook deliveries failed; retrying");
                tokio::time::sleep(config.idle).await;
                continue;
            }
        };
        if claimed.is_empty() {
            // Nothing claimable: wait for recorded attempts to free their
            // endpoints' slots (an endpoint at its bound may have more due) or
            // for new work, whichever comes first.
            tokio::select! {
                _ = recorded.notified() => {}
                _ = tokio::time::sleep(config.idle) => {}
            }
            continue;
        }
        for delivery in claimed {
            let (client, config, recorder) = (client.clone(), config.clone(), recorder.clone());
            in_flight.spawn(async move { deliver(&client, &config, &delivery, &recorder).await });
        }
    }
}

/// What a receiver answered, or why it did not.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
    latency: Duration,
}

async fn send(client: &reqwest::Client, config: &DeliveryConfig, d: &Claimed) -> Outcome {
    let started = Instant::now();
    let failed = |error: String| Outcome {
        status: None,
        error: Some(error),
        excerpt: None,
        latency: started.elapsed(),
    };
    let url = match reqwest::Url::parse(&d.url) {
        Ok(u) => u,
        Err(e) => return failed(format!("bad URL: {e}")),
    };
    // An IP literal never reaches the resolver: check it here.
    if let Some(ip) = url
        .host_str()
        .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
    {
        if !config.allow_internal && is_internal(ip) {
            return failed(format!("{ip} is an internal address"));
        }
    }
    let id = d.event_id.to_string();
    let data: serde_json::Value = match serde_json::from_str(&d.payload) {
        Ok(v) => v,
        Err(e) => return failed(format!("stored payload: {e}")),
    };
    let envelope = Envelope {
        id: &id,
        kind: &d.event_type,
        version: d.version,
        timestamp: d
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        data: &data,
    };
    let body = match serde_json::to_vec(&envelope) {
        Ok(b) => b,
        Err(e) => return failed(format!("payload: {e}")),
    };
    let timestamp = Utc::now().timestamp();
    let signatures: Vec<String> = std::iter::once(&d.secret)
        .chain(d.previous_secret.as_ref())
        .filter_map(|secret| sign(secret, &id, timestamp, &body))
        .collect();
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            // What a service on this machine or network answered is never
            // handed back: with internal receivers allowed, the deliveries
            // API would otherwise read it for whoever holds a merchant key.
            let shown = resp.remote_addr().is_some_and(|a| !is_internal(a.ip()));
            let excerpt = if shown {
                let within = EXCERPT_TIME.min(config.timeout);
                let kept = read_prefix(&mut resp, EXCERPT_BYTES, within).await;
                Some(String::from_utf8_lossy(&kept).into_owned())
            } else {
                None
            };
            Outcome {
                status: Some(status),
                error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
                excerpt,
                latency: started.elapsed(),
            }
        }
        Err(e) => failed(if e.is_timeout() {
            format!("timed out after {:?}", config.timeout)
        } else {
            format!("{e}")
        }),
    }
}

/// The most of a receiver's answer that is kept, and so read: its first KiB.
const EXCERPT_BYTES: usize = 1024;

/// The longest a receiver's answer may take to give those bytes: the status
/// is the delivery's outcome, the body only a hint for the merchant.
const EXCERPT_TIME: Duration = Duration::from_secs(1);

/// The first `limit` bytes of an answer's body, streamed and never read past:
/// an endless or dribbling body costs at most `limit` bytes (and a chunk) and
/// `within`. Whatever came before an error or the deadline is kept.
async fn read_prefix(resp: &mut reqwest::Response, limit: usize, within: Duration) -> Vec<u8> {
    let mut kept = Vec::new();
    let read = async {
        while kept.len() < limit {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
    };
    // Timing out only ends the reading; what was kept stays.
    let _ = tokio::time::timeout(within, read).await;
    kept
}

/// Sends one delivery and hands what came of it to the recorder.
async fn deliver(
    client: &reqwest::Client,
    config: &DeliveryConfig,
    d: &Claimed,
    recorder: &mpsc::Sender<Recorded>,
) {
    let outcome = send(client, config, d).await;
    let retry_at = if outcome.error.is_none() {
        None
    } else {
        let attempts = usize::try_from(d.attempt).unwrap_or(usize::MAX);
        next_delay(&config.schedule, attempts, rand::random::<f64>())
            .map(|delay| Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
    };
    let recorded = Recorded {
        merchant_id: d.merchant_id,
        delivery_id: d.delivery_id,
        endpoint_id: d.endpoint_id,
        attempt: d.attempt,
        status_code: outcome.status.map(i32::from),
        latency_ms: i32::try_from(outcome.latency.as_millis()).unwrap_or(i32::MAX),
        error: outcome.error,
        response_excerpt: outcome.excerpt,
        retry_at,
    };
    let result = match recorded.status() {
        DeliveryStatus::Succeeded => "succeeded",
        DeliveryStatus::Pending => "retrying",
        DeliveryStatus::Dead => "dead",
    };
    metrics::counter!("webhook_attempts_total", "result" => result).increment(1);
    metrics::histogram!("webhook_attempt_seconds").record(outcome.latency.as_secs_f64());
    // Only fails when the recorder is gone (the process is ending): the lease
    // brings the delivery back.
    let _ = recorder.send(recorded).await;
}

/// Attempts recorded in one transaction at most.
const RECORD_BATCH: usize = 256;

/// Records finished attempts in batches: whatever finished while the previous
/// batch was being written goes in the next (group commit), so recording costs
/// a few statements per batch rather than a transaction per delivery. Then
/// disables the endpoints whose run of failures reached the bound.
async fn record_attempts(
    app: PgPool,
    worker: PgPool,
    disable_after: i32,
    mut finished: mpsc::Receiver<Recorded>,
    cleared: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let recorded = match worker.acquire().await {
            Ok(mut conn) => store::record_attempts(&mut conn, &batch).await,
            Err(e) => Err(e),
        };
        // Their leases are cleared: the claimer may take those endpoints' next.
        cleared.notify_one();
        match recorded {
            Ok(runs) => {
                for (merchant, endpoint, failures) in runs {
                    if failures < disable_after {
                        continue;
                    }
                    if let Err(err) = disable(&app, merchant, endpoint, failures).await {
                        tracing::warn!(%endpoint, error = %err, "disabling a failing webhook endpoint failed");
                    }
                }
            }
            // The leases bring these deliveries back: delivered at least once.
            Err(err) => {
                tracing::warn!(attempts = batch.len(), error = %err, "recording webhook attempts failed")
            }
        }
        batch.clear();
    }
}

/// Disables an endpoint that failed `failures` times in a row and tells the
/// merchant, once (only the batch that flips it emits the event).
async fn disable(
    app: &PgPool,
    merchant: uuid::Uuid,
    endpoint: uuid::Uuid,
    failures: i32,
) -> Result<(), sqlx::Error> {
    let mut tx = TenantTx::begin(app, MerchantId(merchant)).await?;
    let reason = format!("{failures} failed attempts in a row");
    if store::auto_disable(&mut tx, endpoint, &reason).await? {
        super::emit(
            &mut tx,
            super::EventType::WebhookEndpointDisabled,
            serde_json::json!({"endpoint_id": endpoint, "reason": reason}),
        )
        .await?;
        tracing::warn!(%endpoint, %reason, "webhook endpoint disabled");
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A receiver on loopback that answers 200 with `head` of body, then
    /// (when `endless`) writes more forever; counts what it managed to write.
    async fn answering(head: &'static [u8], endless: bool) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let header = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
            conn.write_all(header.as_bytes()).await.unwrap();
            conn.write_all(head).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                if !endless {
                    // Holds the connection open and says nothing more.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                match conn.write_all(&chunk).await {
                    Ok(()) => counter.fetch_add(chunk.len() as u64, Ordering::Relaxed),
                    Err(_) => return,
                };
            }
        });
        (url, written)
    }

    /// GET `url` straight (never through a proxy the environment names).
    async fn get(url: &str) -> reqwest::Response {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        client.get(url).send().await.unwrap()
    }

    #[tokio::test]
    async fn an_endless_answer_is_read_no_further_than_the_kept_bytes() {
        let (url, written) = answering(b"first", true).await;
        let mut resp = get(&url).await;
        let started = Instant::now();
        let kept = read_prefix(&mut resp, 1024, Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(kept.len(), 1024);
        assert!(kept.starts_with(b"firstxxx"));
        drop(resp);
        // The receiver is stopped by the closed connection, having filled
        // little more than the sockets' buffers.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(written.load(Ordering::Relaxed) < 32 << 20);
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_given_up_at_the_deadline_with_what_came() {
        let (url, _) = answering(b"partial", false).await;
        let mut resp = get(&url).await;
        let started = Instant::now();
        let kept = read_prefix(&mut resp, 1024, Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(kept, b"partial");
    }
}
