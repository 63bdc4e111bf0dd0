//! The scan: every confirmed order of the window re-priced with the fixed
//! version into `order_adjustments`, resumable from its cursor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use pricing::{CalculatorVersion, RuleSet};
use serde::Serialize;
use uuid::Uuid;

use super::incident::incident_row;
use super::model::*;
use super::store;
use super::{corrupt, RemediationError};
use crate::cells::MerchantDb;
use crate::payments::{MethodStatus, PaymentProvider};

/// What a scan did.
#[derive(Debug, Serialize)]
pub struct ScanSummary {
    pub incident: Uuid,
    /// Orders re-priced in this run (a resumed scan counts only its part).
    pub scanned: i64,
    /// Of the whole scan so far.
    pub scanned_total: i64,
    pub skipped_total: i64,
    pub seconds: f64,
    pub orders_per_second: f64,
}

/// One page of the window's orders, parsed.
pub(super) struct Page {
    rows: Vec<crate::checkout::PricedOrderRow>,
    /// Each row's recorded inputs (`None`: no pricing recorded).
    inputs: Vec<Option<crate::pricing::PricingInputs>>,
}

pub(super) fn parse_page(
    rows: Vec<crate::checkout::PricedOrderRow>,
) -> Result<Page, RemediationError> {
    let inputs = rows
        .iter()
        .map(|row| {
            row.pricing_inputs
                .as_deref()
                .map(|text| serde_json::from_str(text).map_err(|e| corrupt("order pricing", e)))
                .transpose()
        })
        .collect::<Result<_, _>>()?;
    Ok(Page { rows, inputs })
}

/// Re-prices one page of orders with `fixed`: the adjustments, as columns,
/// and how many orders had no recorded pricing.
pub(super) fn reprice_page(
    page: &Page,
    rules: &HashMap<u64, Arc<RuleSet>>,
    fixed: CalculatorVersion,
    provider: &KnownStatuses,
) -> Result<(store::NewAdjustments, i64), RemediationError> {
    let mut out = store::NewAdjustments::default();
    let mut skipped = 0;
    for (row, inputs) in page.rows.iter().zip(&page.inputs) {
        let Some(inputs) = inputs else {
            skipped += 1;
            continue;
        };
        let set = if inputs.ruleset_revision == 0 {
            Arc::new(RuleSet::empty(inputs.cart.currency))
        } else {
            rules
                .get(&inputs.ruleset_revision)
                .cloned()
                .ok_or_else(|| {
                    corrupt(
                        "order pricing",
                        format!("revision {} missing", inputs.ruleset_revision),
                    )
                })?
        };
        let expected = inputs
            .reprice(&set, fixed)
            .map_err(|e| corrupt("re-pricing", e))?
            .total
            .amount;
        let charged = row.total_amount;
        let class = classify(charged, expected);
        out.ids.push(Uuid::now_v7());
        out.orders.push(row.id);
        out.placed.push(row.created_at);
        out.emails.push(row.customer_email.clone());
        out.customers.push(row.customer_id);
        out.charged.push(charged);
        out.expected.push(expected);
        out.currencies.push(row.currency.clone());
        out.classes.push(class.as_str().to_owned());
        out.references.push(row.payment_id);
        out.methods.push(row.payment_method.clone());
        out.method_statuses.push(
            provider
                .method_status(&row.payment_method)
                .as_str()
                .to_owned(),
        );
        out.states.push(State::initial(class).as_str().to_owned());
    }
    Ok((out, skipped))
}

