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

/// How fresh a cell's marts are. Only the time: the outbox position they
/// were exported up to is the cell's transaction counter, which would tell
/// a merchant how much every other merchant of the cell writes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Freshness {
    pub cell: String,
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
    let mut wanted = vec!["date", "sku", "product_name", "currency"];
    wanted.extend(SUMS);
    for part in layout.visible(&dir, manifests)? {
        for batch in files::read_batches(&part.path, Some(&wanted))? {
            let in_file = |source| FilesError::Column {
                path: part.path.clone(),
                source,
            };
            let days = columns::days(&batch, "date").map_err(in_file)?;
            let sku = columns::strings(&batch, "sku").map_err(in_file)?;
            let name = columns::strings(&batch, "product_name").map_err(in_file)?;
            let currency = columns::strings(&batch, "currency").map_err(in_file)?;
            let mut sums = [&[][..]; 5];
            for (column, sum) in sums.iter_mut().zip(SUMS) {
                *column = columns::int64s(&batch, sum).map_err(in_file)?;
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
                exported_at: m.exported_at,
            })
            .collect(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::files::{part_name, write_rows};

    fn day(d: u32) -> Day {
        Day(NaiveDate::from_ymd_opt(2026, 1, d).expect("a day"))
    }

    /// The report read from the columns answers what the pure core answers
    /// over the same rows, dates outside the range left out.
    #[test]
    fn top_products_from_the_columns_equal_the_model() {
        let merchant = uuid::Uuid::now_v7();
        let m = merchant.to_string();
        let row = |d: u32, i: i64| ProductDay {
            merchant_id: m.clone(),
            date: day(d),
            currency: ["EUR", "USD"][(i % 2) as usize].to_owned(),
            sku: format!("SKU-{}", i % 5),
            product_version_from: day(1).0.and_hms_opt(0, 0, 0).expect("a time").and_utc(),
            product_name: format!("Product {}", i % 3),
            orders: 1 + i % 4,
            units: 2 + i % 7,
            gross: 1000 + 37 * i,
            discounts: 10 * (i % 6),
            net: 1000 + 37 * i - 10 * (i % 6),
        };
        let rows: Vec<ProductDay> = (1..=28u32)
            .flat_map(|d| (0..9).map(move |i| (d, i64::from(d) * 9 + i)))
            .map(|(d, i)| row(d, i))
            .collect();
        let dir = std::env::temp_dir().join(format!("mercato-report-{}", merchant.simple()));
        let layout = Layout::new(&dir);
        let partition = layout.partition(ProductDay::MART, &m, None);
        let (a, b) = rows.split_at(100);
        write_rows(&partition.join(part_name("main", 0, 10, "0")), a).expect("write");
        write_rows(&partition.join(part_name("main", 10, 20, "0")), b).expect("write");
        layout
            .save_manifest(&Manifest {
                cell: "main".into(),
                position: 20,
                history_done: true,
                ..Manifest::default()
            })
            .expect("manifest");
        let q = Question {
            report: Report::TopProducts,
            group_by: GroupBy::Product,
            from: day(5).0,
            to: day(20).0,
            limit: 7,
        };
        let answer = answer(&layout, MerchantId(merchant), &q).expect("an answer");
        let inside: Vec<ProductDay> = rows
            .iter()
            .filter(|r| within(&q, r.date))
            .cloned()
            .collect();
        let expected = model::top_products(&inside, q.limit);
        assert_eq!(expected.len(), 7);
        assert_eq!(answer.rows, json(expected));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
