//! The report: the aggregate check a person reads before money moves.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::incident::incident_row;
use super::model::*;
use super::store::{self, LargeDelta, ReportLine};
use super::RemediationError;
use crate::cells::MerchantDb;

/// The aggregate check read before money moves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    pub incident: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bad_version: String,
    pub fixed_version: String,
    /// Confirmed orders placed in the window.
    pub orders_in_window: i64,
    pub adjustments: i64,
    /// Orders of the window with no recorded pricing (cannot be re-priced).
    pub skipped: i64,
    /// Per class and payment-method status.
    pub lines: Vec<ReportLine>,
    pub underpaid: ClassTotal,
    pub overpaid: ClassTotal,
    pub correct: ClassTotal,
    pub largest_deltas: Vec<LargeDelta>,
    /// Σ charged + Σ delta = Σ expected over all rows, and every row alike.
    pub sums_reconcile: bool,
    /// adjustments + skipped = orders in the window.
    pub every_order_scanned: bool,
    /// Whether settle may run (the scan finished and this report covers it).
    pub settle_allowed: bool,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ClassTotal {
    pub orders: i64,
    /// Σ |delta|, in minor units.
    pub amount: i64,
}

/// Produces the report of the incident's scan; once the scan has finished and
/// the sums reconcile, this is what lets `settle` run.
pub async fn report(db: &MerchantDb, id: Uuid) -> Result<Report, RemediationError> {
    let mut tx = db.begin().await?;
    let incident = incident_row(&mut tx, id).await?;
    let lines = store::report_lines(&mut tx, id).await?;
    let largest_deltas = store::largest_deltas(&mut tx, id, 10).await?;
    let (off, adjustments) = store::reconcile(&mut tx, id).await?;
    let orders_in_window =
        crate::checkout::count_confirmed_between(&mut tx, incident.window_from, incident.window_to)
            .await?;
    let sum = |f: fn(&ReportLine) -> i64| lines.iter().map(f).sum::<i64>();
    let sums_reconcile = off == 0 && sum(|l| l.charged) + sum(|l| l.delta) == sum(|l| l.expected);
    let every_order_scanned = adjustments + incident.skipped == orders_in_window;
    let total_of = |class: Class| {
        lines
            .iter()
            .filter(|l| l.class == class)
            .fold(ClassTotal::default(), |t, l| ClassTotal {
                orders: t.orders + l.orders,
                amount: t.amount + l.delta.abs(),
            })
    };
    let settle_allowed = match incident.scan_finished_at {
        Some(finished) if sums_reconcile && every_order_scanned => {
            store::mark_reported(&mut tx, id, finished).await?;
            true
        }
        _ => false,
    };
    tx.commit().await?;
    Ok(Report {
        incident: id,
        from: incident.window_from,
        to: incident.window_to,
        bad_version: incident.bad_version,
        fixed_version: incident.fixed_version,
        orders_in_window,
        adjustments,
        skipped: incident.skipped,
        underpaid: total_of(Class::Underpaid),
        overpaid: total_of(Class::Overpaid),
        correct: total_of(Class::Correct),
        lines,
        largest_deltas,
        sums_reconcile,
        every_order_scanned,
        settle_allowed,
    })
}
