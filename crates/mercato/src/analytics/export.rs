//! The incremental export: the events outbox, read by commit position, to
//! the marts.
//!
//! Every event row gets its transaction's id (`xid8`) when it is written
//! (migration 0019). Below `pg_snapshot_xmin(pg_current_snapshot())` every
//! transaction has ended, so the rows with a position in `[last, xmin)` are
//! all there is in that range, whatever order they committed in: an export
//! takes exactly those, and the next one goes on from `xmin`. (An
//! `updated_at` watermark would miss a transaction that commits after a
//! later one was read.) Details an event does not carry (an order's lines,
//! a product's name) are read by key, never by scanning a table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::columns::Day;
use super::compaction::{commit, compact, ensure_calendar, stage, Facts};
use super::files::{self, Changes, FilesError, Layout, Manifest};
use super::mirror::{Mirror, MirrorError};
use super::model::{
    AuditFact, CheckoutAttempt, Customer, MerchantRow, OrderLine, Payment, ProductVersion,
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("the export's file work stopped: {0}")]
    Task(String),
    #[error("the analytics directory holds cell {cell}'s marts of database {theirs}, not of {ours}: give this database its own --analytics-dir")]
    OtherDatabase {
        cell: String,
        theirs: String,
        ours: String,
    },
}

/// Reports the export's progress (the CLI draws a bar).
pub trait ExportProgress: Send + Sync {
    fn total(&self, _events: u64) {}
    fn done(&self, _events: u64) {}
}

pub struct Quiet;
impl ExportProgress for Quiet {}

/// What one run exported.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub cell: String,
    pub from: u64,
    pub to: u64,
    pub events: u64,
    pub rows: u64,
    pub files: u64,
    /// When the oldest event this run exported happened (history aside):
    /// the marts' lag is the run's end less this.
    pub oldest_event_at: Option<DateTime<Utc>>,
}

impl ExportSummary {
    /// How long the oldest event this run exported waited for the marts,
    /// measured now (call it as the run ends).
    pub fn lag(&self) -> Option<Duration> {
        let waited = Utc::now() - self.oldest_event_at?;
        Some(waited.to_std().unwrap_or(Duration::ZERO))
    }
}

/// Exports one cell's outbox; keeps what it learnt of products between runs.
pub struct Exporter {
    pub cell: String,
    pool: PgPool,
    pub layout: Layout,
    /// Events per batch (one set of files each).
    pub batch: i64,
    /// Share of the time the export works (it rests `took × (1/duty − 1)`
    /// after each batch), so the OLTP database keeps its latency.
    pub duty_cycle: f64,
    /// Merchant → SKU → its versions, oldest first.
    products: HashMap<String, HashMap<String, Vec<ProductVersion>>>,
    customers: HashSet<(String, String)>,
    merchants: HashSet<String>,
    /// Files left covered by a compaction were swept (once per process).
    swept: bool,
    /// The object store the marts are mirrored to, if any.
    pub mirror: Option<Mirror>,
    /// The store was compared with the directory whole since the process
    /// started (and no mirroring failed since): a run then sends only what
    /// it changed.
    mirrored: bool,
    /// What this run changed in the directory, for the mirror.
    pending: Changes,
}

/// An event as the export reads it.
#[derive(sqlx::FromRow)]
struct Event {
    #[sqlx(rename = "merchant_id")]
    merchant: Uuid,
    id: Uuid,
    #[sqlx(rename = "type")]
    kind: String,
    payload: Value,
    #[sqlx(rename = "occurred_at")]
    at: DateTime<Utc>,
    /// Its commit position as text (history has none).
    #[sqlx(default)]
    position: Option<String>,
}

/// The export works a quarter of the time: at 0.5, exporting a million
/// events raised the live p99 1.41×; at 0.25, 1.20× (`bench analytics`).
pub const DEFAULT_DUTY_CYCLE: f64 = 0.25;

const EVENT_COLUMNS: &str = "merchant_id, id, type, payload, occurred_at";

