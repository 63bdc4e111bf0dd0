//! The marts (a star schema) and the reports over them, without I/O.
//!
//! Grains:
//! - `fact_order_lines`: one row per line of a confirmed order, dated by the
//!   order's day (`orders.created_at`, UTC).
//! - `fact_payments`: one row per money movement: the capture of a confirmed
//!   order, a refund, a remediation adjustment (charged, refunded, credited).
//! - `fact_checkout_attempts`: one row per checkout outcome: `started` (an
//!   order was placed), `confirmed`, `failed` (with the reason).
//! - `fact_audit`: one row per record of a merchant's audit trail, dated by
//!   its day.
//! - `dim_product`: type 2 — one row per version of a SKU (name, list price),
//!   valid from `valid_from` until the next version's.
//! - `dim_customer`, `dim_merchant`, `dim_date`: one row per customer (first
//!   seen), merchant, calendar day.
//!
//! The pre-aggregates (`agg_*`) are sums per day: adding two of them is
//! adding their rows, so each export writes its own and a reader sums.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::columns::{mart_row, At, Day};
use crate::db::text_enum;

mart_row!(
    "fact_order_lines",
    /// A line of a confirmed order.
    pub struct OrderLine {
        pub merchant_id: String,
        pub order_id: String,
        /// The line's place in the order (from 0).
        pub line_no: i64,
        pub date: Day,
        pub ordered_at: At,
        pub customer_key: String,
        pub payment_method: String,
        pub sku: String,
        /// `dim_product`: the version in effect when the line was sold.
        pub product_version_from: At,
        pub product_name: String,
        pub quantity: i64,
        pub unit_price: i64,
        /// `unit_price × quantity`.
        pub gross: i64,
        pub discount: i64,
        pub tax: i64,
        /// `gross − discount`.
        pub net: i64,
        pub currency: String,
        pub ruleset_revision: i64,
        pub calculator_version: String,
    }
);

mart_row!(
    "fact_payments",
    /// A money movement.
    pub struct Payment {
        pub merchant_id: String,
        /// The event it came from: a movement's key.
        pub event_id: String,
        pub order_id: String,
        pub date: Day,
        pub at: At,
        /// `capture`, `refund`, `adjustment_charge`, `adjustment_refund`, `store_credit`.
        pub kind: String,
        pub amount: i64,
        pub currency: String,
        pub payment_method: String,
        pub customer_key: String,
    }
);

mart_row!(
    "fact_checkout_attempts",
    /// A checkout's outcome.
    pub struct CheckoutAttempt {
        pub merchant_id: String,
        pub event_id: String,
        pub order_id: String,
        pub date: Day,
        pub at: At,
        /// `started`, `confirmed`, `failed`.
        pub outcome: String,
        pub reason: Option<String>,
    }
);

mart_row!(
    "fact_audit",
    /// A record of a merchant's audit trail (`docs/audit.md`), without the
    /// address and user agent it came from.
    pub struct AuditFact {
        pub merchant_id: String,
        pub record_id: String,
        pub date: Day,
        pub at: At,
        pub action: String,
        /// `key`, `person`, `operator`, `admin`, `system`.
        pub actor_kind: String,
        pub actor: String,
        pub target_type: String,
        pub target_id: String,
        /// `insert`, `update`, `delete`.
        pub operation: String,
        /// The record's `changes`, as JSON text.
        pub changes: String,
        pub request_id: Option<String>,
    }
);

mart_row!(
    "dim_product",
    /// A version of a SKU.
    pub struct ProductVersion {
        pub merchant_id: String,
        pub product_id: String,
        pub sku: String,
        pub name: String,
        pub list_price: i64,
        pub currency: String,
        pub valid_from: At,
    }
);

mart_row!(
    "dim_customer",
    /// A customer as first seen (several exports may each write one: the
    /// earliest `first_seen` of a key is the customer's).
    pub struct Customer {
        pub merchant_id: String,
        pub customer_key: String,
        pub email: String,
        pub first_seen: At,
    }
);

