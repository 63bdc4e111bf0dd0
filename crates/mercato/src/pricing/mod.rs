//! Pricing as a service: each merchant's rule-set revisions (immutable, audited),
//! settings (currency, calculator version, tax, shipping), quotes, and the usage
//! counters that keep limited rules from overrunning. The arithmetic is the pure
//! `pricing` crate's.
//!
//! Owns tables `pricing_settings`, `pricing_rule_revisions`, `pricing_rule_usage`,
//! `pricing_customer_usage` and `pricing_order_uses`. Checkout prices each order
//! with `price_cart`, takes the order's uses of limited rules with `take_uses` in
//! the transaction that records the order, and gives them back with
//! `release_uses` when the order fails.

pub mod http;
mod model;
mod store;

use ::pricing::{Cart, Currency, PricingError, RuleSet};
use uuid::Uuid;

pub use model::{diff, PricedOrder, RulesDiff, Settings, Shipping};

use crate::db::TenantTx;

/// A stored value that no longer parses: reported as a database decoding error.
fn corrupt(what: &str, err: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("stored {what} does not parse: {err}").into())
}

/// The merchant's settings, or the defaults when it never set any.
pub async fn settings(tx: &mut TenantTx) -> Result<Settings, sqlx::Error> {
    let Some(row) = store::settings(tx).await? else {
        return Ok(Settings::default());
    };
    Ok(Settings {
        currency: Currency::parse(&row.currency).map_err(|e| corrupt("currency", e))?,
        calculator_version: row
            .calculator_version
            .parse()
            .map_err(|e| corrupt("calculator version", e))?,
        tax: serde_json::from_str(&row.tax).map_err(|e| corrupt("tax settings", e))?,
        shipping: serde_json::from_str(&row.shipping)
            .map_err(|e| corrupt("shipping settings", e))?,
    })
}

pub async fn put_settings(tx: &mut TenantTx, settings: &Settings) -> Result<(), sqlx::Error> {
    let row = store::SettingsRow {
        currency: settings.currency.as_str().to_owned(),
        calculator_version: settings.calculator_version.as_str().to_owned(),
        tax: serde_json::to_string(&settings.tax).map_err(|e| corrupt("tax settings", e))?,
        shipping: serde_json::to_string(&settings.shipping)
            .map_err(|e| corrupt("shipping settings", e))?,
    };
    store::put_settings(tx, &row).await
}