impl Exporter {
    pub fn new(cell: &str, pool: PgPool, layout: Layout) -> Exporter {
        Exporter {
            cell: cell.to_owned(),
            pool,
            layout,
            batch: 5_000,
            duty_cycle: DEFAULT_DUTY_CYCLE,
            products: HashMap::new(),
            customers: HashSet::new(),
            merchants: HashSet::new(),
            swept: false,
            mirror: None,
            mirrored: false,
            pending: Changes::default(),
        }
    }

    /// Exports whatever has committed since the last run.
    pub async fn run_once(
        &mut self,
        progress: &dyn ExportProgress,
    ) -> Result<ExportSummary, ExportError> {
        let outcome = self.run(progress).await;
        if outcome.is_err() {
            // What it learnt may be from files that were never committed.
            self.products.clear();
            self.customers.clear();
            self.merchants.clear();
        }
        let changes = std::mem::take(&mut self.pending);
        if outcome.is_err() {
            // What it committed before failing goes with the next whole sync.
            self.mirrored = false;
            return outcome;
        }
        if let Some(mirror) = &self.mirror {
            let sent = if self.mirrored {
                mirror.apply(&self.layout.dir, &changes).await
            } else {
                mirror.sync_all(&self.layout.dir).await
            };
            self.mirrored = sent.is_ok();
            sent?;
        }
        outcome
    }