mart_row!(
    "dim_merchant",
    pub struct MerchantRow {
        pub merchant_id: String,
        pub slug: String,
        pub name: String,
    }
);

mart_row!(
    "dim_date",
    pub struct DateRow {
        pub date: Day,
        pub year: i64,
        pub quarter: i64,
        pub month: i64,
        pub iso_year: i64,
        pub iso_week: i64,
        /// 1 (Monday) … 7 (Sunday).
        pub day_of_week: i64,
    }
);

mart_row!(
    "agg_sales_daily",
    /// Money per day, currency and payment method.
    pub struct SalesDay {
        pub merchant_id: String,
        pub date: Day,
        pub currency: String,
        pub payment_method: String,
        /// Confirmed orders (dated by order day).
        pub orders: i64,
        pub units: i64,
        pub gross: i64,
        pub discounts: i64,
        pub tax: i64,
        /// Refunded (dated by refund day).
        pub refunds: i64,
        pub adjustments_charged: i64,
        pub adjustments_refunded: i64,
        pub store_credit: i64,
    }
);

mart_row!(
    "agg_product_daily",
    /// Sales per day and product version.
    pub struct ProductDay {
        pub merchant_id: String,
        pub date: Day,
        pub currency: String,
        pub sku: String,
        pub product_version_from: At,
        pub product_name: String,
        pub orders: i64,
        pub units: i64,
        pub gross: i64,
        pub discounts: i64,
        pub net: i64,
    }
);

mart_row!(
    "agg_checkout_daily",
    /// Checkout outcomes per day (and failure reason; `""` for none).
    pub struct CheckoutDay {
        pub merchant_id: String,
        pub date: Day,
        pub outcome: String,
        pub reason: String,
        pub attempts: i64,
    }
);

/// `dim_date` for the days from `first` to `last`.
pub fn calendar(first: NaiveDate, last: NaiveDate) -> Vec<DateRow> {
    first
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|d| DateRow {
            date: Day(d),
            year: i64::from(d.year()),
            quarter: i64::from((d.month() - 1) / 3 + 1),
            month: i64::from(d.month()),
            iso_year: i64::from(d.iso_week().year()),
            iso_week: i64::from(d.iso_week().week()),
            day_of_week: i64::from(d.weekday().number_from_monday()),
        })
        .collect()
}

type SalesKey = (String, Day, String, String);

fn sales_slot<'a>(
    sums: &'a mut BTreeMap<SalesKey, SalesDay>,
    merchant: &str,
    date: Day,
    currency: &str,
    method: &str,
) -> &'a mut SalesDay {
    let key = (merchant.into(), date, currency.into(), method.into());
    sums.entry(key).or_insert_with(|| SalesDay {
        merchant_id: merchant.into(),
        date,
        currency: currency.into(),
        payment_method: method.into(),
        orders: 0,
        units: 0,
        gross: 0,
        discounts: 0,
        tax: 0,
        refunds: 0,
        adjustments_charged: 0,
        adjustments_refunded: 0,
        store_credit: 0,
    })
}

/// The day sums of one export's facts.
pub fn sales_days(lines: &[OrderLine], payments: &[Payment]) -> Vec<SalesDay> {
    let mut sums = BTreeMap::new();
    for l in lines {
        let d = sales_slot(
            &mut sums,
            &l.merchant_id,
            l.date,
            &l.currency,
            &l.payment_method,
        );
        if l.line_no == 0 {
            d.orders += 1;
        }
        d.units += l.quantity;
        d.gross += l.gross;
        d.discounts += l.discount;
        d.tax += l.tax;
    }
    for p in payments {
        let d = sales_slot(
            &mut sums,
            &p.merchant_id,
            p.date,
            &p.currency,
            &p.payment_method,
        );
        match p.kind.as_str() {
            "refund" => d.refunds += p.amount,
            "adjustment_charge" => d.adjustments_charged += p.amount,
            "adjustment_refund" => d.adjustments_refunded += p.amount,
            "store_credit" => d.store_credit += p.amount,
            _ => {}
        }
    }
    sums.into_values().collect()
}

