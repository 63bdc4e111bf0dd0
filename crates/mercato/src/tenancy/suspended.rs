//! The merchants the platform suspended, as the background workers see
//! them: read from the directory every few seconds (and set at once by the
//! process that suspends), so a suspended merchant's webhooks and e-mail
//! wait, queued, until it is active again.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// How often the list is read again: the longest a worker of another
/// process keeps sending for a merchant just suspended.
pub const REFRESH: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Suspended(Arc<RwLock<HashSet<Uuid>>>);

impl Suspended {
    pub fn contains(&self, merchant: Uuid) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&merchant)
    }

    /// Every suspended merchant (for a query that skips them).
    pub fn ids(&self) -> Vec<Uuid> {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        set.iter().copied().collect()
    }

    /// Records a change this process made.
    pub fn set(&self, merchant: Uuid, suspended: bool) {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        if suspended {
            set.insert(merchant);
        } else {
            set.remove(&merchant);
        }
    }

    pub async fn refresh(&self, directory: &PgPool) -> Result<(), sqlx::Error> {
        let now: HashSet<Uuid> = super::store::suspended_merchants(directory)
            .await?
            .into_iter()
            .collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(())
    }

    /// Keeps the list current until the process ends.
    pub async fn follow(self, directory: PgPool) {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            if let Err(err) = self.refresh(&directory).await {
                tracing::warn!(error = %err, "reading the suspended merchants failed");
            }
        }
    }
}
