//! Pricing as a service: each merchant's rule-set revisions (immutable, audited),
//! settings (currency, calculator version, tax, shipping), quotes, and the usage
//! counters that keep limited rules from overrunning. The arithmetic is the pure
//! `pricing` crate's.
//!
//! Owns tables `pricing_settings`, `pricing_rule_revisions`, `pricing_rule_usage`,
//! `pricing_customer_usage`, `pricing_order_uses`, `pricing_rollouts`,
//! `pricing_rollout_orders` and `pricing_alerts`. Checkout prices each order with
//! `price_cart`, records what pricing keeps of it (uses of limited rules, the
//! rollout comparison) with `record_order` in the transaction that records the
//! order, and gives the uses back with `release_uses` when the order fails.
//! Rollouts and the anomaly check are in `rollout`.

pub mod anomaly;
mod facts;
pub mod http;
mod model;
pub mod rollout;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ::pricing::{Cart, Currency, PricingError, RuleSet};
use uuid::Uuid;

pub use anomaly::{AlertKind, Bands, OrderStats};
pub use facts::{OrderFacts, Revenue};
pub use model::{diff, PricedOrder, PricingInputs, RulesDiff, Settings, Shipping};
pub use store::{Arm, Stage};

use crate::db::TenantTx;

/// A stored value that no longer parses: reported as a database decoding error.
fn corrupt(what: &str, err: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("stored {what} does not parse: {err}").into())
}

/// The merchant's settings, or the defaults when it never set any.
pub async fn settings(tx: &mut TenantTx) -> Result<Settings, sqlx::Error> {
    parse_settings(store::settings(tx).await?)
}

