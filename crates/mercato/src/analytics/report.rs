//! Reports from the marts: read with the Parquet reader, summed in process.
//! A merchant's reports read only its own partitions (`merchant={id}`).

use chrono::NaiveDate;
use serde::Serialize;

use super::columns::{Day, MartRow};
use super::files::{self, FilesError, Layout, Manifest};
use super::model::{self, CheckoutDay, GroupBy, OrderLine, Payment, ProductDay, Report, SalesDay};
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
        Report::TopProducts => {
            let days: Vec<ProductDay> =
                day_sums(layout, &manifests, &m, q, |r: &ProductDay| r.date)?;
            json(model::top_products(&days, q.limit))
        }
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
