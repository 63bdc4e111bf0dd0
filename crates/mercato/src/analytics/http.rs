//! `GET /v1/analytics/{report}`: a merchant's reports, read from the marts
//! (never from the OLTP database).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{Datelike, Duration, NaiveDate, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{GroupBy, Report};
use super::report::{self, Answer, Question};
use crate::http::{ApiError, ApiQuery, Problem};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::FieldErrors;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_report))
}

/// The longest range a report covers.
pub const MAX_DAYS: i64 = 5 * 366;
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// First day (UTC, `YYYY-MM-DD`, included); default: 29 days before `to`.
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<String>,
    /// Last day (included); default: today.
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<String>,
    /// `day`, `week`, `month`, `payment_method` or `customer` (revenue,
    /// average-order-value), `product` (top-products), `reason`
    /// (failure-reasons); default: the report's first.
    pub group_by: Option<String>,
    /// Rows of `top-products` (1 to 1000, default 10).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 10)]
    pub limit: Option<String>,
}

/// The years a report can ask about. chrono parses years from -262143 on, and
/// date arithmetic near those ends panics; no merchant sold anything outside
/// these years, so the bound costs nothing and keeps every `to - from` safe.
const YEARS: std::ops::RangeInclusive<i32> = 2000..=9999;

fn day(raw: &str) -> Result<NaiveDate, String> {
    let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| "is not a date (YYYY-MM-DD)".to_owned())?;
    if !YEARS.contains(&date.year()) {
        return Err(format!(
            "is outside the years {} to {}",
            YEARS.start(),
            YEARS.end()
        ));
    }
    Ok(date)
}

fn question(report: &str, params: &ReportParams) -> Result<Question, ApiError> {
    let mut errors = FieldErrors::default();
    let report = errors.check(
        "report",
        Report::parse(report).map_err(|_| {
            "is not a report: revenue, top-products, average-order-value, conversion or failure-reasons"
                .to_owned()
        }),
    );
    let to = match &params.to {
        None => Some(Utc::now().date_naive()),
        Some(raw) => errors.check("to", day(raw)),
    };
    let from = match (&params.from, to) {
        (None, Some(to)) => Some(to - Duration::days(29)),
        (None, None) => None,
        (Some(raw), _) => errors.check("from", day(raw)),
    };
    let group_by = match (&params.group_by, report) {
        (None, Some(r)) => r.groupings().first().copied(),
        (None, None) => None,
        (Some(raw), r) => errors.check(
            "group_by",
            GroupBy::parse(raw).and_then(|g| match r {
                Some(r) if !r.groupings().contains(&g) => Err(format!(
                    "{} does not offer it: {}",
                    r.as_str(),
                    r.groupings()
                        .iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                _ => Ok(g),
            }),
        ),
    };
    let limit = match &params.limit {
        None => Some(DEFAULT_LIMIT),
        Some(raw) => errors.check(
            "limit",
            raw.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| format!("is not a whole number from 1 to {MAX_LIMIT}")),
        ),
    };
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            errors.push("from", "is after `to`");
        } else if (to - from).num_days() >= MAX_DAYS {
            errors.push("to", "is more than 5 years after `from`");
        }
    }
    let built = (|| {
        Some(Question {
            report: report?,
            group_by: group_by?,
            from: from?,
            to: to?,
            limit: limit?,
        })
    })();
    Ok(errors.finish(built)?)
}

/// A report of the merchant's sales, from the analytics marts: `revenue`
/// (gross, discounts, refunds, net), `top-products`, `average-order-value`
/// (with the discount rate), `conversion` (checkouts started → confirmed) and
/// `failure-reasons`. The marts trail the orders by the export's lag (a few
/// seconds under `serve`); `as_of` says how far each cell is exported.
#[utoipa::path(get, path = "/v1/analytics/{report}", params(("report" = String, Path), ReportParams),
    security(("api_key" = [])), tag = "analytics",
    responses(
        (status = 200, body = Answer),
        (status = 422, body = Problem, content_type = "application/problem+json",
         description = "an unknown report or group_by, a date outside the years 2000 to 9999, `from` after `to`, a range over 5 years"),
    ))]
pub async fn get_report(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<ReportParams>,
) -> Result<Json<Answer>, ApiError> {
    let q = question(&name, &params)?;
    let layout = state.analytics.clone();
    let merchant = tenant.merchant_id;
    let answer = tokio::task::spawn_blocking(move || report::answer(&layout, merchant, &q))
        .await
        .map_err(|_| ApiError::Unavailable("the report could not be read; try again"))?
        .map_err(|e| {
            tracing::error!(error = %e, "analytics report failed");
            ApiError::Unavailable("the analytics marts could not be read; try again")
        })?;
    Ok(Json(answer))
}
