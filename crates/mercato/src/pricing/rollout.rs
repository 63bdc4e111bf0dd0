//! Safe rollout of a new rule-set revision or calculator version, without a deploy:
//! shadow (priced beside what is in force on every quote and checkout, never
//! charged; each order records both totals), then a stable percentage of customers,
//! then everyone; rolled back at once from any stage. And the anomaly check that
//! watches each merchant's order value and discount rate.

use std::time::Duration;

use ::pricing::{CalculatorVersion, Money};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::anomaly::{self, Bands, OrderStats};
use super::store::{self, Arm, RolloutOrderRow, Stage};
pub use super::store::{Alert, Rollout, RolloutSummary};
use super::{corrupt, OrderFacts, Settings};
use crate::db::{MerchantId, TenantTx};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("rule-set revision {0} not found")]
    UnknownRevision(i64),
    #[error("revision {revision} is written in {found}, the settings' currency is {expected}")]
    CurrencyMismatch {
        revision: i64,
        found: String,
        expected: String,
    },
    #[error(
        "the candidate is what is in force already (revision {revision}, calculator {version})"
    )]
    NothingToTry { revision: i64, version: String },
    #[error("rollout {0} is still running: complete or roll it back first")]
    AlreadyRunning(Uuid),
    #[error("a {from} rollout cannot move to {to}")]
    Finished { from: Stage, to: Stage },
    #[error(
        "the rules in force changed since this rollout completed (revision {revision}, calculator {version}): roll back by putting the rules you want in force"
    )]
    Superseded { revision: i64, version: String },
    #[error("percent must be from 1 to 99 in stage percentage")]
    Percent,
    #[error("rollout not found")]
    NotFound,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What is in force now: the live revision's number and the charging calculator.
async fn in_force(tx: &mut TenantTx) -> Result<(Settings, i64), sqlx::Error> {
    let settings = super::settings(tx).await?;
    let live = super::current_rules(tx, &settings).await?;
    let n = i64::try_from(live.rules.revision()).map_err(|e| corrupt("revision", e))?;
    Ok((settings, n))
}

fn check_percent(stage: Stage, percent: Option<i32>) -> Result<i32, RolloutError> {
    match stage {
        Stage::Percentage => percent
            .filter(|p| (1..=99).contains(p))
            .ok_or(RolloutError::Percent),
        Stage::Shadow | Stage::RolledBack => Ok(0),
        Stage::Complete => Ok(100),
    }
}