/// The day sums per product version of one export's lines.
pub fn product_days(lines: &[OrderLine]) -> Vec<ProductDay> {
    merge_product_days(
        lines
            .iter()
            .map(|l| ProductDay {
                merchant_id: l.merchant_id.clone(),
                date: l.date,
                currency: l.currency.clone(),
                sku: l.sku.clone(),
                product_version_from: l.product_version_from,
                product_name: l.product_name.clone(),
                orders: 1,
                units: l.quantity,
                gross: l.gross,
                discounts: l.discount,
                net: l.net,
            })
            .collect(),
    )
}

/// The day counts of one export's checkout outcomes.
pub fn checkout_days(attempts: &[CheckoutAttempt]) -> Vec<CheckoutDay> {
    merge_checkout_days(
        attempts
            .iter()
            .map(|a| CheckoutDay {
                merchant_id: a.merchant_id.clone(),
                date: a.date,
                outcome: a.outcome.clone(),
                reason: a.reason.clone().unwrap_or_default(),
                attempts: 1,
            })
            .collect(),
    )
}

/// Day sums of several exports as one set (a compacted file's rows).
pub fn merge_sales_days(rows: Vec<SalesDay>) -> Vec<SalesDay> {
    let mut sums: BTreeMap<SalesKey, SalesDay> = BTreeMap::new();
    for r in rows {
        let d = sales_slot(
            &mut sums,
            &r.merchant_id,
            r.date,
            &r.currency,
            &r.payment_method,
        );
        d.orders += r.orders;
        d.units += r.units;
        d.gross += r.gross;
        d.discounts += r.discounts;
        d.tax += r.tax;
        d.refunds += r.refunds;
        d.adjustments_charged += r.adjustments_charged;
        d.adjustments_refunded += r.adjustments_refunded;
        d.store_credit += r.store_credit;
    }
    sums.into_values().collect()
}

pub fn merge_product_days(rows: Vec<ProductDay>) -> Vec<ProductDay> {
    type Key = (String, Day, String, String, At);
    let mut sums: BTreeMap<Key, ProductDay> = BTreeMap::new();
    for r in rows {
        let key = (
            r.merchant_id.clone(),
            r.date,
            r.currency.clone(),
            r.sku.clone(),
            r.product_version_from,
        );
        match sums.get_mut(&key) {
            Some(d) => {
                d.orders += r.orders;
                d.units += r.units;
                d.gross += r.gross;
                d.discounts += r.discounts;
                d.net += r.net;
            }
            None => {
                sums.insert(key, r);
            }
        }
    }
    sums.into_values().collect()
}

pub fn merge_checkout_days(rows: Vec<CheckoutDay>) -> Vec<CheckoutDay> {
    let mut sums: BTreeMap<(String, Day, String, String), i64> = BTreeMap::new();
    for r in rows {
        *sums
            .entry((r.merchant_id, r.date, r.outcome, r.reason))
            .or_default() += r.attempts;
    }
    sums.into_iter()
        .map(
            |((merchant_id, date, outcome, reason), attempts)| CheckoutDay {
                merchant_id,
                date,
                outcome,
                reason,
                attempts,
            },
        )
        .collect()
}

text_enum! {
    /// A report a merchant can ask for.
    pub enum Report {
        Revenue = "revenue",
        TopProducts = "top-products",
        AverageOrderValue = "average-order-value",
        Conversion = "conversion",
        FailureReasons = "failure-reasons",
    }
}

text_enum! {
    /// What a report's rows are per.
    pub enum GroupBy {
        Day = "day",
        Week = "week",
        Month = "month",
        Product = "product",
        Customer = "customer",
        PaymentMethod = "payment_method",
        Reason = "reason",
    }
}

impl Report {
    /// The groupings a report offers; the first is its default.
    pub fn groupings(self) -> &'static [GroupBy] {
        use GroupBy::*;
        match self {
            Report::Revenue => &[Day, Week, Month, PaymentMethod, Customer],
            Report::TopProducts => &[Product],
            Report::AverageOrderValue => &[Month, Week, Day, PaymentMethod],
            Report::Conversion => &[Day, Week, Month],
            Report::FailureReasons => &[Reason],
        }
    }
}