    async fn run(&mut self, progress: &dyn ExportProgress) -> Result<ExportSummary, ExportError> {
        let mut manifest = self.layout.load_manifest(&self.cell)?;
        let database: String = sqlx::query_scalar("select current_database()::text")
            .fetch_one(&self.pool)
            .await?;
        match &manifest.database {
            Some(theirs) if *theirs != database => {
                return Err(ExportError::OtherDatabase {
                    cell: self.cell.clone(),
                    theirs: theirs.clone(),
                    ours: database,
                })
            }
            _ => manifest.database = Some(database),
        }
        self.recover(&mut manifest)?;
        if !self.swept {
            self.layout.sweep_covered(&self.cell)?;
            self.swept = true;
        }
        ensure_calendar(&self.layout, &self.cell)?;
        let mut summary = ExportSummary {
            cell: self.cell.clone(),
            from: manifest.position,
            to: manifest.position,
            ..ExportSummary::default()
        };
        if !manifest.history_done {
            self.export_history(&mut manifest, progress, &mut summary)
                .await?;
        }
        if !manifest.audit_history_done {
            self.export_audit_history(&mut manifest, &mut summary)
                .await?;
        }
        let (events_before, rows_before) = (summary.events, summary.rows);
        let from = manifest.position;
        let to: i64 =
            sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&self.pool)
                .await?;
        let to = u64::try_from(to).unwrap_or(0);
        if to <= from {
            return Ok(summary);
        }
        let total: i64 = sqlx::query_scalar(
            "select count(*) from events where xid > '0'::xid8 and xid >= $1::text::xid8 and xid < $2::text::xid8",
        )
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_one(&self.pool)
        .await?;
        progress.total(u64::try_from(total).unwrap_or(0));
        let mut cursor: Option<(String, Uuid, Uuid)> = None;
        let mut touched = BTreeMap::new();
        let mut n = 0;
        loop {
            let started = Instant::now();
            let sql = format!(
                // `position`, not `xid`: ORDER BY would take an output column
                // named xid (text) over the xid8 column, and order as text.
                "select {EVENT_COLUMNS}, xid::text as position from events e
                 where e.xid > '0'::xid8 and e.xid >= $1::text::xid8 and e.xid < $2::text::xid8
                   and ($3::text is null or (e.xid, e.merchant_id, e.id) > ($3::text::xid8, $4, $5))
                 order by e.xid, e.merchant_id, e.id limit $6"
            );
            let events: Vec<Event> = sqlx::query_as(&sql)
                .bind(from.to_string())
                .bind(to.to_string())
                .bind(cursor.as_ref().map(|c| c.0.clone()))
                .bind(cursor.as_ref().map(|c| c.1))
                .bind(cursor.as_ref().map(|c| c.2))
                .bind(self.batch)
                .fetch_all(&self.pool)
                .await?;
            let Some(last) = events.last() else {
                break;
            };
            cursor = Some((
                last.position.clone().unwrap_or_default(),
                last.merchant,
                last.id,
            ));
            let batch = (events, (from, to), n.to_string());
            self.export_batch(batch, &mut touched, &mut summary, progress)
                .await?;
            n += 1;
            self.rest(started.elapsed()).await;
        }
        // The audit records of the same window: published with the events'.
        let mut cursor = None;
        let mut n = 0;
        loop {
            let started = Instant::now();
            let records = crate::audit::committed_between(
                &self.pool,
                (from, to),
                cursor.as_ref(),
                self.batch,
            )
            .await?;
            let Some(last) = records.last() else {
                break;
            };
            cursor = Some((
                last.position.clone().unwrap_or_default(),
                last.merchant_id,
                last.id,
            ));
            let facts = audit_facts(&records);
            summary.rows += facts.rows();
            summary.files += self
                .stage(facts, (from, to), format!("a{n}"), &mut touched)
                .await?;
            n += 1;
            self.rest(started.elapsed()).await;
        }
        manifest.events += summary.events - events_before;
        manifest.rows += summary.rows - rows_before;
        self.commit(&mut manifest, (from, to), to).await?;
        summary.to = to;
        self.compact(touched).await?;
        Ok(summary)
    }

    async fn rest(&self, took: Duration) {
        let duty = self.duty_cycle.clamp(0.05, 1.0);
        if duty < 1.0 {
            tokio::time::sleep(took.mul_f64(1.0 / duty - 1.0)).await;
        }
    }

    /// Finishes a committed export a crash interrupted, or forgets an
    /// uncommitted one.
    fn recover(&mut self, manifest: &mut Manifest) -> Result<(), FilesError> {
        if manifest.publishing.is_some() {
            let published = self.layout.publish(&self.cell)?;
            manifest.publishing = None;
            self.layout.save_manifest(manifest)?;
            self.pending.extend(Changes {
                written: published,
                removed: Vec::new(),
            });
        } else {
            self.layout.clear_staging(&self.cell)?;
        }
        Ok(())
    }

    /// Events from before analytics (no position): once, in key order.
    async fn export_history(
        &mut self,
        manifest: &mut Manifest,
        progress: &dyn ExportProgress,
        summary: &mut ExportSummary,
    ) -> Result<(), ExportError> {
        let mut cursor: Option<(Uuid, Uuid)> = None;
        let mut touched = BTreeMap::new();
        let mut n = 0;
        let at = manifest.position;
        loop {
            let started = Instant::now();
            let sql = format!(
                "select {EVENT_COLUMNS} from events
                 where xid is null and ($1::uuid is null or (merchant_id, id) > ($1, $2))
                 order by merchant_id, id limit $3"
            );
            let events: Vec<Event> = sqlx::query_as(&sql)
                .bind(cursor.map(|c| c.0))
                .bind(cursor.map(|c| c.1))
                .bind(self.batch)
                .fetch_all(&self.pool)
                .await?;
            let Some(last) = events.last() else {
                break;
            };
            cursor = Some((last.merchant, last.id));
            let batch = (events, (at, at), format!("h{n}"));
            self.export_batch(batch, &mut touched, summary, progress)
                .await?;
            n += 1;
            self.rest(started.elapsed()).await;
        }
        manifest.history_done = true;
        manifest.events += summary.events;
        manifest.rows += summary.rows;
        self.commit(manifest, (at, at), at).await?;
        Ok(())
    }

    /// Audit records from before their export (no position): once, by key.
    async fn export_audit_history(
        &mut self,
        manifest: &mut Manifest,
        summary: &mut ExportSummary,
    ) -> Result<(), ExportError> {
        let mut cursor = None;
        let mut touched = BTreeMap::new();
        let mut n = 0;
        let at = manifest.position;
        let rows_before = summary.rows;
        loop {
            let started = Instant::now();
            let records = crate::audit::unpositioned(&self.pool, cursor, self.batch).await?;
            let Some(last) = records.last() else {
                break;
            };
            cursor = Some((last.merchant_id, last.id));
            let facts = audit_facts(&records);
            summary.rows += facts.rows();
            summary.files += self
                .stage(facts, (at, at), format!("ah{n}"), &mut touched)
                .await?;
            n += 1;
            self.rest(started.elapsed()).await;
        }
        manifest.audit_history_done = true;
        manifest.rows += summary.rows - rows_before;
        self.commit(manifest, (at, at), at).await?;
        self.compact(touched).await?;
        Ok(())
    }

    /// Turns a batch of events into staged files (named by the window and
    /// `n`), and counts them.
    async fn export_batch(
        &mut self,
        (events, window, n): (Vec<Event>, (u64, u64), String),
        touched: &mut BTreeMap<String, HashSet<String>>,
        summary: &mut ExportSummary,
        progress: &dyn ExportProgress,
    ) -> Result<(), ExportError> {
        let facts = self.facts_of(&events).await?;
        summary.rows += facts.rows();
        summary.files += self.stage(facts, window, n, touched).await?;
        summary.events += events.len() as u64;
        // History (no position) is as old as it is, not late.
        let live = events.iter().filter(|e| e.position.is_some());
        if let Some(oldest) = live.map(|e| e.at).min() {
            summary.oldest_event_at =
                Some(summary.oldest_event_at.map_or(oldest, |o| o.min(oldest)));
        }
        progress.done(events.len() as u64);
        Ok(())
    }

    async fn facts_of(&mut self, events: &[Event]) -> Result<Facts, ExportError> {
        let mut facts = Facts::default();
        for e in events {
            let m = e.merchant.to_string();
            if self.merchants.insert(m.clone()) {
                facts
                    .merchants
                    .extend(merchant_row(&self.pool, e.merchant).await?);
            }
        }
        // Product versions first: a sale in the same batch may be of one.
        for e in events
            .iter()
            .filter(|e| e.kind == "product.created" || e.kind == "product.updated")
        {
            self.load_products(&e.merchant.to_string())?;
            for version in versions_in(e) {
                facts.products.push(version.clone());
                self.remember(version);
            }
        }
        let order_ids: Vec<(Uuid, Uuid)> = events
            .iter()
            .filter_map(|e| order_of(e).map(|o| (e.merchant, o)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let orders: HashMap<(Uuid, Uuid), crate::checkout::OrderFacts> =
            crate::checkout::order_facts(&self.pool, &order_ids)
                .await?
                .into_iter()
                .map(|o| ((o.merchant_id, o.id), o))
                .collect();
        self.learn_missing_products(events, &orders, &mut facts)
            .await?;
        for e in events {
            let Some(order) = order_of(e).and_then(|o| orders.get(&(e.merchant, o))) else {
                continue;
            };
            let m = e.merchant.to_string();
            let event_id = e.id.to_string();
            let day = Day::of(e.at);
            let payment = |kind: &str, amount: i64| Payment {
                merchant_id: m.clone(),
                event_id: event_id.clone(),
                order_id: order.id.to_string(),
                date: day,
                at: e.at,
                kind: kind.to_owned(),
                amount,
                currency: order.currency.clone(),
                payment_method: order.payment_method.clone(),
                customer_key: order.customer_key.clone(),
            };
            let attempt = |outcome: &str, reason: Option<String>| CheckoutAttempt {
                merchant_id: m.clone(),
                event_id: event_id.clone(),
                order_id: order.id.to_string(),
                date: day,
                at: e.at,
                outcome: outcome.to_owned(),
                reason,
            };
            match e.kind.as_str() {
                "order.created" => {
                    facts.attempts.push(attempt("started", None));
                    if self
                        .customers
                        .insert((m.clone(), order.customer_key.clone()))
                    {
                        facts.customers.push(Customer {
                            merchant_id: m.clone(),
                            customer_key: order.customer_key.clone(),
                            email: order.customer_email.clone(),
                            first_seen: e.at,
                        });
                    }
                }
                "order.confirmed" => {
                    facts.attempts.push(attempt("confirmed", None));
                    facts.payments.push(payment("capture", order.total_amount));
                    for (line_no, line) in order.lines.iter().enumerate() {
                        let version = self.version_at(&m, &line.sku, order.created_at);
                        facts.lines.push(OrderLine {
                            merchant_id: m.clone(),
                            order_id: order.id.to_string(),
                            line_no: line_no as i64,
                            date: Day::of(order.created_at),
                            ordered_at: order.created_at,
                            customer_key: order.customer_key.clone(),
                            payment_method: order.payment_method.clone(),
                            sku: line.sku.clone(),
                            product_version_from: version
                                .as_ref()
                                .map_or(order.created_at, |v| v.valid_from),
                            product_name: version.map(|v| v.name).unwrap_or_default(),
                            quantity: line.quantity,
                            unit_price: line.unit_price,
                            gross: line.gross,
                            discount: line.gross - line.net,
                            tax: line.tax,
                            net: line.net,
                            currency: order.currency.clone(),
                            ruleset_revision: order.ruleset_revision,
                            calculator_version: order.calculator_version.clone(),
                        });
                    }
                }
                "order.failed" => {
                    let reason = e.payload["reason"].as_str().map(str::to_owned);
                    facts.attempts.push(attempt("failed", reason));
                }
                "order.cancelled" => {
                    let reason = e.payload["reason"].as_str().map(str::to_owned);
                    facts.attempts.push(attempt("cancelled", reason));
                }
                "order.refunded" => {
                    let amount = e.payload["amount"].as_i64().unwrap_or(0);
                    facts.payments.push(payment("refund", amount));
                }
                "adjustment.settled" => {
                    let amount = e.payload["amount"]["amount"].as_i64().unwrap_or(0);
                    let kind = match e.payload["outcome"].as_str() {
                        Some("charged") => "adjustment_charge",
                        Some("refunded") => "adjustment_refund",
                        Some("credited") => "store_credit",
                        _ => continue,
                    };
                    facts.payments.push(payment(kind, amount));
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// Loads a merchant's product versions from the marts, once per process.
    fn load_products(&mut self, merchant: &str) -> Result<(), FilesError> {
        if self.products.contains_key(merchant) {
            return Ok(());
        }
        let manifests = self.layout.manifests()?;
        let dir = self.layout.partition("dim_product", merchant, None);
        let mut versions: Vec<ProductVersion> =
            files::read_dir_rows(&self.layout, &dir, &manifests)?;
        versions.sort_by_key(|v| v.valid_from);
        let by_sku = self.products.entry(merchant.to_owned()).or_default();
        for v in versions {
            by_sku.entry(v.sku.clone()).or_default().push(v);
        }
        Ok(())
    }

    fn remember(&mut self, version: ProductVersion) {
        let versions = self
            .products
            .entry(version.merchant_id.clone())
            .or_default()
            .entry(version.sku.clone())
            .or_default();
        if !versions.contains(&version) {
            versions.push(version);
            versions.sort_by_key(|v| v.valid_from);
        }
    }

    /// The version of a SKU in effect at `at` (or its first, for a sale
    /// the export saw before any version of it).
    fn version_at(&self, merchant: &str, sku: &str, at: DateTime<Utc>) -> Option<ProductVersion> {
        let versions = self.products.get(merchant)?.get(sku)?;
        versions
            .iter()
            .rev()
            .find(|v| v.valid_from <= at)
            .or_else(|| versions.first())
            .cloned()
    }

    /// SKUs sold that no product event named (products made before
    /// analytics): their current version from the catalog, by key.
    async fn learn_missing_products(
        &mut self,
        events: &[Event],
        orders: &HashMap<(Uuid, Uuid), crate::checkout::OrderFacts>,
        facts: &mut Facts,
    ) -> Result<(), ExportError> {
        let mut missing: HashSet<(Uuid, String)> = HashSet::new();
        for e in events.iter().filter(|e| e.kind == "order.confirmed") {
            let Some(order) = order_of(e).and_then(|o| orders.get(&(e.merchant, o))) else {
                continue;
            };
            let m = e.merchant.to_string();
            self.load_products(&m)?;
            for line in &order.lines {
                let known = self
                    .products
                    .get(&m)
                    .is_some_and(|skus| skus.contains_key(&line.sku));
                if !known {
                    missing.insert((e.merchant, line.sku.clone()));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<(Uuid, String)> = missing.into_iter().collect();
        for p in crate::catalog::product_facts(&self.pool, &keys).await? {
            let version = ProductVersion {
                merchant_id: p.merchant_id.to_string(),
                product_id: p.product_id.to_string(),
                sku: p.sku,
                name: p.name,
                list_price: p.price,
                currency: p.currency,
                valid_from: p.valid_from,
            };
            facts.products.push(version.clone());
            self.remember(version);
        }
        Ok(())
    }

    /// Stages a batch's files (off the async threads: Parquet encoding is
    /// CPU work); returns the files written.
    async fn stage(
        &self,
        facts: Facts,
        window: (u64, u64),
        n: String,
        touched: &mut BTreeMap<String, HashSet<String>>,
    ) -> Result<u64, ExportError> {
        // A merchant whose batch holds only dimensions (a product added)
        // has its merchant-wide directories compacted too.
        let dimensions = facts.products.iter().map(|r| &r.merchant_id);
        let dimensions = dimensions.chain(facts.customers.iter().map(|r| &r.merchant_id));
        for merchant in dimensions.chain(facts.merchants.iter().map(|r| &r.merchant_id)) {
            touched.entry(merchant.clone()).or_default();
        }
        let (layout, cell) = (self.layout.clone(), self.cell.clone());
        let (written, days) = blocking(move || stage(&layout, &cell, &facts, window, &n)).await?;
        for (merchant, day) in days {
            touched.entry(merchant).or_default().insert(day);
        }
        Ok(written)
    }

    /// Commits an export (see `files`), off the async threads.
    async fn commit(
        &mut self,
        manifest: &mut Manifest,
        window: (u64, u64),
        position: u64,
    ) -> Result<(), ExportError> {
        let (layout, cell) = (self.layout.clone(), self.cell.clone());
        let mut m = manifest.clone();
        let published;
        (*manifest, published) = blocking(move || {
            let published = commit(&layout, &cell, &mut m, window, position)?;
            Ok((m, published))
        })
        .await?;
        self.pending.extend(published);
        Ok(())
    }

    async fn compact(
        &mut self,
        touched: BTreeMap<String, HashSet<String>>,
    ) -> Result<(), ExportError> {
        let (layout, cell) = (self.layout.clone(), self.cell.clone());
        let changes = blocking(move || compact(&layout, &cell, &touched)).await?;
        self.pending.extend(changes);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, ExportError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ExportError::Task(e.to_string()))?
        .map_err(ExportError::from)
}

/// The marts' rows of audit records.
fn audit_facts(records: &[crate::audit::ExportedRecord]) -> Facts {
    let audit = records
        .iter()
        .map(|r| AuditFact {
            merchant_id: r.merchant_id.to_string(),
            record_id: r.id.to_string(),
            date: Day::of(r.at),
            at: r.at,
            action: r.action.clone(),
            actor_kind: r.actor_kind.clone(),
            actor: r.actor.clone(),
            target_type: r.target_type.clone(),
            target_id: r.target_id.clone(),
            operation: r.operation.clone(),
            changes: r.changes.clone(),
            request_id: r.request_id.clone(),
        })
        .collect();
    Facts {
        audit,
        ..Facts::default()
    }
}

fn order_of(e: &Event) -> Option<Uuid> {
    if !e.kind.starts_with("order.") && e.kind != "adjustment.settled" {
        return None;
    }
    e.payload["order_id"]
        .as_str()
        .and_then(|s| Uuid::try_parse(s).ok())
}

/// The versions a product event states: one per variant (SKU).
fn versions_in(e: &Event) -> Vec<ProductVersion> {
    let p = &e.payload;
    let (Some(product), Some(name)) = (p["product_id"].as_str(), p["name"].as_str()) else {
        return Vec::new();
    };
    p["variants"]
        .as_array()
        .map(|variants| {
            variants
                .iter()
                .filter_map(|v| {
                    Some(ProductVersion {
                        merchant_id: e.merchant.to_string(),
                        product_id: product.to_owned(),
                        sku: v["sku"].as_str()?.to_owned(),
                        name: name.to_owned(),
                        list_price: v["price"]["amount"].as_i64()?,
                        currency: v["price"]["currency"].as_str()?.to_owned(),
                        valid_from: e.at,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn merchant_row(pool: &PgPool, id: Uuid) -> Result<Option<MerchantRow>, sqlx::Error> {
    Ok(crate::tenancy::merchant_names(pool, id)
        .await?
        .map(|(slug, name)| MerchantRow {
            merchant_id: id.to_string(),
            slug,
            name,
        }))
}
