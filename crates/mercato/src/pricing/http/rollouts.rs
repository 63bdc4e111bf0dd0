//! Rollouts of rule-set revisions and calculator versions, and pricing alerts.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::pagination::{List, Page, PageParams};
use crate::pricing::rollout::{
    self, Alert, Measured, Periods, Rollout, RolloutError, RolloutOrder, RolloutSummary,
};
use crate::pricing::{Bands, Stage};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{FieldError, FieldErrors};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rollouts, post_rollout))
        .routes(routes!(get_rollout, patch_rollout))
        .routes(routes!(list_rollout_orders))
        .routes(routes!(list_alerts))
        .routes(routes!(post_anomaly_check))
}

impl From<RolloutError> for ApiError {
    fn from(err: RolloutError) -> Self {
        let conflict = |kind, title, err: &RolloutError| ApiError::Conflict {
            kind,
            title,
            detail: err.to_string(),
            errors: vec![],
        };
        match err {
            RolloutError::UnknownRevision(_) | RolloutError::CurrencyMismatch { .. } => {
                ApiError::field("revision", err.to_string())
            }
            RolloutError::NothingToTry { .. } => ApiError::Validation(vec![
                FieldError::new("revision", err.to_string()),
                FieldError::new("calculator_version", err.to_string()),
            ]),
            RolloutError::Percent => ApiError::field("percent", err.to_string()),
            RolloutError::AlreadyRunning(_) => {
                conflict("rollout-running", "Another rollout is running", &err)
            }
            RolloutError::Finished { .. } => conflict("rollout-finished", "Rollout is over", &err),
            RolloutError::Superseded { .. } => {
                conflict("rollout-superseded", "Rules changed since", &err)
            }
            RolloutError::NotFound => ApiError::NotFound("rollout"),
            RolloutError::Db(e) => e.into(),
        }
    }
}

fn parse_stage(raw: &str, errors: &mut FieldErrors) -> Option<Stage> {
    errors.check("stage", Stage::parse(raw))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// The revision to try (default: the one in force); write it first with
    /// `PUT /v1/pricing/rules?activate=false`.
    pub revision: Option<i64>,
    /// The calculator to try, `v1` or `v2` (default: the one in force).
    pub calculator_version: Option<String>,
    /// `shadow` (never charged) or `percentage` (charged to `percent` of customers).
    pub stage: String,
    /// 1 to 99, with stage `percentage`: the share of customers (stable per
    /// customer e-mail) charged the candidate.
    pub percent: Option<i32>,
}

/// Starts trying a revision and/or calculator version: in shadow, every quote
/// and checkout is priced by both and the live price charged, each order
/// recording both totals; at a percentage, that share of customers is charged
/// the candidate's price. One rollout runs at a time.
#[utoipa::path(post, path = "/v1/pricing/rollouts", request_body = RolloutBody,
    security(("api_key" = [])), tag = "pricing",
    responses(
        (status = 201, body = Rollout),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_rollout(
    tenant: Tenant,
    ApiJson(body): ApiJson<RolloutBody>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    let mut errors = FieldErrors::default();
    let stage = match parse_stage(&body.stage, &mut errors) {
        Some(Stage::Complete | Stage::RolledBack) => {
            errors.push("stage", "a rollout starts in shadow or percentage");
            None
        }
        stage => stage,
    };
    let version = match &body.calculator_version {
        None => Some(None),
        Some(v) => errors
            .check(
                "calculator_version",
                ::pricing::CalculatorVersion::parse_in_force(v).map_err(|e| e.to_string()),
            )
            .map(Some),
    };
    let (stage, version) = errors.finish(stage.zip(version))?;
    let mut tx = tenant.begin_audited("pricing_rollout.create").await?;
    let started = rollout::start(
        &mut tx,
        body.revision,
        version,
        stage,
        body.percent,
        tenant.caller.name(),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(started)))
}

#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    /// Newest first (at most 100).
    pub data: Vec<Rollout>,
}

/// Every rollout, newest first.
#[utoipa::path(get, path = "/v1/pricing/rollouts", security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = RolloutList)))]
pub async fn list_rollouts(tenant: Tenant) -> Result<Json<RolloutList>, ApiError> {
    let mut tx = tenant.begin().await?;
    let data = rollout::list(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(RolloutList { data }))
}

/// A rollout and what its orders show.
#[derive(Serialize, ToSchema)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub summary: RolloutSummary,
}

fn rollout_id(raw: &str) -> Result<Uuid, ApiError> {
    ApiError::path_id(raw, "rollout")
}