/// The period a day falls in: the day (`2026-01-31`), its ISO week
/// (`2026-W05`), its month (`2026-01`).
pub fn period(group: GroupBy, day: Day) -> String {
    let d = day.0;
    match group {
        GroupBy::Week => format!("{}-W{:02}", d.iso_week().year(), d.iso_week().week()),
        GroupBy::Month => format!("{:04}-{:02}", d.year(), d.month()),
        _ => d.to_string(),
    }
}

/// Revenue: gross, discounts, refunds and net (`gross − discounts − refunds`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RevenueRow {
    /// The day, week (`2026-W05`), month (`2026-01`), payment method or customer.
    pub key: String,
    pub currency: String,
    pub orders: i64,
    pub units: i64,
    pub gross: i64,
    pub discounts: i64,
    pub tax: i64,
    pub refunds: i64,
    pub net: i64,
    /// `(gross − discounts) / orders` in minor units, rounded down; 0 without orders.
    pub average_order_value: i64,
    /// `discounts / gross`; 0 without sales.
    pub discount_rate: f64,
}

fn finish_revenue(mut r: RevenueRow) -> RevenueRow {
    r.net = r.gross - r.discounts - r.refunds;
    r.average_order_value = if r.orders > 0 {
        (r.gross - r.discounts).div_euclid(r.orders)
    } else {
        0
    };
    r.discount_rate = if r.gross > 0 {
        r.discounts as f64 / r.gross as f64
    } else {
        0.0
    };
    r
}

fn revenue_slot<'a>(
    rows: &'a mut BTreeMap<(String, String), RevenueRow>,
    key: String,
    currency: &str,
) -> &'a mut RevenueRow {
    rows.entry((key.clone(), currency.to_owned()))
        .or_insert_with(|| RevenueRow {
            key,
            currency: currency.to_owned(),
            ..RevenueRow::default()
        })
}

/// Revenue per `group` (a period or the payment method) from day sums.
pub fn revenue(days: &[SalesDay], group: GroupBy) -> Vec<RevenueRow> {
    let mut rows = BTreeMap::new();
    for d in days {
        let key = match group {
            GroupBy::PaymentMethod => d.payment_method.clone(),
            g => period(g, d.date),
        };
        let r = revenue_slot(&mut rows, key, &d.currency);
        r.orders += d.orders;
        r.units += d.units;
        r.gross += d.gross;
        r.discounts += d.discounts;
        r.tax += d.tax;
        r.refunds += d.refunds;
    }
    rows.into_values().map(finish_revenue).collect()
}

/// Revenue per customer, from the facts (the day sums have no customer),
/// largest net first.
pub fn revenue_by_customer(lines: &[OrderLine], payments: &[Payment]) -> Vec<RevenueRow> {
    let mut rows = BTreeMap::new();
    for l in lines {
        let r = revenue_slot(&mut rows, l.customer_key.clone(), &l.currency);
        if l.line_no == 0 {
            r.orders += 1;
        }
        r.units += l.quantity;
        r.gross += l.gross;
        r.discounts += l.discount;
        r.tax += l.tax;
    }
    for p in payments.iter().filter(|p| p.kind == "refund") {
        revenue_slot(&mut rows, p.customer_key.clone(), &p.currency).refunds += p.amount;
    }
    let mut rows: Vec<RevenueRow> = rows.into_values().map(finish_revenue).collect();
    rows.sort_by(|a, b| b.net.cmp(&a.net).then_with(|| a.key.cmp(&b.key)));
    rows
}

/// A product's sales: per SKU and name (a renamed product has a row per name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProductRow {
    pub sku: String,
    /// The name it was sold under.
    pub name: String,
    pub currency: String,
    /// Orders with a line of it.
    pub orders: i64,
    pub units: i64,
    pub gross: i64,
    pub discounts: i64,
    pub net: i64,
}

