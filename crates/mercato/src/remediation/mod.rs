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
pub mod http;
mod messages;
mod model;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pricing::{CalculatorVersion, RuleSet};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use messages::Template;
pub use model::{
    classify, effect_key, next_step, sign_link, verify_link, Choice, Class, LinkPurpose,
    ReminderPolicy, Situation, State, Step, TokenError,
};
pub use store::{Escalation, LargeDelta, ReportLine};

use crate::cells::{Cells, MerchantDb};
use crate::db::{MerchantId, TenantTx};
use crate::events::EventType;
use crate::payments::{ChargeRequest, MethodStatus, PaymentError, PaymentProvider};
use store::AdjustmentRow;

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

/// An incident as the commands print it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Incident {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bad_version: String,
    pub fixed_version: String,
    pub scanned: i64,
    pub scan_finished: bool,
    pub reported: bool,
}

/// Opens an incident of `merchant` over `[from, to)`. Refused, with nothing
/// written, for an unknown version, an empty or still open window, or one that
/// overlaps another open incident of the merchant.
pub async fn open(
    db: &MerchantDb,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bad: &str,
    fixed: &str,
) -> Result<Uuid, RemediationError> {
    let merchant = db.merchant();
    let version = |flag: &str, raw: &str| {
        raw.parse::<CalculatorVersion>()
            .map_err(|e| RemediationError::UnknownVersion(format!("{flag}: {e}")))
    };
    let bad = version("--bad-version", bad)?;
    let fixed = version("--fixed-version", fixed)?;
    if fixed.is_withdrawn() {
        return Err(RemediationError::UnknownVersion(format!(
            "--fixed-version: {fixed} is withdrawn; the fix must be a version in force"
        )));
    }
    if from >= to {
        return Err(RemediationError::EmptyWindow(
            "--from must be before --to".into(),
        ));
    }
    if to > Utc::now() {
        return Err(RemediationError::StillOpen(to));
    }
    let mut tx = db.begin().await?;
    if crate::checkout::count_confirmed_between(&mut tx, from, to).await? == 0 {
        return Err(RemediationError::EmptyWindow(format!(
            "no confirmed orders of merchant {merchant} were placed from {from} to {to}"
        )));
    }
    store::lock_incidents(&mut tx).await?;
    if let Some(other) = store::overlapping_open(&mut tx, from, to).await? {
        return Err(RemediationError::Overlaps(other));
    }
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    store::insert_incident(&mut tx, id, from, to, bad.as_str(), fixed.as_str(), &secret).await?;
    tx.commit().await?;
    Ok(id)
}

/// The database of the merchant whose incident `id` is (the commands name
/// only the incident): the cell that serves the merchant and holds the
/// incident. A cell a move left a copy in (`--keep-source`) does not count.
pub async fn merchant_of(cells: &Cells, id: Uuid) -> Result<MerchantDb, RemediationError> {
    for cell in cells.all() {
        let Some(merchant) = store::merchant_of_incident(&cell.db.app, id).await? else {
            continue;
        };
        let db = cells.merchant_db_for_job(MerchantId(merchant)).await?;
        if db.cell_name() == cell.name {
            return Ok(db);
        }
    }
    Err(RemediationError::NotFound(id))
}

async fn incident_row(tx: &mut TenantTx, id: Uuid) -> Result<store::IncidentRow, RemediationError> {
    store::incident(tx, id)
        .await?
        .ok_or(RemediationError::NotFound(id))
}

pub async fn incident(db: &MerchantDb, id: Uuid) -> Result<Incident, RemediationError> {
    let merchant = db.merchant();
    let mut tx = db.begin().await?;
    let row = incident_row(&mut tx, id).await?;
    tx.commit().await?;
    let reported = row.reported();
    Ok(Incident {
        id: row.id,
        merchant_id: merchant.0,
        from: row.window_from,
        to: row.window_to,
        bad_version: row.bad_version,
        fixed_version: row.fixed_version,
        scanned: row.scanned,
        scan_finished: row.scan_finished_at.is_some(),
        reported,
    })
}

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
struct Page {
    rows: Vec<crate::checkout::PricedOrderRow>,
    /// Each row's recorded inputs (`None`: no pricing recorded).
    inputs: Vec<Option<crate::pricing::PricingInputs>>,
}

