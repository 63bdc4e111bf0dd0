use std::collections::BTreeMap;

use ::pricing::{CalculatorVersion, Currency, RateTable, RuleError, RuleSet, MAX_RATE_BPS};
use axum::extract::Path;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Revision, RulesDiff, Settings, Shipping};
use crate::catalog::{is_currency, Money, MAX_PRICE};
use crate::http::{ApiError, ApiJson, ApiQuery, Problem};
use crate::state::AppState;
use crate::tenancy::Tenant;
use crate::validation::{FieldError, FieldErrors};

mod rollouts;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(rollouts::routes())
        .routes(routes!(get_rules, put_rules))
        .routes(routes!(list_revisions))
        .routes(routes!(get_revision))
        .routes(routes!(get_settings, put_settings))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesBody {
    /// The rules, in the DSL of API.md ("Pricing rules"): `{id, priority, stackable,
    /// group?, when, then, limits?}`.
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<serde_json::Value>,
}

/// A rule-set revision: immutable, with who made it and what it changed.
#[derive(Serialize, ToSchema)]
pub struct RuleSetRevision {
    /// 0: the merchant never wrote rules.
    pub revision: u64,
    /// The currency the rules' amounts are in.
    pub currency: String,
    #[schema(value_type = Vec<Object>)]
    pub rules: serde_json::Value,
    /// The API key that wrote it (a fingerprint, never the key).
    pub actor: String,
    pub diff: RulesDiff,
    pub created_at: DateTime<Utc>,
}

impl From<Revision> for RuleSetRevision {
    fn from(r: Revision) -> Self {
        RuleSetRevision {
            revision: r.rules.revision(),
            currency: r.rules.currency().as_str().to_owned(),
            rules: r.document["rules"].clone(),
            actor: r.actor,
            diff: r.diff,
            created_at: r.created_at,
        }
    }
}

/// A rule the DSL refuses, named by rule and JSON path.
fn rule_errors(errors: Vec<RuleError>) -> ApiError {
    ApiError::Validation(
        errors
            .into_iter()
            .map(|e| {
                let field = if e.field.is_empty() {
                    "rules".to_owned()
                } else {
                    e.field
                };
                let message = match e.rule {
                    Some(rule) => format!("rule {rule}: {}", e.message),
                    None => e.message,
                };
                FieldError::new(field, message)
            })
            .collect(),
    )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivateParam {
    /// `false`: record the revision without putting it in force, to try it with
    /// a rollout (`POST /v1/pricing/rollouts`). Default `true`.
    #[param(value_type = Option<bool>, default = true)]
    pub activate: Option<String>,
}

/// Replaces the merchant's rules with a new revision (audited: who, when, diff).
/// Invalid rules are refused, naming each rule and field, and the revision in
/// force stays. With `?activate=false` the revision is only recorded, to be
/// tried in shadow or on a share of customers first.
#[utoipa::path(put, path = "/v1/pricing/rules", request_body = RulesBody, params(ActivateParam),
    security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = RuleSetRevision)))]
pub async fn put_rules(
    tenant: Tenant,
    ApiQuery(param): ApiQuery<ActivateParam>,
    ApiJson(body): ApiJson<RulesBody>,
) -> Result<Json<RuleSetRevision>, ApiError> {
    let activate = match param.activate.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(ApiError::field("activate", "must be true or false")),
    };
    let document = serde_json::json!({ "rules": body.rules });
    let mut tx = tenant.begin_audited("pricing_rules.update").await?;
    let settings = super::settings(&mut tx).await?;
    RuleSet::from_value(&document, settings.currency).map_err(rule_errors)?;
    let revision = super::put_rules(
        &mut tx,
        &settings,
        &document,
        tenant.caller.name(),
        activate,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(revision.into()))
}