/// The best-selling products by net sales (ties by SKU), at most `limit`.
pub fn top_products(days: &[ProductDay], limit: usize) -> Vec<ProductRow> {
    let mut totals = ProductTotals::default();
    for d in days {
        totals.add(
            ProductKey {
                sku: &d.sku,
                name: &d.product_name,
                currency: &d.currency,
            },
            [d.orders, d.units, d.gross, d.discounts, d.net],
        );
    }
    totals.top(limit)
}

/// What a product's sales are summed by: the SKU, the name it was sold
/// under and the currency.
#[derive(Debug, Clone, Copy)]
pub struct ProductKey<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub currency: &'a str,
}

/// Product sales summed as they are read: a key is copied once, when first
/// seen, so a year of product-days costs no allocation per row.
#[derive(Debug, Default)]
pub struct ProductTotals {
    /// SKU → name → currency → the product's row.
    rows: HashMap<String, HashMap<String, HashMap<String, ProductRow>>>,
}

impl ProductTotals {
    /// Adds `[orders, units, gross, discounts, net]` to a product.
    pub fn add(&mut self, key: ProductKey<'_>, sums: [i64; 5]) {
        fn slot<'m, V>(
            map: &'m mut HashMap<String, V>,
            key: &str,
            new: impl FnOnce() -> V,
        ) -> &'m mut V {
            if !map.contains_key(key) {
                map.insert(key.to_owned(), new());
            }
            map.get_mut(key).expect("inserted above")
        }
        let names = slot(&mut self.rows, key.sku, HashMap::new);
        let currencies = slot(names, key.name, HashMap::new);
        let r = slot(currencies, key.currency, || ProductRow {
            sku: key.sku.to_owned(),
            name: key.name.to_owned(),
            currency: key.currency.to_owned(),
            orders: 0,
            units: 0,
            gross: 0,
            discounts: 0,
            net: 0,
        });
        let [orders, units, gross, discounts, net] = sums;
        r.orders += orders;
        r.units += units;
        r.gross += gross;
        r.discounts += discounts;
        r.net += net;
    }

    /// The best sellers by net sales (ties by SKU, then name, then currency),
    /// at most `limit`.
    pub fn top(self, limit: usize) -> Vec<ProductRow> {
        let mut rows: Vec<ProductRow> = self
            .rows
            .into_values()
            .flat_map(HashMap::into_values)
            .flat_map(HashMap::into_values)
            .collect();
        rows.sort_by(|a, b| {
            b.net
                .cmp(&a.net)
                .then_with(|| a.sku.cmp(&b.sku))
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.currency.cmp(&b.currency))
        });
        rows.truncate(limit);
        rows
    }
}

/// Checkouts started, confirmed and failed, per period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConversionRow {
    pub key: String,
    pub started: i64,
    pub confirmed: i64,
    pub failed: i64,
    /// Confirmed orders the merchant cancelled (counted on the day of the cancellation).
    pub cancelled: i64,
    /// `confirmed / started`; 0 without checkouts.
    pub conversion_rate: f64,
}

pub fn conversion(days: &[CheckoutDay], group: GroupBy) -> Vec<ConversionRow> {
    let mut rows: BTreeMap<String, ConversionRow> = BTreeMap::new();
    for d in days {
        let key = period(group, d.date);
        let r = rows.entry(key.clone()).or_insert_with(|| ConversionRow {
            key,
            ..ConversionRow::default()
        });
        match d.outcome.as_str() {
            "started" => r.started += d.attempts,
            "confirmed" => r.confirmed += d.attempts,
            "failed" => r.failed += d.attempts,
            "cancelled" => r.cancelled += d.attempts,
            _ => {}
        }
    }
    rows.into_values()
        .map(|mut r| {
            r.conversion_rate = if r.started > 0 {
                r.confirmed as f64 / r.started as f64
            } else {
                0.0
            };
            r
        })
        .collect()
}

/// Failed checkouts per reason, most frequent first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FailureRow {
    pub reason: String,
    pub failed: i64,
}

