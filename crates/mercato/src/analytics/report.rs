//! Reports from the marts: read with the Parquet reader, summed in process.
//! A merchant's reports read only its own partitions (`merchant={id}`).

use chrono::NaiveDate;
use serde::Serialize;

use super::columns::{self, Day, MartRow};
use super::files::{self, FilesError, Layout, Manifest};
use super::model::{
    self, CheckoutDay, GroupBy, OrderLine, Payment, ProductDay, ProductKey, ProductRow,
    ProductTotals, Report, SalesDay,
};
use crate::tenancy::MerchantId;

/// What a merchant asks.
#[derive(Debug, Clone)]
pub struct Question {
    pub report: Report,
    pub group_by: GroupBy,
    /// Days, both included (UTC).
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Rows of `top-products`.
    pub limit: usize,
}

/// How far a cell's marts are exported.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Freshness {
    pub cell: String,
    /// The outbox position (transaction id) exported up to.
    pub position: u64,
    pub exported_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Answer {
    pub report: String,
    pub group_by: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The marts the answer was read from, per cell.
    pub as_of: Vec<Freshness>,
    /// One object per group: see the report's row type in the docs.
    #[schema(value_type = Vec<Object>)]
    pub rows: serde_json::Value,
}

fn within(q: &Question, day: Day) -> bool {
    q.from <= day.0 && day.0 <= q.to
}

fn day_sums<R: MartRow>(
    layout: &Layout,
    manifests: &[Manifest],
    merchant: &str,
    q: &Question,
    date: impl Fn(&R) -> Day,
) -> Result<Vec<R>, FilesError> {
    let dir = layout.partition(R::MART, merchant, None);
    let mut rows: Vec<R> = files::read_dir_rows(layout, &dir, manifests)?;
    rows.retain(|r| within(q, date(r)));
    Ok(rows)
}

fn facts<R: MartRow>(
    layout: &Layout,
    manifests: &[Manifest],
    merchant: &str,
    q: &Question,
) -> Result<Vec<R>, FilesError> {
    let mut rows = Vec::new();
    for (day, dir) in layout.days(R::MART, merchant)? {
        let Ok(day) = day.parse::<NaiveDate>() else {
            continue;
        };
        if q.from <= day && day <= q.to {
            rows.extend(files::read_dir_rows::<R>(layout, &dir, manifests)?);
        }
    }
    Ok(rows)
}

/// Top products summed straight from the Arrow columns: only the columns
/// it sums are decoded and no row is built (a merchant's year is thousands
/// of product-days, and this is the report merchants open most).
fn top_products(
    layout: &Layout,
    manifests: &[Manifest],
    merchant: &str,
    q: &Question,
) -> Result<Vec<ProductRow>, FilesError> {
    const SUMS: [&str; 5] = ["orders", "units", "gross", "discounts", "net"];
    let (from, to) = (Day(q.from).days_since_epoch(), Day(q.to).days_since_epoch());
    let mut totals = ProductTotals::default();
    let dir = layout.partition(ProductDay::MART, merchant, None);
    let mut columns = vec!["date", "sku", "product_name", "currency"];
    columns.extend(SUMS);
    for part in layout.visible(&dir, manifests)? {
        for batch in files::read_batches(&part.path, Some(&columns))? {
            let in_file = |source| FilesError::Column {
                path: part.path.clone(),
                source,
            };
            let days = columns::days(&batch, "date").map_err(in_file)?;
            let sku = columns::strings(&batch, "sku").map_err(in_file)?;
            let name = columns::strings(&batch, "product_name").map_err(in_file)?;
            let currency = columns::strings(&batch, "currency").map_err(in_file)?;
            let mut sums = [&[][..]; 5];
            for (column, name) in sums.iter_mut().zip(SUMS) {
                *column = columns::int64s(&batch, name).map_err(in_file)?;
            }
            for (row, day) in days.iter().enumerate() {
                if !(from..=to).contains(day) {
                    continue;
                }
                let key = ProductKey {
                    sku: sku.value(row),
                    name: name.value(row),
                    currency: currency.value(row),
                };
                totals.add(key, sums.map(|column| column[row]));
            }
        }
    }
    Ok(totals.top(q.limit))
}

fn json<T: Serialize>(rows: Vec<T>) -> serde_json::Value {
    serde_json::to_value(rows).unwrap_or_default()
}

/// Answers a question from the marts.
pub fn answer(layout: &Layout, merchant: MerchantId, q: &Question) -> Result<Answer, FilesError> {
    let manifests = layout.manifests()?;
    let m = merchant.0.to_string();
    let rows = match q.report {
        Report::Revenue | Report::AverageOrderValue => match q.group_by {
            GroupBy::Customer => {
                let lines: Vec<OrderLine> = facts(layout, &manifests, &m, q)?;
                let payments: Vec<Payment> = facts(layout, &manifests, &m, q)?;
                json(model::revenue_by_customer(&lines, &payments))
            }
            group => {
                let days: Vec<SalesDay> =
                    day_sums(layout, &manifests, &m, q, |r: &SalesDay| r.date)?;
                json(model::revenue(&days, group))
            }
        },
        Report::TopProducts => json(top_products(layout, &manifests, &m, q)?),
        Report::Conversion => {
            let days: Vec<CheckoutDay> =
                day_sums(layout, &manifests, &m, q, |r: &CheckoutDay| r.date)?;
            json(model::conversion(&days, q.group_by))
        }
        Report::FailureReasons => {
            let days: Vec<CheckoutDay> =
                day_sums(layout, &manifests, &m, q, |r: &CheckoutDay| r.date)?;
            json(model::failure_reasons(&days))
        }
    };
    Ok(Answer {
        report: q.report.as_str().to_owned(),
        group_by: q.group_by.as_str().to_owned(),
        from: q.from,
        to: q.to,
        as_of: manifests
            .into_iter()
            .map(|m| Freshness {
                cell: m.cell,
                position: m.position,
                exported_at: m.exported_at,
            })
            .collect(),
        rows,
    })
}