fn parse_page(rows: Vec<crate::checkout::PricedOrderRow>) -> Result<Page, RemediationError> {
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
fn reprice_page(
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
async fn load_revisions(
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
struct Priced {
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
struct KnownStatuses(HashMap<String, MethodStatus>);

impl KnownStatuses {
    fn method_status(&self, method: &str) -> MethodStatus {
        self.0
            .get(method)
            .copied()
            .unwrap_or(MethodStatus::NoMandate)
    }
}

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

/// Paces provider calls to a rate.
struct Pacer {
    every: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            every: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        self.next = self.next.max(now) + self.every;
    }
}

/// What one settle run did.
#[derive(Debug, Default, Serialize)]
pub struct SettleSummary {
    pub steps: u64,
    pub charged: u64,
    pub asked_for_payment_method: u64,
    pub reminders: u64,
    pub escalated: u64,
    pub offered_choice: u64,
    pub refunded: u64,
    pub credited: u64,
    pub declined_by_customer: u64,
    pub retry_later: u64,
    pub mails_sent: u64,
    /// Work left for later: reminders not yet due, retries, customers' answers.
    pub waiting: i64,
}

/// Carries out the steps that fit `merchant`'s adjustments (see `model::next_step`).
pub struct Settlement {
    /// The merchant's database (resolved for a job: see `Cells::merchant_db_for_job`).
    pub db: MerchantDb,
    pub provider: Arc<dyn PaymentProvider>,
    pub options: SettleOptions,
}

/// The apology code for an incident (one promo rule, one use per customer).
fn apology_code(incident: Uuid) -> (String, String) {
    let short = incident.simple().to_string();
    let tail = &short[short.len() - 8..];
    (
        format!("apology-{tail}"),
        format!("SORRY-{}", tail.to_uppercase()),
    )
}

impl Settlement {
    /// Runs every step due now for incident `id`. Refused until the scan
    /// finished and its report was produced.
    pub async fn run(
        &self,
        id: Uuid,
        mail: &crate::mail::Sender,
        mut progress: impl FnMut(&SettleSummary),
    ) -> Result<SettleSummary, RemediationError> {
        let mut tx = self.db.begin().await?;
        let incident = incident_row(&mut tx, id).await?;
        if incident.scan_finished_at.is_none() {
            return Err(RemediationError::NotScanned(id));
        }
        if !incident.reported() {
            return Err(RemediationError::NotReported(id));
        }
        crate::mail::give_up_interrupted(&mut tx).await?;
        tx.commit().await?;
        let promo = self.ensure_apology_rule(&incident).await?;
        let mut summary = SettleSummary::default();
        let mut pacer = Pacer::new(self.options.provider_rate);
        let mut after = Uuid::nil();
        loop {
            let mut tx = self.db.begin().await?;
            let due = store::due(&mut tx, id, after, 200).await?;
            tx.commit().await?;
            let Some(last) = due.last() else { break };
            after = last.id;
            for adjustment in due {
                self.step(&incident, adjustment, &promo, &mut pacer, &mut summary)
                    .await?;
            }
            summary.mails_sent += mail.send_queued(&self.db, 10_000).await? as u64;
            progress(&summary);
        }
        summary.mails_sent += mail.send_queued(&self.db, 10_000).await? as u64;
        let status = status(&self.db, id).await?;
        summary.waiting = status.waiting_on_customers + status.waiting_to_retry;
        Ok(summary)
    }

    /// The incident's apology rule (created once through the pricing rules):
    /// percent off a next order above a threshold, for the customers charged
    /// the difference, once each. Returns its code and terms.
    async fn ensure_apology_rule(
        &self,
        incident: &store::IncidentRow,
    ) -> Result<(String, String), RemediationError> {
        let (rule_id, code) = apology_code(incident.id);
        let o = &self.options;
        let mut tx = self.db.begin().await?;
        let settings = crate::pricing::settings(&mut tx).await?;
        let terms = format!(
            "{}% off a next order of at least {}, once",
            o.compensation_percent,
            messages::amount(o.compensation_min_subtotal, settings.currency.as_str())
        );
        let current = crate::pricing::current_rules(&mut tx, &settings).await?;
        let exists = current
            .document
            .get("rules")
            .and_then(|r| r.as_array())
            .is_some_and(|rules| rules.iter().any(|r| r["id"] == rule_id.as_str()));
        let emails = store::chargeable_emails(&mut tx, incident.id).await?;
        if exists || emails.is_empty() {
            tx.commit().await?;
            return Ok((code, terms));
        }
        let mut document = current.document.clone();
        let rule = serde_json::json!({
            "id": rule_id,
            "priority": 1,
            "stackable": true,
            "when": {
                "promo_code": code,
                "min_subtotal": {"amount": o.compensation_min_subtotal, "currency": settings.currency.as_str()},
                "customer_email_in": emails,
            },
            "then": {"percent_off": o.compensation_percent},
            "limits": {"uses_per_customer": 1},
        });
        match document.get_mut("rules").and_then(|r| r.as_array_mut()) {
            Some(rules) => rules.push(rule),
            None => document = serde_json::json!({"rules": [rule]}),
        }
        ::pricing::RuleSet::from_value(&document, settings.currency)
            .map_err(|e| corrupt("apology rule", format!("{e:?}")))?;
        crate::pricing::put_rules(&mut tx, &settings, &document, "remediation", true).await?;
        tx.commit().await?;
        Ok((code, terms))
    }

    async fn step(
        &self,
        incident: &store::IncidentRow,
        a: AdjustmentRow,
        promo: &(String, String),
        pacer: &mut Pacer,
        summary: &mut SettleSummary,
    ) -> Result<(), RemediationError> {
        let situation = Situation {
            class: a.class,
            state: a.state,
            method: a.payment_method_status,
            reminders_sent: u32::try_from(a.reminders_sent).unwrap_or(0),
            due: a.next_action_at.is_none_or(|t| t <= Utc::now()),
            choice: a.choice,
            new_method: a.new_payment_method.is_some(),
        };
        let step = next_step(&situation, &self.options.reminders);
        summary.steps += 1;
        let links = |purpose: LinkPurpose| self.links(incident, &a, purpose);
        match step {
            Step::Wait => {}
            Step::Charge => {
                pacer.wait().await;
                let method = a.payment_method.clone();
                let charged = self
                    .charge(
                        &a,
                        "charge",
                        &method,
                        Some(promo),
                        links(LinkPurpose::PaymentMethod),
                    )
                    .await?;
                match charged {
                    Charged::Yes => summary.charged += 1,
                    Charged::Retry => summary.retry_later += 1,
                    Charged::Refused => summary.asked_for_payment_method += 1,
                }
            }
            Step::ChargeNewMethod => {
                pacer.wait().await;
                let method = a.new_payment_method.clone().unwrap_or_default();
                let step = customer_charge_step(&method);
                match self.charge(&a, &step, &method, None, Vec::new()).await? {
                    Charged::Yes => summary.charged += 1,
                    Charged::Retry => summary.retry_later += 1,
                    Charged::Refused => {}
                }
            }
            Step::AskForPaymentMethod => {
                let wait = self.options.reminders.wait_after(0);
                self.move_with_mail(
                    &a,
                    State::AwaitingPaymentMethod,
                    0,
                    Some(after(wait)),
                    None,
                    Some((
                        Template::UnderpaidUpdateCard,
                        links(LinkPurpose::PaymentMethod),
                    )),
                )
                .await?;
                summary.asked_for_payment_method += 1;
            }
            Step::Remind(n) => {
                let wait = self.options.reminders.wait_after(n);
                let mut tx = self.db.begin().await?;
                let sent = i32::try_from(n).unwrap_or(i32::MAX);
                if store::count_reminder(&mut tx, a.id, sent, after(wait)).await? {
                    queue_mail(
                        &mut tx,
                        &a,
                        Template::Reminder(n),
                        None,
                        links(LinkPurpose::PaymentMethod),
                    )
                    .await?;
                    tx.commit().await?;
                    summary.reminders += 1;
                }
            }
            Step::Escalate => {
                self.move_with_mail(
                    &a,
                    State::Escalated,
                    a.reminders_sent,
                    None,
                    Some(
                        a.last_error
                            .as_deref()
                            .unwrap_or("no new payment method after every reminder"),
                    ),
                    None,
                )
                .await?;
                summary.escalated += 1;
            }
            Step::OfferChoice => {
                self.move_with_mail(
                    &a,
                    State::AwaitingChoice,
                    0,
                    None,
                    None,
                    Some((Template::OverpaidChoice, links(LinkPurpose::Choice))),
                )
                .await?;
                summary.offered_choice += 1;
            }
            Step::CarryOut(choice) => {
                if choice == Choice::Refund {
                    pacer.wait().await;
                }
                match self.carry_out(&a, choice).await? {
                    CarriedOut::Done => match choice {
                        Choice::Refund => summary.refunded += 1,
                        Choice::Credit => summary.credited += 1,
                        Choice::None => summary.declined_by_customer += 1,
                    },
                    CarriedOut::Retry => summary.retry_later += 1,
                }
            }
        }
        Ok(())
    }

    /// The links a message carries: one per choice, or the payment-method page.
    fn links(
        &self,
        incident: &store::IncidentRow,
        a: &AdjustmentRow,
        purpose: LinkPurpose,
    ) -> Vec<(&'static str, String)> {
        let expires = Utc::now().timestamp()
            + i64::try_from(self.options.link_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let token = sign_link(
            &incident.link_secret,
            self.db.merchant().0,
            a.id,
            purpose,
            expires,
        );
        let base = self.options.link_base.trim_end_matches('/');
        match purpose {
            LinkPurpose::Choice => [
                ("Refund it to my payment method", Choice::Refund),
                ("Give me store credit", Choice::Credit),
                ("Keep things as they are", Choice::None),
            ]
            .into_iter()
            .map(|(label, choice)| {
                (
                    label,
                    format!(
                        "{base}/v1/adjustments/{}/choice?token={token}&choice={choice}",
                        a.id
                    ),
                )
            })
            .collect(),
            LinkPurpose::PaymentMethod => vec![(
                "Give a payment method",
                format!(
                    "{base}/v1/adjustments/{}/payment-method?token={token}",
                    a.id
                ),
            )],
        }
    }

    /// Moves `a` to `to` and queues its message, in one transaction.
    async fn move_with_mail(
        &self,
        a: &AdjustmentRow,
        to: State,
        reminders: i32,
        next: Option<DateTime<Utc>>,
        error: Option<&str>,
        mail: Option<(Template, Vec<(&'static str, String)>)>,
    ) -> Result<bool, RemediationError> {
        let mut tx = self.db.begin().await?;
        if !store::transition(&mut tx, a.id, a.state, to, reminders, next, error).await? {
            return Ok(false);
        }
        if let Some((template, links)) = mail {
            queue_mail(&mut tx, a, template, None, links).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Charges the difference to `method` under the adjustment's key for `step`.
    async fn charge(
        &self,
        a: &AdjustmentRow,
        step: &str,
        method: &str,
        promo: Option<&(String, String)>,
        ask_links: Vec<(&'static str, String)>,
    ) -> Result<Charged, RemediationError> {
        charge(
            &self.db,
            self.provider.as_ref(),
            &self.options,
            a,
            step,
            method,
            promo,
            ask_links,
        )
        .await
    }

    async fn carry_out(
        &self,
        a: &AdjustmentRow,
        choice: Choice,
    ) -> Result<CarriedOut, RemediationError> {
        carry_out(&self.db, self.provider.as_ref(), &self.options, a, choice).await
    }
}

fn after(wait: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::days(365))
}

async fn queue_mail(
    tx: &mut TenantTx,
    a: &AdjustmentRow,
    template: Template,
    promo: Option<&(String, String)>,
    links: Vec<(&'static str, String)>,
) -> Result<(), RemediationError> {
    let facts = messages::Facts {
        order_id: a.order_id,
        order_date: a.order_placed_at.format("%Y-%m-%d").to_string(),
        charged: a.charged,
        expected: a.expected,
        currency: &a.currency,
        promo_code: promo.map(|(code, _)| code.as_str()),
        promo_terms: promo.map(|(_, terms)| terms.clone()),
        links,
    };
    let key = effect_key(a.id, &template.step());
    let mail = messages::render(template, key, &a.customer_email, &facts);
    crate::mail::enqueue(tx, &mail).await?;
    Ok(())
}

/// Moves `a` from `from` to settled; `false` when another run got there first
/// (then the caller queues no mail and emits no event: they were the winner's).
async fn mark_settled(
    tx: &mut TenantTx,
    a: &AdjustmentRow,
    from: State,
) -> Result<bool, sqlx::Error> {
    store::transition(tx, a.id, from, State::Settled, a.reminders_sent, None, None).await
}

async fn settled_event(
    tx: &mut TenantTx,
    a: &AdjustmentRow,
    outcome: &str,
    amount: i64,
) -> Result<(), sqlx::Error> {
    crate::events::emit(
        tx,
        EventType::AdjustmentSettled,
        serde_json::json!({
            "adjustment_id": a.id,
            "incident_id": a.incident_id,
            "order_id": a.order_id,
            "outcome": outcome,
            "amount": {"amount": amount, "currency": a.currency},
        }),
    )
    .await
    .map(|_| ())
}

/// The step (and so the key) of charging a method the customer gave: one key
/// per method, so the same method again repeats its call and another gets its own.
fn customer_charge_step(method: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(method.as_bytes());
    format!("customer_charge_{}", hex::encode(&digest[..6]))
}

enum Charged {
    Yes,
    /// The provider's answer is unknown or it was busy: the same key again later.
    Retry,
    /// A final refusal: the customer is asked for a new method.
    Refused,
}

#[allow(clippy::too_many_arguments)]
async fn charge(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    options: &SettleOptions,
    a: &AdjustmentRow,
    step: &str,
    method: &str,
    promo: Option<&(String, String)>,
    ask_links: Vec<(&'static str, String)>,
) -> Result<Charged, RemediationError> {
    let merchant = db.merchant();
    let key = effect_key(a.id, step);
    let kind = if step == "charge" {
        "charge"
    } else {
        "customer_charge"
    };
    let mut tx = db.begin().await?;
    store::begin_effect(&mut tx, &key, a.id, kind, a.delta).await?;
    tx.commit().await?;
    let request = ChargeRequest {
        idempotency_key: key.clone(),
        payment_method: method.to_owned(),
        amount: a.delta,
        currency: a.currency.clone(),
    };
    let result = if kind == "customer_charge" {
        // The customer is present (they gave the method through the link).
        match provider.authorize(merchant, &request).await {
            Ok(p) => provider.capture(merchant, p.id).await,
            Err(e) => Err(e),
        }
    } else {
        provider.charge_off_session(merchant, &request).await
    };
    // An answer lost on the way back: the provider's record under the key says
    // whether the charge went through.
    let result = match result {
        Err(err) if err.is_retryable() => match provider.find(merchant, &key).await {
            Ok(Some(p)) if p.status == crate::payments::PaymentStatus::Captured => Ok(p),
            _ => Err(err),
        },
        other => other,
    };
    let mut tx = db.begin().await?;
    let outcome = match result {
        Ok(payment) => {
            store::finish_effect(&mut tx, &key, true, &payment.id.to_string()).await?;
            if mark_settled(&mut tx, a, a.state).await? {
                queue_mail(&mut tx, a, Template::UnderpaidCharged, promo, Vec::new()).await?;
                settled_event(&mut tx, a, "charged", a.delta).await?;
            }
            Charged::Yes
        }
        Err(err) if err.is_retryable() => {
            store::transition(
                &mut tx,
                a.id,
                a.state,
                a.state,
                a.reminders_sent,
                Some(after(options.retry_after)),
                Some(&err.to_string()),
            )
            .await?;
            Charged::Retry
        }
        Err(err) => {
            store::finish_effect(&mut tx, &key, false, &err.to_string()).await?;
            if a.state == State::Pending {
                // Declined, expired or needing the customer: ask them.
                let wait = options.reminders.wait_after(0);
                if store::transition(
                    &mut tx,
                    a.id,
                    State::Pending,
                    State::AwaitingPaymentMethod,
                    0,
                    Some(after(wait)),
                    Some(&err.to_string()),
                )
                .await?
                {
                    queue_mail(&mut tx, a, Template::UnderpaidUpdateCard, None, ask_links).await?;
                }
            } else {
                // The method the customer gave failed: forget it, keep waiting.
                store::set_new_method(&mut tx, a.id, None).await?;
                store::transition(
                    &mut tx,
                    a.id,
                    a.state,
                    a.state,
                    a.reminders_sent,
                    a.next_action_at,
                    Some(&err.to_string()),
                )
                .await?;
            }
            Charged::Refused
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

enum CarriedOut {
    Done,
    Retry,
}

async fn carry_out(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    options: &SettleOptions,
    a: &AdjustmentRow,
    choice: Choice,
) -> Result<CarriedOut, RemediationError> {
    let merchant = db.merchant();
    let owed = -a.delta;
    match choice {
        Choice::Refund => {
            let key = effect_key(a.id, "refund");
            let mut tx = db.begin().await?;
            store::begin_effect(&mut tx, &key, a.id, "refund", owed).await?;
            tx.commit().await?;
            let result = match a.payment_reference {
                Some(payment) => provider.refund_amount(merchant, payment, owed, &key).await,
                None => Err(PaymentError::NotFound(Uuid::nil())),
            };
            let mut tx = db.begin().await?;
            let outcome = match result {
                Ok(()) => {
                    store::finish_effect(&mut tx, &key, true, "refunded").await?;
                    if mark_settled(&mut tx, a, State::ChoiceMade).await? {
                        queue_mail(&mut tx, a, Template::RefundDone, None, Vec::new()).await?;
                        settled_event(&mut tx, a, "refunded", owed).await?;
                    }
                    CarriedOut::Done
                }
                Err(err) if err.is_retryable() => {
                    store::transition(
                        &mut tx,
                        a.id,
                        State::ChoiceMade,
                        State::ChoiceMade,
                        0,
                        Some(after(options.retry_after)),
                        Some(&err.to_string()),
                    )
                    .await?;
                    CarriedOut::Retry
                }
                Err(err) => {
                    // The provider will not refund: a person takes it from here.
                    store::finish_effect(&mut tx, &key, false, &err.to_string()).await?;
                    store::transition(
                        &mut tx,
                        a.id,
                        State::ChoiceMade,
                        State::Escalated,
                        0,
                        None,
                        Some(&format!("refund refused: {err}")),
                    )
                    .await?;
                    CarriedOut::Done
                }
            };
            tx.commit().await?;
            Ok(outcome)
        }
        Choice::Credit => {
            // The credit, its record and the state change are one transaction.
            let key = effect_key(a.id, "credit");
            let mut tx = db.begin().await?;
            if mark_settled(&mut tx, a, State::ChoiceMade).await? {
                store::begin_effect(&mut tx, &key, a.id, "credit", owed).await?;
                crate::wallet::credit(&mut tx, &a.customer_email, owed, &a.currency, &key).await?;
                store::finish_effect(&mut tx, &key, true, "credited").await?;
                queue_mail(&mut tx, a, Template::CreditDone, None, Vec::new()).await?;
                settled_event(&mut tx, a, "credited", owed).await?;
            }
            tx.commit().await?;
            Ok(CarriedOut::Done)
        }
        Choice::None => {
            let mut tx = db.begin().await?;
            if mark_settled(&mut tx, a, State::ChoiceMade).await? {
                settled_event(&mut tx, a, "declined", 0).await?;
            }
            tx.commit().await?;
            Ok(CarriedOut::Done)
        }
    }
}

/// Where an incident stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub incident: Uuid,
    pub scanned: i64,
    pub scan_finished: bool,
    pub reported: bool,
    /// Adjustments per state and class, with Σ |delta|.
    pub states: Vec<StateCount>,
    /// External effects per step and outcome, with the money.
    pub effects: Vec<EffectCount>,
    pub charged: i64,
    pub refunded: i64,
    pub credited: i64,
    pub waiting_on_customers: i64,
    pub waiting_to_retry: i64,
    pub escalated: i64,
    /// The commonest errors, with how many adjustments last saw each.
    pub failures: Vec<FailureCount>,
    /// Remediation e-mails per status (of all the merchant's incidents).
    pub mail: Vec<MailCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StateCount {
    pub state: State,
    pub class: Class,
    pub adjustments: i64,
    pub amount: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EffectCount {
    pub step: String,
    pub status: String,
    pub count: i64,
    pub amount: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailureCount {
    pub error: String,
    pub adjustments: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MailCount {
    pub status: String,
    pub count: i64,
}

pub async fn status(db: &MerchantDb, id: Uuid) -> Result<Status, RemediationError> {
    let mut tx = db.begin().await?;
    let incident = incident_row(&mut tx, id).await?;
    let tally = store::tally(&mut tx, id).await?;
    // Mail keys start with the adjustment's: the incident's are those of its adjustments.
    let mail_rows = crate::mail::counts(&mut tx, "adj_").await?;
    tx.commit().await?;
    let moved = |step: &str| {
        tally
            .effects
            .iter()
            .filter(|(s, st, _, _)| s == step && st == "succeeded")
            .map(|(_, _, _, amount)| amount)
            .sum::<i64>()
    };
    let in_state = |states: &[State]| {
        tally
            .states
            .iter()
            .filter(|(s, _, _, _)| states.contains(s))
            .map(|(_, _, n, _)| n)
            .sum::<i64>()
    };
    let waiting_to_retry = tally
        .states
        .iter()
        .filter(|(s, c, _, _)| *s == State::Pending && *c != Class::Correct)
        .map(|(_, _, n, _)| n)
        .sum::<i64>();
    Ok(Status {
        incident: id,
        scanned: incident.scanned,
        scan_finished: incident.scan_finished_at.is_some(),
        reported: incident.reported(),
        charged: moved("charge") + moved("customer_charge"),
        refunded: moved("refund"),
        credited: moved("credit"),
        waiting_on_customers: in_state(&[State::AwaitingChoice, State::AwaitingPaymentMethod]),
        waiting_to_retry,
        escalated: in_state(&[State::Escalated]),
        states: tally
            .states
            .into_iter()
            .map(|(state, class, adjustments, amount)| StateCount {
                state,
                class,
                adjustments,
                amount,
            })
            .collect(),
        effects: tally
            .effects
            .into_iter()
            .map(|(step, status, count, amount)| EffectCount {
                step,
                status,
                count,
                amount,
            })
            .collect(),
        failures: tally
            .failures
            .into_iter()
            .map(|(error, adjustments)| FailureCount { error, adjustments })
            .collect(),
        mail: mail_rows
            .into_iter()
            .map(|(status, count)| MailCount {
                status: status.as_str().to_owned(),
                count,
            })
            .collect(),
    })
}

/// Why a customer's link is refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("this adjustment is not waiting for that (it is {0})")]
    NotWaiting(State),
    #[error("a different choice was made already: {0}")]
    ChoiceTaken(Choice),
    #[error("a payment with another method is under way for this adjustment")]
    InProgress,
    #[error("the payment method was refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Remediation(#[from] RemediationError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What the customer's link did.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkOutcome {
    pub adjustment_id: Uuid,
    pub state: State,
    pub choice: Option<Choice>,
    /// `true` when this request found the choice (or the payment) already made.
    pub already_applied: bool,
}

/// Checks a link's token against its adjustment's incident secret, returning the
/// adjustment (locked) and its merchant.
async fn open_link(
    db: &MerchantDb,
    token: &str,
    adjustment: Uuid,
    purpose: LinkPurpose,
) -> Result<(TenantTx, AdjustmentRow), LinkError> {
    if link_merchant(token)? != db.merchant() {
        return Err(TokenError::Invalid.into());
    }
    let mut tx = db.begin().await?;
    let a = store::adjustment_for_update(&mut tx, adjustment)
        .await?
        .ok_or(TokenError::Invalid)?;
    let incident = store::incident(&mut tx, a.incident_id)
        .await?
        .ok_or(TokenError::Invalid)?;
    verify_link(
        &incident.link_secret,
        token,
        adjustment,
        purpose,
        Utc::now().timestamp(),
    )?;
    Ok((tx, a))
}

/// The merchant a customer's link names (its signature is checked once its
/// adjustment is read from that merchant's database).
pub fn link_merchant(token: &str) -> Result<MerchantId, LinkError> {
    Ok(MerchantId(model::token_merchant(token)?))
}

/// The overpaid customer's answer, applied once: a repeat of the same choice
/// answers as the first did; another choice is refused.
pub async fn choose(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    token: &str,
    adjustment: Uuid,
    choice: Choice,
) -> Result<LinkOutcome, LinkError> {
    let (mut tx, a) = open_link(db, token, adjustment, LinkPurpose::Choice).await?;
    let first = match (a.state, a.choice) {
        (State::AwaitingChoice, None) => store::record_choice(&mut tx, a.id, choice).await?,
        (_, Some(made)) if made == choice => false,
        (_, Some(made)) => return Err(LinkError::ChoiceTaken(made)),
        (state, None) => return Err(LinkError::NotWaiting(state)),
    };
    tx.commit().await?;
    // Recorded now or before; not yet carried out while it is `choice_made`.
    let a = if first {
        AdjustmentRow {
            state: State::ChoiceMade,
            choice: Some(choice),
            ..a
        }
    } else {
        a
    };
    if a.state == State::ChoiceMade {
        // Carried out now; if this fails half-way, settle finishes it under the same key.
        if let Err(err) = carry_out(db, provider, &SettleOptions::default(), &a, choice).await {
            tracing::warn!(error = %err, adjustment = %a.id, "carrying out a choice failed; settle retries it");
        }
    }
    let mut tx = db.begin().await?;
    let a = store::adjustment_for_update(&mut tx, adjustment)
        .await?
        .ok_or(TokenError::Invalid)?;
    tx.commit().await?;
    Ok(LinkOutcome {
        adjustment_id: a.id,
        state: a.state,
        choice: a.choice,
        already_applied: !first,
    })
}

/// The underpaid customer's new payment method, charged once for the difference.
pub async fn give_payment_method(
    db: &MerchantDb,
    provider: &dyn PaymentProvider,
    token: &str,
    adjustment: Uuid,
    method: &str,
) -> Result<LinkOutcome, LinkError> {
    let (mut tx, a) = open_link(db, token, adjustment, LinkPurpose::PaymentMethod).await?;
    match a.state {
        State::Settled => {
            tx.commit().await?;
            return Ok(LinkOutcome {
                adjustment_id: a.id,
                state: a.state,
                choice: None,
                already_applied: true,
            });
        }
        State::AwaitingPaymentMethod | State::Escalated => {}
        state => return Err(LinkError::NotWaiting(state)),
    }
    let step = customer_charge_step(method);
    let key = effect_key(a.id, &step);
    match store::customer_charge(&mut tx, a.id).await? {
        // Another method's charge is under way (or this one's, retried): one at a time.
        Some(other) if other != key => return Err(LinkError::InProgress),
        _ => {}
    }
    // Keyed under the row lock, so two methods given at once cannot both be charged.
    store::begin_effect(&mut tx, &key, a.id, "customer_charge", a.delta).await?;
    store::set_new_method(&mut tx, a.id, Some(method)).await?;
    // An escalated case the customer answers after all goes back to waiting, to be charged.
    store::transition(
        &mut tx,
        a.id,
        a.state,
        State::AwaitingPaymentMethod,
        a.reminders_sent,
        a.next_action_at,
        a.last_error.as_deref(),
    )
    .await?;
    tx.commit().await?;
    let a = AdjustmentRow {
        state: State::AwaitingPaymentMethod,
        new_payment_method: Some(method.to_owned()),
        ..a
    };
    let charged = charge(
        db,
        provider,
        &SettleOptions::default(),
        &a,
        &step,
        method,
        None,
        Vec::new(),
    )
    .await?;
    match charged {
        Charged::Yes | Charged::Retry => Ok(LinkOutcome {
            adjustment_id: a.id,
            state: if matches!(charged, Charged::Yes) {
                State::Settled
            } else {
                State::AwaitingPaymentMethod
            },
            choice: None,
            already_applied: false,
        }),
        Charged::Refused => Err(LinkError::Refused(
            "the payment method could not be charged; nothing was taken: try another".into(),
        )),
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