pub fn failure_reasons(days: &[CheckoutDay]) -> Vec<FailureRow> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for d in days.iter().filter(|d| d.outcome == "failed") {
        *counts.entry(d.reason.clone()).or_default() += d.attempts;
    }
    let mut rows: Vec<FailureRow> = counts
        .into_iter()
        .map(|(reason, failed)| FailureRow { reason, failed })
        .collect();
    rows.sort_by(|a, b| {
        b.failed
            .cmp(&a.failed)
            .then_with(|| a.reason.cmp(&b.reason))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn line(day: u32, method: &str, line_no: i64, gross: i64, discount: i64) -> OrderLine {
        let at = Utc
            .with_ymd_and_hms(2026, 1, day, 12, 0, 0)
            .single()
            .expect("a time");
        OrderLine {
            merchant_id: "m".into(),
            order_id: format!("o{day}{method}"),
            line_no,
            date: Day::of(at),
            ordered_at: at,
            customer_key: format!("c{}", day % 3),
            payment_method: method.into(),
            sku: format!("sku-{}", gross % 4),
            product_version_from: at,
            product_name: "P".into(),
            quantity: 1 + gross % 3,
            unit_price: gross,
            gross,
            discount,
            tax: 0,
            net: gross - discount,
            currency: "EUR".into(),
            ruleset_revision: 1,
            calculator_version: "v1".into(),
        }
    }

    proptest! {
        /// However the day sums are grouped, and however the facts were split
        /// between exports, the totals are the facts' totals.
        #[test]
        fn every_grouping_of_revenue_adds_up_to_the_facts(
            raw in proptest::collection::vec((1u32..28, 0usize..2, 0i64..3, 0i64..10_000, 0i64..100), 0..60)
        ) {
            let methods = ["card", "wallet"];
            let lines: Vec<OrderLine> = raw.iter()
                .map(|(d, m, n, g, disc)| line(*d, methods[*m], *n, *g, (*disc).min(*g)))
                .collect();
            let days = sales_days(&lines, &[]);
            let gross: i64 = lines.iter().map(|l| l.gross).sum();
            let discounts: i64 = lines.iter().map(|l| l.discount).sum();
            let orders = lines.iter().filter(|l| l.line_no == 0).count() as i64;
            for group in [GroupBy::Day, GroupBy::Week, GroupBy::Month, GroupBy::PaymentMethod] {
                let rows = revenue(&days, group);
                prop_assert_eq!(rows.iter().map(|r| r.gross).sum::<i64>(), gross);
                prop_assert_eq!(rows.iter().map(|r| r.discounts).sum::<i64>(), discounts);
                prop_assert_eq!(rows.iter().map(|r| r.orders).sum::<i64>(), orders);
            }
            let by_customer = revenue_by_customer(&lines, &[]);
            prop_assert_eq!(by_customer.iter().map(|r| r.net).sum::<i64>(), gross - discounts);
            let (a, b) = lines.split_at(lines.len() / 2);
            let mut split = sales_days(a, &[]);
            split.extend(sales_days(b, &[]));
            prop_assert_eq!(revenue(&split, GroupBy::Month), revenue(&days, GroupBy::Month));
            let top = top_products(&product_days(&lines), usize::MAX);
            prop_assert_eq!(top.iter().map(|r| r.net).sum::<i64>(), gross - discounts);
        }
    }

    #[test]
    fn weeks_are_iso_weeks_and_months_calendar_months() {
        let day = |y, m, d| Day(NaiveDate::from_ymd_opt(y, m, d).expect("a date"));
        assert_eq!(period(GroupBy::Week, day(2027, 1, 1)), "2026-W53");
        assert_eq!(period(GroupBy::Week, day(2026, 12, 28)), "2026-W53");
        assert_eq!(period(GroupBy::Month, day(2026, 2, 28)), "2026-02");
        assert_eq!(period(GroupBy::Day, day(2026, 2, 28)), "2026-02-28");
    }

    #[test]
    fn a_mart_row_survives_a_record_batch() {
        use crate::analytics::columns::MartRow;
        let rows = vec![line(3, "card", 0, 1200, 200), line(4, "wallet", 1, 300, 0)];
        let batch = OrderLine::to_batch(&rows).expect("a batch");
        assert_eq!(OrderLine::from_batch(&batch).expect("rows"), rows);
    }
}
