//! The files of an export: a batch's facts, day sums and dimensions staged,
//! then published with the manifest (`commit`), and the small files a run
//! touched merged (`compact`). Pure file work, run on blocking threads by
//! the exporter (`export.rs`), which decides what to write and when.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;

use super::columns::{Day, MartRow};
use super::files::{self, Changes, FilesError, Layout, Manifest};
use super::model::{
    self, AuditFact, CheckoutAttempt, Customer, MerchantRow, OrderLine, Payment, ProductVersion,
};

/// What a batch of events makes.
#[derive(Default)]
pub(super) struct Facts {
    pub lines: Vec<OrderLine>,
    pub payments: Vec<Payment>,
    pub attempts: Vec<CheckoutAttempt>,
    pub products: Vec<ProductVersion>,
    pub customers: Vec<Customer>,
    pub merchants: Vec<MerchantRow>,
    pub audit: Vec<AuditFact>,
}

impl Facts {
    pub fn rows(&self) -> u64 {
        (self.lines.len() + self.payments.len() + self.attempts.len() + self.audit.len()) as u64
    }
}

/// Publishes what was staged, the manifest first marking the window being
/// published (a crash between the two is finished by the next run).
pub(super) fn commit(
    layout: &Layout,
    cell: &str,
    manifest: &mut Manifest,
    window: (u64, u64),
    position: u64,
) -> Result<Changes, FilesError> {
    manifest.cell = cell.to_owned();
    manifest.publishing = Some(window);
    manifest.position = position;
    manifest.exported_at = Some(Utc::now());
    layout.save_manifest(manifest)?;
    let mut written = layout.publish(cell)?;
    manifest.publishing = None;
    layout.save_manifest(manifest)?;
    written.push(Layout::manifest_file(cell));
    Ok(Changes {
        written,
        removed: Vec::new(),
    })
}

/// Writes a batch's facts, day sums and dimensions under staging; returns
/// the files written and the (merchant, day) of the facts.
pub(super) fn stage(
    layout: &Layout,
    cell: &str,
    facts: &Facts,
    (from, to): (u64, u64),
    n: &str,
) -> Result<(u64, Vec<(String, String)>), FilesError> {
    let staging = Layout::new(layout.staging(cell));
    let name = files::part_name(cell, from, to, n);
    let mut days = write_by_day(&staging, &name, &facts.lines, |r| (&r.merchant_id, r.date))?;
    days.extend(write_by_day(&staging, &name, &facts.payments, |r| {
        (&r.merchant_id, r.date)
    })?);
    days.extend(write_by_day(&staging, &name, &facts.attempts, |r| {
        (&r.merchant_id, r.date)
    })?);
    days.extend(write_by_day(&staging, &name, &facts.audit, |r| {
        (&r.merchant_id, r.date)
    })?);
    let mut written = days.len() as u64;
    let sales = model::sales_days(&facts.lines, &facts.payments);
    written += write_by_merchant(&staging, &name, &sales, |r| &r.merchant_id)?;
    let products = model::product_days(&facts.lines);
    written += write_by_merchant(&staging, &name, &products, |r| &r.merchant_id)?;
    let checkouts = model::checkout_days(&facts.attempts);
    written += write_by_merchant(&staging, &name, &checkouts, |r| &r.merchant_id)?;
    written += write_by_merchant(&staging, &name, &facts.products, |r| &r.merchant_id)?;
    written += write_by_merchant(&staging, &name, &facts.customers, |r| &r.merchant_id)?;
    written += write_by_merchant(&staging, &name, &facts.merchants, |r| &r.merchant_id)?;
    Ok((written, days))
}