/// Starts trying `revision` and/or `version` (each defaulting to what is in force)
/// in `stage` (`shadow`, or `percentage` with `percent` of customers).
pub async fn start(
    tx: &mut TenantTx,
    revision: Option<i64>,
    version: Option<CalculatorVersion>,
    stage: Stage,
    percent: Option<i32>,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    store::lock_rules(tx).await?;
    if let Some(running) = store::running_rollout(tx).await? {
        return Err(RolloutError::AlreadyRunning(running.id));
    }
    let percent = check_percent(stage, percent)?;
    let (settings, live_revision) = in_force(tx).await?;
    let candidate_revision = revision.unwrap_or(live_revision);
    if candidate_revision != 0 {
        let found = super::revision(tx, candidate_revision)
            .await?
            .ok_or(RolloutError::UnknownRevision(candidate_revision))?;
        if found.rules.currency() != settings.currency && !found.rules.rules().is_empty() {
            return Err(RolloutError::CurrencyMismatch {
                revision: candidate_revision,
                found: found.rules.currency().as_str().to_owned(),
                expected: settings.currency.as_str().to_owned(),
            });
        }
    }
    let candidate_version = version.unwrap_or(settings.calculator_version);
    if candidate_revision == live_revision && candidate_version == settings.calculator_version {
        return Err(RolloutError::NothingToTry {
            revision: live_revision,
            version: candidate_version.as_str().to_owned(),
        });
    }
    let row = Rollout {
        id: Uuid::now_v7(),
        candidate_revision,
        candidate_version: candidate_version.as_str().to_owned(),
        previous_revision: live_revision,
        previous_version: settings.calculator_version.as_str().to_owned(),
        stage,
        percent,
        actor: actor.to_owned(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    store::insert_rollout(tx, &row).await?;
    Ok(store::rollout(tx, row.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?)
}

/// Moves a rollout on: between `shadow` and `percentage` (any share), to
/// `complete` (the candidate is put in force for everyone), or to `rolled_back`
/// (at once; a completed rollout's predecessor is put back in force).
pub async fn change(
    tx: &mut TenantTx,
    id: Uuid,
    stage: Stage,
    percent: Option<i32>,
) -> Result<Rollout, RolloutError> {
    store::lock_rules(tx).await?;
    let row = store::rollout(tx, id)
        .await?
        .ok_or(RolloutError::NotFound)?;
    let percent = check_percent(stage, percent)?;
    let finished = RolloutError::Finished {
        from: row.stage,
        to: stage,
    };
    match (row.stage, stage) {
        (from, Stage::Shadow | Stage::Percentage) if from.is_running() => {}
        (from, Stage::Complete) if from.is_running() => {
            put_in_force(tx, row.candidate_revision, &row.candidate_version).await?;
        }
        (from, Stage::RolledBack) if from.is_running() => {}
        (Stage::Complete, Stage::RolledBack) => {
            let (settings, live) = in_force(tx).await?;
            let version = settings.calculator_version.as_str();
            if live != row.candidate_revision || version != row.candidate_version {
                return Err(RolloutError::Superseded {
                    revision: live,
                    version: version.to_owned(),
                });
            }
            put_in_force(tx, row.previous_revision, &row.previous_version).await?;
        }
        _ => return Err(finished),
    }
    store::set_rollout_stage(tx, id, stage, percent).await?;
    let row = store::rollout(tx, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(row)
}

async fn put_in_force(tx: &mut TenantTx, revision: i64, version: &str) -> Result<(), sqlx::Error> {
    super::ensure_settings(tx).await?;
    store::set_live_revision(tx, revision).await?;
    store::set_calculator_version(tx, version).await
}

/// One rollout and what its orders show.
pub async fn get(
    tx: &mut TenantTx,
    id: Uuid,
) -> Result<Option<(Rollout, RolloutSummary)>, sqlx::Error> {
    let Some(row) = store::rollout(tx, id).await? else {
        return Ok(None);
    };
    let summary = store::rollout_tally(tx, id).await?;
    Ok(Some((row, summary)))
}

/// The newest rollouts first (at most 100).
pub async fn list(tx: &mut TenantTx) -> Result<Vec<Rollout>, sqlx::Error> {
    store::rollouts(tx, 100).await
}

/// An order priced during a rollout.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutOrder {
    pub order_id: Uuid,
    pub charged: Arm,
    pub live_total: crate::catalog::Money,
    /// Absent when the candidate could not price the cart.
    pub candidate_total: Option<crate::catalog::Money>,
    /// `candidate_total − live_total`, minor units.
    pub delta: Option<i64>,
    pub same_charge: bool,
    pub created_at: DateTime<Utc>,
}

impl From<RolloutOrderRow> for RolloutOrder {
    fn from(r: RolloutOrderRow) -> Self {
        let money = |amount| crate::catalog::Money {
            amount,
            currency: r.currency.clone(),
        };
        RolloutOrder {
            order_id: r.order_id,
            charged: r.charged,
            live_total: money(r.live_total),
            candidate_total: r.candidate_total.map(money),
            delta: r.candidate_total.map(|c| c - r.live_total),
            same_charge: r.same_charge,
            created_at: r.created_at,
        }
    }
}

/// The orders priced during rollout `id`, in order, after `after`.
pub async fn orders(
    tx: &mut TenantTx,
    id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RolloutOrder>, sqlx::Error> {
    Ok(store::rollout_orders(tx, id, after, limit)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// What a quote priced with the candidate beside the live price (or the live
/// beside the candidate, when the customer's share is charged the candidate).
#[derive(Clone, Debug)]
pub struct ShadowPrice {
    pub rollout: Uuid,
    pub charged: Arm,
    pub live_total: Money,
    /// None: the candidate could not price the cart.
    pub candidate_total: Option<Money>,
    pub same_charge: bool,
}

impl ShadowPrice {
    /// Counts the comparison in the metrics (every quote and checkout).
    pub(super) fn observe(&self) {
        let outcome = match (self.candidate_total, self.same_charge) {
            (None, _) => "candidate_failed",
            (Some(_), true) => "same",
            (Some(_), false) => "different",
        };
        metrics::counter!("pricing_shadow_priced_total", "outcome" => outcome, "charged" => self.charged.as_str())
            .increment(1);
        if let Some(candidate) = self.candidate_total {
            let delta = candidate.amount.saturating_sub(self.live_total.amount);
            metrics::histogram!("pricing_shadow_delta_minor_units")
                .record(delta.unsigned_abs() as f64);
        }
    }

    /// Stores the comparison with the order that was charged.
    pub(super) async fn record(&self, tx: &mut TenantTx, order: Uuid) -> Result<(), sqlx::Error> {
        let row = RolloutOrderRow {
            order_id: order,
            charged: self.charged,
            currency: self.live_total.currency.as_str().to_owned(),
            live_total: self.live_total.amount,
            candidate_total: self.candidate_total.map(|m| m.amount),
            same_charge: self.same_charge,
            created_at: Utc::now(),
        };
        store::insert_rollout_order(tx, self.rollout, &row).await
    }
}

/// The periods an anomaly check compares.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    /// The recent period judged.
    pub window: Duration,
    /// The trailing period before it that sets what is normal.
    pub baseline: Duration,
}

impl Default for Periods {
    fn default() -> Self {
        Periods {
            window: Duration::from_secs(3600),
            baseline: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One currency's measures over the window and the baseline.
#[derive(Debug, Serialize, ToSchema)]
pub struct Measured {
    pub currency: String,
    pub window: OrderStats,
    pub baseline: OrderStats,
}

/// Checks the merchant's window against its baseline as of `now`; stores (and
/// counts in the metrics) an alert for each measure out of band, unless the same
/// alert was raised within the last window. Returns what it measured and the
/// alerts it raised.
pub async fn check_anomalies(
    tx: &mut TenantTx,
    facts: &dyn OrderFacts,
    now: DateTime<Utc>,
    periods: Periods,
    bands: &Bands,
) -> Result<(Vec<Measured>, Vec<Alert>), sqlx::Error> {
    let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let window_start = now - span(periods.window);
    let baseline_start = window_start - span(periods.baseline);
    let window = facts.revenue(tx, window_start, now).await?;
    let baseline = facts.revenue(tx, baseline_start, window_start).await?;
    let mut measured = Vec::new();
    let mut raised = Vec::new();
    for w in window {
        let b = baseline
            .iter()
            .find(|b| b.currency == w.currency)
            .map(|b| b.stats)
            .unwrap_or_default();
        for finding in anomaly::assess(&w.stats, &b, bands) {
            let row = Alert {
                id: Uuid::now_v7(),
                kind: finding.kind,
                currency: w.currency.clone(),
                window_start,
                window_end: now,
                baseline_start,
                observed: finding.observed,
                expected: finding.expected,
                window_orders: w.stats.orders,
                baseline_orders: b.orders,
                created_at: now,
            };
            if store::insert_alert(tx, &row, window_start).await? {
                crate::events::emit(
                    tx,
                    crate::events::EventType::PricingAnomaly,
                    serde_json::json!({"alert_id": row.id, "kind": finding.kind.as_str(),
                        "currency": row.currency, "observed": finding.observed,
                        "expected": finding.expected}),
                )
                .await?;
                metrics::counter!("pricing_anomalies_total", "kind" => finding.kind.as_str())
                    .increment(1);
                tracing::warn!(merchant = %tx.merchant_id().0, kind = %finding.kind,
                    observed = finding.observed, expected = finding.expected, "pricing anomaly");
                raised.push(row);
            }
        }
        measured.push(Measured {
            currency: w.currency,
            window: w.stats,
            baseline: b,
        });
    }
    Ok((measured, raised))
}

/// Alerts, newest first (at most 100).
pub async fn alerts(tx: &mut TenantTx) -> Result<Vec<Alert>, sqlx::Error> {
    store::alerts(tx, 100).await
}

/// Runs the anomaly check for every merchant with orders in the window, each tick.
pub async fn watch_anomalies(
    app: PgPool,
    worker: PgPool,
    facts: Arc<dyn OrderFacts>,
    every: Duration,
    periods: Periods,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = Utc::now();
        let since = now - chrono::Duration::from_std(periods.window).unwrap_or_default();
        let merchants = match worker.acquire().await {
            Ok(mut conn) => facts.merchants_with_orders_since(&mut conn, since).await,
            Err(e) => Err(e),
        };
        let merchants = match merchants {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, "listing merchants for the anomaly check failed");
                continue;
            }
        };
        for merchant in merchants {
            let checked = async {
                let mut tx = TenantTx::begin(&app, MerchantId(merchant)).await?;
                check_anomalies(&mut tx, facts.as_ref(), now, periods, &Bands::default()).await?;
                tx.commit().await
            }
            .await;
            if let Err(err) = checked {
                tracing::warn!(%merchant, error = %err, "anomaly check failed; will retry");
            }
        }
    }
}