fn parse_settings(row: Option<store::SettingsRow>) -> Result<Settings, sqlx::Error> {
    let Some(row) = row else {
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

/// Writes the default settings for a merchant that never set any, so that what
/// is in force can be recorded in them.
async fn ensure_settings(tx: &mut TenantTx) -> Result<(), sqlx::Error> {
    if store::settings(tx).await?.is_none() {
        put_settings(tx, &Settings::default()).await?;
    }
    Ok(())
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

/// The rules in force: the revision the settings name (the newest, for a
/// merchant that never staged one), or none (revision 0, no rules) in the
/// merchant's currency.
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
/// `actor` and the diff against the one in force, and puts it in force when
/// `activate` (else it waits for a rollout). Returns the new revision.
pub async fn put_rules(
    tx: &mut TenantTx,
    settings: &Settings,
    document: &serde_json::Value,
    actor: &str,
    activate: bool,
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
    if activate {
        ensure_settings(tx).await?;
        store::set_live_revision(tx, n).await?;
    }
    crate::events::emit(
        tx,
        crate::events::EventType::PricingRulesChanged,
        // Counts, not ids: a set's diff can name hundreds of rules, far over
        // an event's size limit; the revision (`GET
        // /v1/pricing/rules/revisions/{n}`) has the ids and the rules.
        serde_json::json!({
            "revision": n,
            "in_force": activate,
            "actor": actor,
            "rules": document["rules"].as_array().map_or(0, Vec::len),
            "added": diff.added.len(),
            "removed": diff.removed.len(),
            "changed": diff.changed.len(),
        }),
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
/// limited rules; during a rollout, priced by the candidate too.
pub struct Quote {
    /// What the customer is charged.
    pub priced: PricedOrder,
    /// The rules that priced it.
    rules: Arc<RuleSet>,
    /// The comparison with the rollout's other side, while one runs.
    pub shadow: Option<rollout::ShadowPrice>,
}

impl Quote {
    /// The rule the buyer's promo code names, if a limit kept it from applying.
    pub fn exhausted_promo_rule(&self) -> Option<String> {
        self.priced.exhausted_promo_rule(&self.rules)
    }
}

/// Rules as parsed, in the cart's currency when they are empty (nothing is
/// written in a currency, so any catalog currency prices).
fn rules_for(rules: Arc<RuleSet>, cart: &Cart) -> Arc<RuleSet> {
    if rules.rules().is_empty() && rules.currency() != cart.currency {
        Arc::new(RuleSet::empty(cart.currency).with_revision(rules.revision()))
    } else {
        rules
    }
}

/// Revisions parsed once per process: a revision never changes, so the merchant
/// and its number name its rules for good.
static PARSED: OnceLock<Mutex<ParsedRevisions>> = OnceLock::new();
/// (merchant, revision) → its rules.
type ParsedRevisions = HashMap<(Uuid, i64), Arc<RuleSet>>;
/// Parsed revisions kept before the cache starts over (a few MB at most).
const PARSED_MAX: usize = 4_096;

/// The rules of revision `n` (0: none, in `currency`), parsed once per process.
async fn rules_of(
    tx: &mut TenantTx,
    n: i64,
    currency: Currency,
) -> Result<Arc<RuleSet>, sqlx::Error> {
    if n == 0 {
        return Ok(Arc::new(RuleSet::empty(currency)));
    }
    let key = (tx.merchant_id().0, n);
    let cache = PARSED.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(hit);
    }
    let parsed = Arc::new(
        revision(tx, n)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?
            .rules,
    );
    if let Ok(mut c) = cache.lock() {
        if c.len() >= PARSED_MAX {
            c.clear();
        }
        c.insert(key, parsed.clone());
    }
    Ok(parsed)
}

/// Prices `cart` with the merchant's rules in force (the rules' currency must be
/// the cart's, unless the merchant has no rules). While a rollout runs, the
/// candidate prices it too: in shadow the live price is charged; at a percentage,
/// customers in the share are charged the candidate's. A candidate that cannot
/// price the cart never fails it: the live price is charged.
pub async fn price_cart(tx: &mut TenantTx, cart: Cart) -> Result<Quote, PriceError> {
    let state = store::pricing_state(tx).await?;
    let settings = parse_settings(state.settings)?;
    let live = rules_for(
        rules_of(tx, state.live_revision, settings.currency).await?,
        &cart,
    );
    let candidate = match &state.rollout {
        None => None,
        Some(r) => {
            let rules = rules_of(tx, r.candidate_revision, cart.currency).await?;
            let version: ::pricing::CalculatorVersion = r
                .candidate_version
                .parse()
                .map_err(|e| corrupt("calculator version", e))?;
            Some((r, rules_for(rules, &cart), version))
        }
    };
    let limited: Vec<String> = std::iter::once(&live)
        .chain(candidate.as_ref().map(|(_, rules, _)| rules))
        .map(|rules| rules.as_ref())
        .flat_map(|rules| rules.rules())
        .filter(|r| !r.limits.is_empty())
        .map(|r| r.id.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let email = cart.customer.as_ref().map(|c| usage_key(&c.email));
    let counted = store::counted(tx, &limited, email.as_deref()).await?;
    let price = |cart: Cart, rules: &RuleSet, version| {
        let usage = model::rule_usage(rules, &counted);
        PricedOrder::price(cart, rules, &settings, version, usage)
    };
    let Some((running, candidate_rules, candidate_version)) = candidate else {
        let priced = price(cart, &live, settings.calculator_version)?;
        return Ok(Quote {
            priced,
            rules: live,
            shadow: None,
        });
    };
    let in_share = match running.stage {
        Stage::Percentage => cart.customer.as_ref().is_some_and(|c| {
            i32::from(model::rollout_bucket(running.id, &c.email)) < running.percent
        }),
        _ => false,
    };
    let live_priced = price(cart.clone(), &live, settings.calculator_version)?;
    let candidate_priced = price(cart, &candidate_rules, candidate_version).ok();
    let shadow = rollout::ShadowPrice {
        rollout: running.id,
        charged: if in_share && candidate_priced.is_some() {
            Arm::Candidate
        } else {
            Arm::Live
        },
        live_total: live_priced.breakdown.total,
        candidate_total: candidate_priced.as_ref().map(|p| p.breakdown.total),
        same_charge: candidate_priced
            .as_ref()
            .is_some_and(|p| model::same_charge(&p.breakdown, &live_priced.breakdown)),
    };
    shadow.observe();
    let (priced, rules) = match candidate_priced {
        Some(priced) if shadow.charged == Arm::Candidate => (priced, candidate_rules),
        _ => (live_priced, live),
    };
    Ok(Quote {
        priced,
        rules,
        shadow: Some(shadow),
    })
}

/// Customers are counted by e-mail, case-insensitively (as rules compare them).
fn usage_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Records what pricing keeps of order `order`, in the transaction that records
/// the order: one use (and the discount given, from the budget) of every limited
/// rule the quote applied, and the rollout comparison, if one ran. `Err(rule)`
/// when a limit was reached by another checkout since the quote: the caller must
/// not record the order.
pub async fn record_order(
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
    if let Some(shadow) = &quote.shadow {
        shadow.record(tx, order).await?;
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

/// Re-prices a stored order from its recorded inputs (`recorded`: the pricing
/// checkout stored with the order, `checkout::recorded_pricing`) with
/// `version` and the rules of `revision` (each defaulting to what the order
/// recorded). With both defaulted, the result is identical to the recorded
/// breakdown.
pub async fn reprice_order(
    tx: &mut TenantTx,
    order: Uuid,
    recorded: Option<String>,
    version: Option<::pricing::CalculatorVersion>,
    revision: Option<i64>,
) -> Result<Repriced, RepriceError> {
    let recorded = recorded.ok_or(RepriceError::NotRecorded(order))?;
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
