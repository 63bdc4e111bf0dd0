//! Remediation of a pricing incident (brief §3): an incident names a window and
//! the bad and fixed calculator versions; the scan re-prices every confirmed
//! order of the window with the fixed version into `order_adjustments`; the
//! report is the aggregate check a person reads; settle charges, asks, offers,
//! refunds and credits, each **exactly once** across crashes: every external
//! effect is keyed (`effect_key`) and the key written before the call, and each
//! state change commits with the e-mail it queues and the event it emits.
//!
//! Owns tables `remediation_incidents`, `order_adjustments` and
//! `remediation_effects`. Reads orders through `checkout`, prices through
//! `pricing`, pays through a `PaymentProvider`, credits through `wallet`,
//! writes to customers through `mail`.

pub mod cli;
mod effects;
pub mod http;
mod incident;
mod links;
mod messages;
mod model;
pub mod privacy;
mod report;
mod scan;
mod settle;
mod status;
mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use incident::{incident, merchant_of, open, Incident};
pub use links::{choose, give_payment_method, link_merchant, LinkError, LinkOutcome};
pub use messages::Template;
pub use model::{
    classify, effect_key, next_step, sign_link, verify_link, Choice, Class, LinkPurpose,
    ReminderPolicy, Situation, State, Step, TokenError,
};
pub use report::{report, ClassTotal, Report};
pub use scan::{scan, ScanSummary};
pub use settle::{SettleSummary, Settlement};
pub use status::{status, EffectCount, FailureCount, MailCount, StateCount, Status};
pub use store::{Escalation, LargeDelta, ReportLine};

use crate::db::TenantTx;

#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    #[error("{0}")]
    UnknownVersion(String),
    #[error("the window is empty: {0}")]
    EmptyWindow(String),
    #[error("the window is still open: it ends at {0}, in the future")]
    StillOpen(DateTime<Utc>),
    #[error("the window overlaps open incident {0} of this merchant")]
    Overlaps(Uuid),
    #[error("incident {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Route(#[from] crate::cells::RouteError),
    #[error(
        "incident {0} is not scanned to the end yet: run `mercato remediate scan --incident {0}`"
    )]
    NotScanned(Uuid),
    #[error("the report of incident {0}'s scan has not been produced: run `mercato remediate report --incident {0}` and read it before money moves")]
    NotReported(Uuid),
    #[error("a stored order does not parse: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> RemediationError {
    RemediationError::Corrupt(format!("{what}: {err}"))
}

/// How settle treats customers and the provider.
#[derive(Clone, Debug)]
pub struct SettleOptions {
    /// Calls per second to the payment provider, at most.
    pub provider_rate: f64,
    pub reminders: ReminderPolicy,
    /// Where the customers' links point (the service's public URL).
    pub link_base: String,
    /// How long a link works.
    pub link_ttl: Duration,
    /// The apology code: percent off a next order of at least `compensation_min_subtotal`.
    pub compensation_percent: u32,
    pub compensation_min_subtotal: i64,
    /// Wait before a retryable provider failure is tried again (same key).
    pub retry_after: Duration,
}

impl Default for SettleOptions {
    fn default() -> Self {
        SettleOptions {
            provider_rate: 20.0,
            reminders: ReminderPolicy::default(),
            link_base: "http://127.0.0.1:8080".into(),
            link_ttl: Duration::from_secs(30 * 24 * 3600),
            compensation_percent: 5,
            compensation_min_subtotal: 5000,
            retry_after: Duration::from_secs(60),
        }
    }
}

/// The support queue: cases that reminders did not settle.
pub async fn escalations(
    tx: &mut TenantTx,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Escalation>, sqlx::Error> {
    store::escalations(tx, after, limit).await
}
