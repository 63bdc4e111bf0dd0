//! FIFO admission: the fast path for hot products.
//!
//! Every buyer of one SKU would otherwise update one stock row, and the row
//! lock serialises them at one commit each. Here a merchant's requests (a
//! cart of one SKU or several, all or nothing) queue in arrival order inside
//! the process; one task per merchant
//! drains the queue in batches and grants a whole batch in one transaction of
//! a few statements, whatever the number of SKUs in it (`grant_batch`: the
//! rows locked in SKU order, so two processes doing this cannot deadlock). So one hot
//! SKU's buyers share a commit, and so do the buyers of many warm SKUs and of
//! carts that span them, who would each have had a commit of their own with a
//! queue per SKU. Each waiter
//! hears its answer only after that transaction commits. Several processes may
//! do this at once: the row lock and the conditional update in `grant_batch`
//! (and the CHECK constraint) still rule out overselling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::model::Line;
use super::store::{grant_batch, BatchRequest, Reservation, ReserveError};
use crate::db::TenantTx;
use crate::tenancy::MerchantId;

/// Requests one drain takes at most in one transaction.
const MAX_BATCH: usize = 512;
/// Waiters one merchant's queue holds before new ones are turned away (503).
const QUEUE_CAPACITY: usize = 8_192;
/// A drain task with nothing to do for this long retires.
const IDLE: Duration = Duration::from_secs(5);

type Key = MerchantId;

struct Ticket {
    request: BatchRequest,
    reply: oneshot::Sender<Result<Reservation, ReserveError>>,
}

pub struct Admission {
    pool: PgPool,
    queues: Mutex<HashMap<Key, mpsc::Sender<Ticket>>>,
}

impl Admission {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Admission {
            pool,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Queues a reservation of `lines` (all or nothing) and waits for its
    /// committed answer.
    pub async fn reserve(
        self: &Arc<Self>,
        merchant: MerchantId,
        lines: &[Line],
        ttl_seconds: i64,
    ) -> Result<Reservation, ReserveError> {
        let (reply, answer) = oneshot::channel();
        let ticket = Ticket {
            request: BatchRequest {
                id: Uuid::now_v7(),
                lines: lines.to_vec(),
                ttl_seconds,
            },
            reply,
        };
        self.enqueue(merchant, ticket)?;
        // The drain task answers every ticket it takes; a dropped sender means it died.
        answer
            .await
            .map_err(|_| ReserveError::Db(sqlx::Error::Protocol("admission task ended".into())))?
    }

    fn enqueue(self: &Arc<Self>, key: Key, mut ticket: Ticket) -> Result<(), ReserveError> {
        // Senders send only while holding this lock; a retiring drain task removes
        // its queue under the same lock, so no ticket is ever left in a dead queue.
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(queue) = queues.get(&key) {
            match queue.try_send(ticket) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(ReserveError::Busy),
                Err(mpsc::error::TrySendError::Closed(t)) => ticket = t,
            }
        }
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        queue.try_send(ticket).map_err(|_| ReserveError::Busy)?;
        queues.insert(key, queue);
        tokio::spawn(Arc::clone(self).drain(key, receiver));
        Ok(())
    }

    async fn drain(self: Arc<Self>, key: Key, mut receiver: mpsc::Receiver<Ticket>) {
        loop {
            let first = match tokio::time::timeout(IDLE, receiver.recv()).await {
                Ok(Some(ticket)) => ticket,
                Ok(None) => return,
                Err(_idle) => {
                    let mut queues = self
                        .queues
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    match receiver.try_recv() {
                        Ok(ticket) => ticket,
                        Err(_) => {
                            queues.remove(&key);
                            return;
                        }
                    }
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(ticket) => batch.push(ticket),
                    Err(_) => break,
                }
            }
            metrics::histogram!("admission_batch_size").record(batch.len() as f64);
            self.grant(&key, batch).await;
        }
    }

    async fn grant(&self, merchant: &Key, batch: Vec<Ticket>) {
        let outcome = async {
            let mut tx = TenantTx::begin(&self.pool, *merchant).await?;
            let requests: Vec<&BatchRequest> = batch.iter().map(|t| &t.request).collect();
            let granted = grant_batch(&mut tx, &requests).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(granted)
        }
        .await;
        match outcome {
            Ok(granted) => {
                for (ticket, result) in batch.into_iter().zip(granted) {
                    let _ = ticket.reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, merchant = %merchant.0, "admission batch failed");
                for ticket in batch {
                    let _ = ticket
                        .reply
                        .send(Err(ReserveError::Db(sqlx::Error::Protocol(format!(
                            "admission batch failed: {err}"
                        )))));
                }
            }
        }
    }
}