/// A rollout, with how many orders it priced, how many the candidate would
/// charge differently, and by how much.
#[utoipa::path(get, path = "/v1/pricing/rollouts/{id}", params(("id" = String, Path)),
    security(("api_key" = [])), tag = "pricing",
    responses(
        (status = 200, body = RolloutView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_rollout(
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let id = rollout_id(&id)?;
    let mut tx = tenant.begin().await?;
    let found = rollout::get(&mut tx, id).await?;
    tx.commit().await?;
    let (rollout, summary) = found.ok_or(ApiError::NotFound("rollout"))?;
    Ok(Json(RolloutView { rollout, summary }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutChange {
    /// `shadow`, `percentage` (with `percent`), `complete` (the candidate is put
    /// in force for everyone) or `rolled_back` (stopped at once; a completed
    /// rollout's predecessor is put back in force).
    pub stage: String,
    pub percent: Option<i32>,
}

/// Moves a rollout on, or rolls it back.
#[utoipa::path(patch, path = "/v1/pricing/rollouts/{id}", params(("id" = String, Path)),
    request_body = RolloutChange, security(("api_key" = [])), tag = "pricing",
    responses(
        (status = 200, body = Rollout),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_rollout(
    tenant: Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RolloutChange>,
) -> Result<Json<Rollout>, ApiError> {
    let id = rollout_id(&id)?;
    let mut errors = FieldErrors::default();
    let stage = parse_stage(&body.stage, &mut errors);
    let stage = errors.finish(stage)?;
    let mut tx = tenant.begin_audited("pricing_rollout.update").await?;
    let changed = rollout::change(&mut tx, id, stage, body.percent).await?;
    tx.commit().await?;
    Ok(Json(changed))
}

/// The orders priced while a rollout ran: both totals, and which was charged.
#[utoipa::path(get, path = "/v1/pricing/rollouts/{id}/orders",
    params(("id" = String, Path), PageParams), security(("api_key" = [])), tag = "pricing",
    responses(
        (status = 200, body = List<RolloutOrder>),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_rollout_orders(
    tenant: Tenant,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<List<RolloutOrder>>, ApiError> {
    let id = rollout_id(&id)?;
    let page = Page::parse(&params)?;
    let mut tx = tenant.begin().await?;
    if rollout::get(&mut tx, id).await?.is_none() {
        return Err(ApiError::NotFound("rollout"));
    }
    let rows = rollout::orders(&mut tx, id, page.after, page.fetch_limit()).await?;
    tx.commit().await?;
    Ok(Json(List::from_rows(rows, page, |o| o.order_id)))
}

#[derive(Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first (at most 100).
    pub data: Vec<Alert>,
}

/// Pricing anomalies raised for the merchant: average order value or discount
/// rate out of band against the trailing baseline.
#[utoipa::path(get, path = "/v1/pricing/alerts", security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = AlertList)))]
pub async fn list_alerts(tenant: Tenant) -> Result<Json<AlertList>, ApiError> {
    let mut tx = tenant.begin().await?;
    let data = rollout::alerts(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(AlertList { data }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyCheckBody {
    /// The recent period judged, in seconds (default 3600).
    pub window_seconds: Option<u64>,
    /// The trailing period before it that sets what is normal (default 7 days).
    pub baseline_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct AnomalyCheck {
    /// Per currency: the window's and the baseline's orders.
    pub measured: Vec<Measured>,
    /// The alerts this check raised (an alert already raised within the window is not repeated).
    pub raised: Vec<Alert>,
}

/// One year: the longest period a check may look at.
const MAX_PERIOD_SECONDS: u64 = 366 * 24 * 3600;

/// Runs the anomaly check now (the server also runs it on every merchant
/// with recent orders, each `--anomaly-interval`).
#[utoipa::path(post, path = "/v1/pricing/anomaly-check", request_body = AnomalyCheckBody,
    security(("api_key" = [])), tag = "pricing",
    responses(
        (status = 200, body = AnomalyCheck),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn post_anomaly_check(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<AnomalyCheckBody>,
) -> Result<Json<AnomalyCheck>, ApiError> {
    let defaults = Periods::default();
    let mut errors = FieldErrors::default();
    let mut period = |field: &str, raw: Option<u64>, default: Duration| match raw {
        None => Some(default),
        Some(s) if (1..=MAX_PERIOD_SECONDS).contains(&s) => Some(Duration::from_secs(s)),
        Some(_) => {
            errors.push(
                field,
                format!("must be from 1 to {MAX_PERIOD_SECONDS} seconds"),
            );
            None
        }
    };
    let window = period("window_seconds", body.window_seconds, defaults.window);
    let baseline = period("baseline_seconds", body.baseline_seconds, defaults.baseline);
    let (window, baseline) = errors.finish(window.zip(baseline))?;
    let mut tx = tenant.begin().await?;
    let (measured, raised) = rollout::check_anomalies(
        &mut tx,
        state.order_facts.as_ref(),
        chrono::Utc::now(),
        Periods { window, baseline },
        &Bands::default(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(AnomalyCheck { measured, raised }))
}