/// A stored revision, parsed.
pub struct Revision {
    pub rules: RuleSet,
    /// The rules as the DSL's JSON.
    pub document: serde_json::Value,
    pub actor: String,
    pub diff: RulesDiff,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn parse_revision(row: store::Revision) -> Result<Revision, sqlx::Error> {
    let currency = Currency::parse(&row.currency).map_err(|e| corrupt("currency", e))?;
    let document: serde_json::Value =
        serde_json::from_str(&row.rules).map_err(|e| corrupt("rules", e))?;
    let rules = RuleSet::from_value(&document, currency)
        .map_err(|errors| corrupt("rules", format!("{errors:?}")))?
        .with_revision(u64::try_from(row.revision).map_err(|e| corrupt("revision", e))?);
    Ok(Revision {
        rules,
        document,
        actor: row.actor,
        diff: serde_json::from_str(&row.diff).map_err(|e| corrupt("diff", e))?,
        created_at: row.created_at,
    })
}

/// The rules in force: the newest revision, or none (revision 0, no rules) in
/// the merchant's currency.
pub async fn current_rules(
    tx: &mut TenantTx,
    settings: &Settings,
) -> Result<Revision, sqlx::Error> {
    match store::current_revision(tx).await? {
        Some(row) => parse_revision(row),
        None => Ok(Revision {
            rules: RuleSet::empty(settings.currency),
            document: serde_json::json!({"rules": []}),
            actor: String::new(),
            diff: RulesDiff::default(),
            created_at: chrono::DateTime::UNIX_EPOCH,
        }),
    }
}

/// Revision `n`, if it exists.
pub async fn revision(tx: &mut TenantTx, n: i64) -> Result<Option<Revision>, sqlx::Error> {
    store::revision(tx, n)
        .await?
        .map(parse_revision)
        .transpose()
}

/// Revisions, newest first: up to `limit` older than `before`.
pub async fn revisions(
    tx: &mut TenantTx,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Revision>, sqlx::Error> {
    store::revisions(tx, before, limit)
        .await?
        .into_iter()
        .map(parse_revision)
        .collect()
}

/// Records `rules` (already parsed from `document`) as the next revision, with
/// `actor` and the diff against the one in force. Returns the new revision.
pub async fn put_rules(
    tx: &mut TenantTx,
    settings: &Settings,
    document: &serde_json::Value,
    actor: &str,
) -> Result<Revision, sqlx::Error> {
    store::lock_rules(tx).await?;
    let before = current_rules(tx, settings).await?;
    let diff = model::diff(&before.document, document);
    let diff_json = serde_json::to_string(&diff).map_err(|e| corrupt("diff", e))?;
    let n = store::insert_revision(
        tx,
        settings.currency.as_str(),
        &document.to_string(),
        actor,
        &diff_json,
    )
    .await?;
    revision(tx, n).await?.ok_or(sqlx::Error::RowNotFound)
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error(transparent)]
    Pricing(#[from] PricingError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A cart priced as of now: the rules in force, the settings, and the usage of
/// limited rules.
pub struct Quote {
    pub priced: PricedOrder,
    rules: RuleSet,
}

impl Quote {
    /// The rule the buyer's promo code names, if a limit kept it from applying.
    pub fn exhausted_promo_rule(&self) -> Option<String> {
        self.priced.exhausted_promo_rule(&self.rules)
    }
}

/// Prices `cart` with the merchant's rules in force (the rules' currency must be
/// the cart's, unless the merchant has no rules).
pub async fn price_cart(tx: &mut TenantTx, cart: Cart) -> Result<Quote, PriceError> {
    let settings = settings(tx).await?;
    let mut rules = current_rules(tx, &settings).await?.rules;
    if rules.rules().is_empty() && rules.currency() != cart.currency {
        // No rules: nothing is written in a currency, so any catalog currency prices.
        rules = RuleSet::empty(cart.currency).with_revision(rules.revision());
    }
    let limited: Vec<String> = rules
        .rules()
        .iter()
        .filter(|r| !r.limits.is_empty())
        .map(|r| r.id.to_string())
        .collect();
    let email = cart.customer.as_ref().map(|c| usage_key(&c.email));
    let counted = store::counted(tx, &limited, email.as_deref()).await?;
    let usage = model::rule_usage(&rules, &counted);
    let priced = PricedOrder::price(cart, &rules, &settings, settings.calculator_version, usage)?;
    Ok(Quote { priced, rules })
}

/// Customers are counted by e-mail, case-insensitively (as rules compare them).
fn usage_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Takes, for order `order`, one use (and the discount given, from the budget) of
/// every limited rule the quote applied. `Err(rule)` when a limit was reached by
/// another checkout since the quote: the caller must not record the order.
pub async fn take_uses(
    tx: &mut TenantTx,
    order: Uuid,
    quote: &Quote,
) -> Result<Result<(), String>, sqlx::Error> {
    let email = quote
        .priced
        .cart
        .customer
        .as_ref()
        .map(|c| usage_key(&c.email))
        .unwrap_or_default();
    for given in &quote.priced.breakdown.discounts {
        let Some(rule) = quote.rules.get(given.rule_id.as_str()) else {
            continue;
        };
        let limits = &rule.limits;
        if limits.is_empty() {
            continue;
        }
        let as_i64 = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let taken = store::take_use(
            tx,
            order,
            rule.id.as_str(),
            &email,
            given.amount.amount,
            as_i64(limits.uses),
            as_i64(limits.uses_per_customer),
            limits.budget.map(|b| b.amount),
        )
        .await?;
        if !taken {
            return Ok(Err(rule.id.to_string()));
        }
    }
    Ok(Ok(()))
}

/// Gives back what `order` took from limited rules (once, however often called).
pub async fn release_uses(tx: &mut TenantTx, order: Uuid) -> Result<(), sqlx::Error> {
    store::release_uses(tx, order).await.map(|_| ())
}

/// An order priced again: what it recorded, and what the chosen calculator and
/// rules give for the same inputs.
#[derive(Debug, serde::Serialize)]
pub struct Repriced {
    pub order_id: Uuid,
    pub recorded: ::pricing::Breakdown,
    pub repriced: ::pricing::Breakdown,
    /// `repriced.total − recorded.total`: positive when the customer paid too little.
    pub delta: i64,
    /// Whether the two breakdowns are the same in every amount and reason.
    pub identical: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RepriceError {
    #[error("order {0} not found, or priced before pricing was recorded")]
    NotRecorded(Uuid),
    #[error("rule-set revision {0} not found")]
    UnknownRevision(i64),
    #[error(transparent)]
    Pricing(#[from] PricingError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Re-prices a stored order from its recorded inputs with `version` and the
/// rules of `revision` (each defaulting to what the order recorded). With both
/// defaulted, the result is identical to the recorded breakdown.
pub async fn reprice_order(
    tx: &mut TenantTx,
    order: Uuid,
    version: Option<::pricing::CalculatorVersion>,
    revision: Option<i64>,
) -> Result<Repriced, RepriceError> {
    let recorded = crate::checkout::recorded_pricing(tx, order)
        .await?
        .ok_or(RepriceError::NotRecorded(order))?;
    let recorded: PricedOrder =
        serde_json::from_str(&recorded).map_err(|e| corrupt("order pricing", e))?;
    let n =
        revision.unwrap_or_else(|| i64::try_from(recorded.ruleset_revision).unwrap_or(i64::MAX));
    let rules = if n == 0 {
        RuleSet::empty(recorded.cart.currency)
    } else {
        self::revision(tx, n)
            .await?
            .ok_or(RepriceError::UnknownRevision(n))?
            .rules
    };
    let repriced = recorded.reprice(&rules, version.unwrap_or(recorded.calculator_version))?;
    Ok(Repriced {
        order_id: order,
        delta: repriced.total.amount - recorded.breakdown.total.amount,
        identical: repriced == recorded.breakdown,
        recorded: recorded.breakdown,
        repriced,
    })
}