/// Merges the small files of what a run touched; returns what changed.
pub(super) fn compact(
    layout: &Layout,
    cell: &str,
    touched: &BTreeMap<String, HashSet<String>>,
) -> Result<Changes, FilesError> {
    let manifests = layout.manifests()?;
    let mut c = Compaction {
        layout,
        manifests: &manifests,
        cell,
        changes: Changes::default(),
    };
    for (merchant, days) in touched {
        c.mart(merchant, None, model::merge_sales_days)?;
        c.mart(merchant, None, model::merge_product_days)?;
        c.mart(merchant, None, model::merge_checkout_days)?;
        c.mart::<ProductVersion>(merchant, None, keep)?;
        c.mart::<Customer>(merchant, None, keep)?;
        c.mart::<MerchantRow>(merchant, None, keep)?;
        for day in days {
            c.mart::<OrderLine>(merchant, Some(day), keep)?;
            c.mart::<Payment>(merchant, Some(day), keep)?;
            c.mart::<CheckoutAttempt>(merchant, Some(day), keep)?;
            c.mart::<AuditFact>(merchant, Some(day), keep)?;
        }
    }
    Ok(c.changes)
}

/// Facts and dimensions compact without merging rows.
pub(super) fn keep<R>(rows: Vec<R>) -> Vec<R> {
    rows
}

/// What every compaction of a run shares.
pub(super) struct Compaction<'a> {
    layout: &'a Layout,
    manifests: &'a [Manifest],
    cell: &'a str,
    changes: Changes,
}

impl Compaction<'_> {
    /// Compacts a merchant's partition of mart `R` once it holds more than
    /// 32 files (a day of facts) or 8 (the merchant-wide day sums and
    /// dimensions: every report reads all of them, and a file costs a
    /// report about 0.1 ms to open, while `serve` adds one every run).
    fn mart<R: MartRow>(
        &mut self,
        merchant: &str,
        day: Option<&str>,
        merge: impl FnOnce(Vec<R>) -> Vec<R>,
    ) -> Result<(), FilesError> {
        let above = if day.is_some() { 32 } else { 8 };
        let dir = self.layout.partition(R::MART, merchant, day);
        let changes = files::compact(self.layout, &dir, self.manifests, self.cell, above, merge)?;
        self.changes.extend(changes);
        Ok(())
    }
}

/// Writes a fact mart's rows, one file per merchant and day; returns the
/// (merchant, day) written.
pub(super) fn write_by_day<R: MartRow + Clone>(
    staging: &Layout,
    name: &str,
    rows: &[R],
    key: impl Fn(&R) -> (&String, Day),
) -> Result<Vec<(String, String)>, FilesError> {
    let mut groups: BTreeMap<(String, String), Vec<R>> = BTreeMap::new();
    for r in rows {
        let (m, day) = key(r);
        groups
            .entry((m.clone(), day.0.to_string()))
            .or_default()
            .push(r.clone());
    }
    for ((m, day), rows) in &groups {
        let dir = staging.partition(R::MART, m, Some(day));
        files::write_rows(&dir.join(name), rows)?;
    }
    Ok(groups.into_keys().collect())
}

/// Writes a mart's rows, one file per merchant; returns the files written.
pub(super) fn write_by_merchant<R: MartRow + Clone>(
    staging: &Layout,
    name: &str,
    rows: &[R],
    merchant: impl Fn(&R) -> &String,
) -> Result<u64, FilesError> {
    let mut groups: BTreeMap<String, Vec<R>> = BTreeMap::new();
    for r in rows {
        groups
            .entry(merchant(r).clone())
            .or_default()
            .push(r.clone());
    }
    for (m, rows) in &groups {
        let dir = staging.partition(R::MART, m, None);
        files::write_rows(&dir.join(name), rows)?;
    }
    Ok(groups.len() as u64)
}

/// `dim_date` (2000 to 2099), written once. Every cell's exporter may be
/// the first (they share the directory): each writes its own temporary file
/// (a shared one was truncated under the other's writer, and the loser's
/// rename found it gone), and the renames put the same file in place.
pub(super) fn ensure_calendar(layout: &Layout, cell: &str) -> Result<(), FilesError> {
    let path = layout
        .dir
        .join(model::DateRow::MART)
        .join("dim_date.parquet");
    if path.exists() {
        return Ok(());
    }
    let first = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default();
    let last = chrono::NaiveDate::from_ymd_opt(2099, 12, 31).unwrap_or_default();
    let temp = path.with_extension(format!("parquet.{cell}.tmp"));
    files::write_rows(&temp, &model::calendar(first, last))?;
    std::fs::rename(&temp, &path).map_err(|source| FilesError::Io {
        path: path.clone(),
        source,
    })
}