/// Adds to `rules` every revision the page's orders name that it lacks.
pub(super) async fn load_revisions(
    db: &MerchantDb,
    page: &Page,
    rules: &mut HashMap<u64, Arc<RuleSet>>,
) -> Result<(), RemediationError> {
    let missing: std::collections::BTreeSet<u64> = page
        .inputs
        .iter()
        .flatten()
        .map(|i| i.ruleset_revision)
        .filter(|n| *n != 0 && !rules.contains_key(n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for n in missing {
        let revision = crate::pricing::revision(&mut tx, i64::try_from(n).unwrap_or(i64::MAX))
            .await?
            .ok_or_else(|| corrupt("order pricing", format!("revision {n} missing")))?;
        rules.insert(n, Arc::new(revision.rules));
    }
    tx.commit().await?;
    Ok(())
}

/// A page's adjustments with the cursor past it, for the writer.
pub(super) struct Priced {
    adjustments: store::NewAdjustments,
    cursor: (DateTime<Utc>, Uuid),
    orders: i64,
    skipped: i64,
}

/// Re-prices the incident's window from its cursor, `batch` orders a page, in
/// three stages that overlap: the next page is read while this one is parsed
/// and priced (on a blocking thread) and the one before is written. Pages are
/// written in order, each with the cursor past it in one transaction, so a kill
/// at any point resumes where the last commit left off and a rerun adds
/// nothing. `progress(scanned, total)` after each page is written.
pub async fn scan(
    db: &MerchantDb,
    id: Uuid,
    provider: &dyn PaymentProvider,
    batch: i64,
    mut progress: impl FnMut(i64, i64),
) -> Result<ScanSummary, RemediationError> {
    let started = Instant::now();
    let mut tx = db.begin().await?;
    let incident = incident_row(&mut tx, id).await?;
    let fixed: CalculatorVersion = incident
        .fixed_version
        .parse()
        .map_err(|e| corrupt("incident", e))?;
    let total =
        crate::checkout::count_confirmed_between(&mut tx, incident.window_from, incident.window_to)
            .await?;
    tx.commit().await?;
    let (mut scanned_total, mut skipped_total) = (incident.scanned, incident.skipped);
    progress(scanned_total, total);

    // Reader → pricer: pages of rows. Pricer → writer: priced pages, in order.
    let (pages_tx, mut pages_rx) =
        tokio::sync::mpsc::channel::<Vec<crate::checkout::PricedOrderRow>>(2);
    let reader = {
        let db = db.clone();
        let (from, to) = (incident.window_from, incident.window_to);
        let mut after = incident.scan_after_at.zip(incident.scan_after_id);
        tokio::spawn(async move {
            loop {
                let mut tx = db.begin().await?;
                let rows =
                    crate::checkout::confirmed_orders_between(&mut tx, from, to, after, batch)
                        .await?;
                tx.commit().await?;
                let Some(last) = rows.last() else {
                    return Ok::<(), RemediationError>(());
                };
                after = Some((last.created_at, last.id));
                if pages_tx.send(rows).await.is_err() {
                    return Ok(());
                }
            }
        })
    };
    let (priced_tx, mut priced_rx) = tokio::sync::mpsc::channel::<Priced>(2);
    let pricer = async {
        let mut rules: HashMap<u64, Arc<RuleSet>> = HashMap::new();
        while let Some(rows) = pages_rx.recv().await {
            let Some(last) = rows.last() else { continue };
            let cursor = (last.created_at, last.id);
            let orders = i64::try_from(rows.len()).unwrap_or(i64::MAX);
            let page = tokio::task::spawn_blocking(move || parse_page(rows))
                .await
                .map_err(|e| corrupt("scan", e))??;
            load_revisions(db, &page, &mut rules).await?;
            let (adjustments, skipped) = {
                let rules = rules.clone();
                // The sandbox answers method status without I/O; pricing is CPU.
                let statuses: HashMap<String, MethodStatus> = page
                    .rows
                    .iter()
                    .map(|r| {
                        (
                            r.payment_method.clone(),
                            provider.method_status(&r.payment_method),
                        )
                    })
                    .collect();
                tokio::task::spawn_blocking(move || {
                    reprice_page(&page, &rules, fixed, &KnownStatuses(statuses))
                })
                .await
                .map_err(|e| corrupt("scan", e))??
            };
            let priced = Priced {
                adjustments,
                cursor,
                orders,
                skipped,
            };
            if priced_tx.send(priced).await.is_err() {
                break;
            }
        }
        drop(priced_tx);
        Ok::<(), RemediationError>(())
    };
    let writer = async {
        let mut scanned = 0;
        while let Some(page) = priced_rx.recv().await {
            let mut tx = db.begin().await?;
            store::insert_adjustments(&mut tx, id, &page.adjustments).await?;
            store::advance_scan(&mut tx, id, page.cursor, page.orders, page.skipped).await?;
            tx.commit().await?;
            scanned += page.orders;
            scanned_total += page.orders;
            skipped_total += page.skipped;
            progress(scanned_total, total);
        }
        Ok::<i64, RemediationError>(scanned)
    };
    let (priced, written) = tokio::join!(pricer, writer);
    let read = reader.await.map_err(|e| corrupt("scan", e))?;
    priced?;
    read?;
    let scanned = written?;
    let mut tx = db.begin().await?;
    store::finish_scan(&mut tx, id).await?;
    tx.commit().await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(ScanSummary {
        incident: id,
        scanned,
        scanned_total,
        skipped_total,
        seconds,
        orders_per_second: scanned as f64 / seconds.max(1e-9),
    })
}

/// Method statuses looked up before a page is priced off the runtime.
pub(super) struct KnownStatuses(HashMap<String, MethodStatus>);

impl KnownStatuses {
    fn method_status(&self, method: &str) -> MethodStatus {
        self.0
            .get(method)
            .copied()
            .unwrap_or(MethodStatus::NoMandate)
    }
}