/// The rules in force (revision 0 and no rules if the merchant never wrote any).
#[utoipa::path(get, path = "/v1/pricing/rules", security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = RuleSetRevision)))]
pub async fn get_rules(tenant: Tenant) -> Result<Json<RuleSetRevision>, ApiError> {
    let mut tx = tenant.begin().await?;
    let settings = super::settings(&mut tx).await?;
    let revision = super::current_rules(&mut tx, &settings).await?;
    tx.commit().await?;
    Ok(Json(revision.into()))
}

#[derive(Serialize, ToSchema)]
pub struct RevisionList {
    /// Newest first (at most 100).
    pub data: Vec<RuleSetRevision>,
}

/// Every revision of the merchant's rules, newest first: the audit log.
#[utoipa::path(get, path = "/v1/pricing/rules/revisions", security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = RevisionList)))]
pub async fn list_revisions(tenant: Tenant) -> Result<Json<RevisionList>, ApiError> {
    let mut tx = tenant.begin().await?;
    let revisions = super::revisions(&mut tx, None, 100).await?;
    tx.commit().await?;
    Ok(Json(RevisionList {
        data: revisions.into_iter().map(Into::into).collect(),
    }))
}

/// One revision of the merchant's rules.
#[utoipa::path(get, path = "/v1/pricing/rules/revisions/{n}", params(("n" = String, Path)),
    security(("api_key" = [])), tag = "pricing",
    responses(
        (status = 200, body = RuleSetRevision),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_revision(
    tenant: Tenant,
    Path(n): Path<String>,
) -> Result<Json<RuleSetRevision>, ApiError> {
    let n: i64 = n.parse().map_err(|_| ApiError::NotFound("revision"))?;
    let mut tx = tenant.begin().await?;
    let revision = super::revision(&mut tx, n).await?;
    tx.commit().await?;
    revision
        .map(|r| Json(r.into()))
        .ok_or(ApiError::NotFound("revision"))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxBody {
    /// Prices (and shipping) include tax.
    pub inclusive: bool,
    /// Basis points per ship-to country (`{"DE": 1900}` is 19 %).
    #[serde(default)]
    pub rates_bps: BTreeMap<String, u32>,
    /// The rate for carts without a listed country (basis points).
    pub default_rate_bps: Option<u32>,
    /// Shipping is taxed at the goods' rate.
    #[serde(default)]
    pub shipping_taxable: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingBody {
    /// `free`, `flat` (always `amount`) or `free_over` (`amount` below `threshold`).
    pub kind: String,
    pub amount: Option<Money>,
    pub threshold: Option<Money>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// The currency rules are written in (ISO 4217).
    pub currency: String,
    /// The calculator that charges: `v1` or `v2`.
    pub calculator_version: String,
    pub tax: TaxBody,
    pub shipping: ShippingBody,
}

fn settings_body(s: &Settings) -> SettingsBody {
    let money = |m: ::pricing::Money| Money {
        amount: m.amount,
        currency: m.currency.as_str().to_owned(),
    };
    let (kind, amount, threshold) = match &s.shipping {
        Shipping::Free => ("free", None, None),
        Shipping::Flat { amount } => ("flat", Some(money(*amount)), None),
        Shipping::FreeOver { amount, threshold } => {
            ("free_over", Some(money(*amount)), Some(money(*threshold)))
        }
    };
    SettingsBody {
        currency: s.currency.as_str().to_owned(),
        calculator_version: s.calculator_version.as_str().to_owned(),
        tax: TaxBody {
            inclusive: s.tax.inclusive,
            rates_bps: s.tax.rates.clone(),
            default_rate_bps: s.tax.default_rate,
            shipping_taxable: s.tax.shipping_taxable,
        },
        shipping: ShippingBody {
            kind: kind.to_owned(),
            amount,
            threshold,
        },
    }
}

fn parse_settings(body: &SettingsBody) -> Result<Settings, ApiError> {
    let mut errors = FieldErrors::default();
    let currency = errors.check(
        "currency",
        Currency::parse(&body.currency)
            .ok()
            .filter(|_| is_currency(&body.currency))
            .ok_or_else(|| "must be an ISO 4217 currency code, e.g. EUR".to_owned()),
    );
    let version = errors.check(
        "calculator_version",
        CalculatorVersion::parse_in_force(&body.calculator_version).map_err(|e| e.to_string()),
    );
    for (field, rate) in body
        .tax
        .rates_bps
        .iter()
        .map(|(c, r)| (format!("tax.rates_bps.{c}"), *r))
        .chain(
            body.tax
                .default_rate_bps
                .map(|r| ("tax.default_rate_bps".to_owned(), r)),
        )
    {
        if rate > MAX_RATE_BPS {
            errors.push(
                field,
                format!("must be from 0 to {MAX_RATE_BPS} basis points"),
            );
        }
    }
    let amount = |field: &str, m: &Option<Money>, errors: &mut FieldErrors| match m {
        None => {
            errors.push(field, "is required for this kind");
            None
        }
        Some(m) if !(0..=MAX_PRICE).contains(&m.amount) || m.currency != body.currency => {
            errors.push(
                field,
                format!("must be 0 to {MAX_PRICE} minor units in the settings' currency"),
            );
            None
        }
        Some(m) => Currency::parse(&m.currency)
            .ok()
            .map(|c| ::pricing::Money::new(m.amount, c)),
    };
    let shipping = match body.shipping.kind.as_str() {
        "free" => Some(Shipping::Free),
        "flat" => amount("shipping.amount", &body.shipping.amount, &mut errors)
            .map(|amount| Shipping::Flat { amount }),
        "free_over" => {
            let a = amount("shipping.amount", &body.shipping.amount, &mut errors);
            let t = amount("shipping.threshold", &body.shipping.threshold, &mut errors);
            a.zip(t)
                .map(|(amount, threshold)| Shipping::FreeOver { amount, threshold })
        }
        _ => {
            errors.push("shipping.kind", "must be one of free, flat, free_over");
            None
        }
    };
    let tax = RateTable {
        rates: body.tax.rates_bps.clone(),
        default_rate: body.tax.default_rate_bps,
        inclusive: body.tax.inclusive,
        shipping_taxable: body.tax.shipping_taxable,
    };
    Ok(errors.finish(currency.zip(version).zip(shipping).map(
        |((currency, calculator_version), shipping)| Settings {
            currency,
            calculator_version,
            tax,
            shipping,
        },
    ))?)
}

/// The merchant's pricing settings (defaults until set).
#[utoipa::path(get, path = "/v1/pricing/settings", security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = SettingsBody)))]
pub async fn get_settings(tenant: Tenant) -> Result<Json<SettingsBody>, ApiError> {
    let mut tx = tenant.begin().await?;
    let settings = super::settings(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(settings_body(&settings)))
}

/// Sets the merchant's pricing settings: rules' currency, calculator version,
/// tax (rate table; inclusive or exclusive prices) and shipping. Discounts apply
/// before tax.
#[utoipa::path(put, path = "/v1/pricing/settings", request_body = SettingsBody,
    security(("api_key" = [])), tag = "pricing",
    responses((status = 200, body = SettingsBody)))]
pub async fn put_settings(
    tenant: Tenant,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<SettingsBody>, ApiError> {
    let settings = parse_settings(&body)?;
    let mut tx = tenant.begin_audited("pricing_settings.update").await?;
    let current = super::current_rules(&mut tx, &settings).await?;
    if !current.rules.rules().is_empty() && current.rules.currency() != settings.currency {
        return Err(ApiError::field(
            "currency",
            "the rules in force are written in another currency: replace them with an empty rule set first",
        ));
    }
    super::put_settings(&mut tx, &settings).await?;
    tx.commit().await?;
    Ok(Json(settings_body(&settings)))
}
