//! The rule DSL: its types, and the parser that turns a merchant's JSON into them.
//!
//! Parsing walks the JSON value itself rather than deriving `Deserialize`, so that
//! one pass reports every problem at once, each with the rule and the JSON path of
//! the field (`rules[0].then.percent_off`), as the API's problem+json wants.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ids::{GroupName, RuleId, Sku};
use crate::money::{Currency, Money, Percent};

/// A parsed, validated rule set in one currency, its rules in evaluation order.
///
/// Build one with [`RuleSet::parse`]; serializing it gives back the DSL JSON
/// (`{"rules": [...]}`, rules in evaluation order), which parses to an equal set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    currency: Currency,
    revision: u64,
    rules: Vec<Rule>,
}

/// One rule: when every condition in `when` holds, `then` applies, subject to the
/// combination rules (see the crate docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: RuleId,
    /// Higher is evaluated first; equal priorities in `id` order.
    pub priority: i32,
    /// `false`: exclusive — once this rule applies, no rule after it applies.
    pub stackable: bool,
    /// At most one rule of a group applies: the first in evaluation order that does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
    pub when: Conditions,
    pub then: Action,
    #[serde(skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
}

/// Conditions on the cart as submitted (before any discount). All must hold; an
/// absent condition holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// The cart's promo code equals this, ignoring ASCII case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promo_code: Option<String>,
    /// The cart's subtotal (before discounts) is at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_subtotal: Option<Money>,
    /// The cart has at least one line with one of these SKUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku_in: Option<SkuSet>,
    /// At least this many units: of the `sku_in` SKUs when given, else of the whole cart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_quantity: Option<u32>,
    /// The customer's email is one of these, ignoring ASCII case. No customer: unmet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_email_in: Option<Vec<String>>,
    /// The customer's `first_order` equals this. No customer: unmet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_order: Option<bool>,
    /// `cart.at >= valid_from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime<Utc>>,
    /// `cart.at < valid_until` (the window is half-open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
}

/// What a rule does. Exactly one per rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `percent_off` of every line (order level, allocated), or of each `target` line
    /// (rounded per line).
    PercentOff {
        percent: Percent,
        target: Option<Target>,
    },
    /// A fixed amount off the order (or off the `target` lines), never more than is left.
    AmountOff {
        amount: Money,
        target: Option<Target>,
    },
    BuyXGetY(BuyXGetY),
    /// The best tier whose threshold the cart (or the `target` lines) reaches.
    Tiers {
        tiers: Vec<Tier>,
        target: Option<Target>,
    },
    FreeShipping,
}

/// Which lines a discount touches: those whose SKU is in `sku_in`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub sku_in: SkuSet,
}

/// For every `buy + get` units of the `sku_in` SKUs in the cart, `get` units get
/// `percent_off` (100 = free): the cheapest such units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuyXGetY {
    pub buy: u32,
    pub get: u32,
    pub sku_in: SkuSet,
    pub percent_off: Percent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub threshold: Threshold,
    pub percent_off: Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    MinQuantity(u32),
    MinSubtotal(Money),
}

/// Usage limits. Parsed and validated here; counted and enforced by the service,
/// which tells [`price`](crate::price) which rules have reached one (see
/// [`RuleUsage`](crate::RuleUsage)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses_per_customer: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Money>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.uses.is_none() && self.uses_per_customer.is_none() && self.budget.is_none()
    }
}

/// A set of SKUs, never empty. Looked up by fingerprint first, so a SKU that is not
/// in the set costs no string comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuSet {
    /// Sorted, and in step with `skus`: `fingerprints[i]` is `skus[i]`'s.
    fingerprints: Vec<u64>,
    skus: Vec<Sku>,
}

impl SkuSet {
    fn new(skus: Vec<Sku>) -> Self {
        let mut entries: Vec<(u64, Sku)> = skus.into_iter().map(|s| (s.fingerprint(), s)).collect();
        entries.sort_unstable();
        entries.dedup();
        let (fingerprints, skus) = entries.into_iter().unzip();
        SkuSet { fingerprints, skus }
    }

    pub fn contains(&self, sku: &Sku) -> bool {
        let fingerprint = sku.fingerprint();
        // Promotion lists are short: a scan of packed fingerprints beats a binary search.
        let start = if self.fingerprints.len() <= 16 {
            match self.fingerprints.iter().position(|&f| f == fingerprint) {
                Some(start) => start,
                None => return false,
            }
        } else {
            self.fingerprints.partition_point(|&f| f < fingerprint)
        };
        self.fingerprints[start..]
            .iter()
            .zip(&self.skus[start..])
            .take_while(|(&f, _)| f == fingerprint)
            .any(|(_, s)| s == sku)
    }

    /// The SKUs in ascending order.
    pub fn skus(&self) -> Vec<&Sku> {
        let mut skus: Vec<&Sku> = self.skus.iter().collect();
        skus.sort_unstable();
        skus
    }

    pub fn len(&self) -> usize {
        self.skus.len()
    }

    /// Always false: the parser refuses empty lists.
    pub fn is_empty(&self) -> bool {
        self.skus.is_empty()
    }
}

impl Serialize for SkuSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let skus = self.skus();
        let mut seq = serializer.serialize_seq(Some(skus.len()))?;
        for sku in skus {
            seq.serialize_element(sku)?;
        }
        seq.end()
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let target = match self {
            Action::PercentOff { percent, target } => {
                map.serialize_entry("percent_off", percent)?;
                target
            }
            Action::AmountOff { amount, target } => {
                map.serialize_entry("amount_off", amount)?;
                target
            }
            Action::BuyXGetY(bxgy) => {
                map.serialize_entry("buy_x_get_y", bxgy)?;
                &None
            }
            Action::Tiers { tiers, target } => {
                map.serialize_entry("tiers", tiers)?;
                target
            }
            Action::FreeShipping => {
                map.serialize_entry("free_shipping", &true)?;
                &None
            }
        };
        if let Some(target) = target {
            map.serialize_entry("target", target)?;
        }
        map.end()
    }
}

impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        match &self.threshold {
            Threshold::MinQuantity(quantity) => map.serialize_entry("min_quantity", quantity)?,
            Threshold::MinSubtotal(money) => map.serialize_entry("min_subtotal", money)?,
        }
        map.serialize_entry("percent_off", &self.percent_off)?;
        map.end()
    }
}

impl Serialize for RuleSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("rules", &self.rules)?;
        map.end()
    }
}

/// One problem in a rule set, named by rule and JSON path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    /// The rule's `id` when it has a usable one, else its position (`rules[3]`);
    /// `None` for a problem with the document as a whole.
    pub rule: Option<String>,
    /// JSON path of the offending field, e.g. `rules[0].then.percent_off`; empty for
    /// the whole document.
    pub field: String,
    pub message: String,
}

impl RuleSet {
    /// A rule set with no rules.
    pub fn empty(currency: Currency) -> Self {
        RuleSet {
            currency,
            revision: 0,
            rules: Vec::new(),
        }
    }

    /// Parses the DSL JSON text for a merchant whose currency is `currency`.
    pub fn parse(json: &str, currency: Currency) -> Result<RuleSet, Vec<RuleError>> {
        let value: Value = serde_json::from_str(json).map_err(|error| {
            vec![RuleError {
                rule: None,
                field: String::new(),
                message: format!("malformed JSON: {error}"),
            }]
        })?;
        Self::from_value(&value, currency)
    }

    /// Parses an already-decoded DSL document. Reports every problem found, not just the first.
    pub fn from_value(value: &Value, currency: Currency) -> Result<RuleSet, Vec<RuleError>> {
        let mut parser = Parser {
            currency,
            rule: None,
            errors: Vec::new(),
        };
        let rules = parser.rule_set(value);
        match rules {
            Some(mut rules) if parser.errors.is_empty() => {
                rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
                Ok(RuleSet {
                    currency,
                    revision: 0,
                    rules,
                })
            }
            _ => Err(parser.errors),
        }
    }

    /// The revision the service stored this rule set under; recorded in every breakdown.
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The rules in evaluation order: priority descending, then id ascending.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }
}

const RULE_FIELDS: &[&str] = &[
    "id",
    "priority",
    "stackable",
    "group",
    "when",
    "then",
    "limits",
];
const WHEN_FIELDS: &[&str] = &[
    "promo_code",
    "min_subtotal",
    "sku_in",
    "min_quantity",
    "customer_email_in",
    "first_order",
    "valid_from",
    "valid_until",
];
const ACTIONS: &[&str] = &[
    "percent_off",
    "amount_off",
    "buy_x_get_y",
    "tiers",
    "free_shipping",
];
const THEN_FIELDS: &[&str] = &[
    "percent_off",
    "amount_off",
    "buy_x_get_y",
    "tiers",
    "free_shipping",
    "target",
];
const LIMIT_FIELDS: &[&str] = &["uses", "uses_per_customer", "budget"];
const MAX_TEXT: usize = 128;
/// The most rules a set holds. Every checkout evaluates each of them, and a
/// set is stored whole in every revision; 500 is far above what a merchant
/// keeps in force (a few dozen) and far below what makes either costly.
pub const MAX_RULES: usize = 500;

struct Parser {
    currency: Currency,
    /// The rule being parsed, as errors name it.
    rule: Option<String>,
    errors: Vec<RuleError>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Parser {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(RuleError {
            rule: self.rule.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn rule_set(&mut self, value: &Value) -> Option<Vec<Rule>> {
        let map = self.object(value, "", &["rules"])?;
        let list = self.required(map, "", "rules")?;
        let Some(items) = list.as_array() else {
            self.error("rules", "must be an array of rules");
            return None;
        };
        if items.len() > MAX_RULES {
            self.error(
                "rules",
                format!("must hold at most {MAX_RULES} rules (has {})", items.len()),
            );
            return None;
        }
        let mut rules = Vec::with_capacity(items.len());
        let mut first_with_id: BTreeMap<RuleId, usize> = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("rules[{index}]");
            self.rule = Some(
                item.get("id")
                    .and_then(Value::as_str)
                    .filter(|id| !id.trim().is_empty())
                    .map_or_else(|| path.clone(), str::to_owned),
            );
            if let Some(rule) = self.rule(item, &path) {
                if let Some(first) = first_with_id.get(&rule.id) {
                    let message = format!(
                        "duplicate rule id {:?}: rules[{first}] has it too",
                        rule.id.as_str()
                    );
                    self.error(format!("{path}.id"), message);
                } else {
                    first_with_id.insert(rule.id.clone(), index);
                }
                rules.push(rule);
            }
        }
        self.rule = None;
        Some(rules)
    }

    fn rule(&mut self, value: &Value, path: &str) -> Option<Rule> {
        let map = self.object(value, path, RULE_FIELDS)?;
        let id = self
            .required(map, path, "id")
            .and_then(|v| self.text(v, &join(path, "id")));
        let priority = self
            .required(map, path, "priority")
            .and_then(|v| {
                self.integer(v, &join(path, "priority"), i32::MIN.into(), i32::MAX.into())
            })
            .and_then(|p| i32::try_from(p).ok());
        let stackable = self
            .required(map, path, "stackable")
            .and_then(|v| self.boolean(v, &join(path, "stackable")));
        let group = optional(map, "group").map(|v| self.text(v, &join(path, "group")));
        let when = match optional(map, "when") {
            Some(v) => self.conditions(v, &join(path, "when")),
            None => Some(Conditions::default()),
        };
        let then = self
            .required(map, path, "then")
            .and_then(|v| self.action(v, &join(path, "then")));
        let limits = match optional(map, "limits") {
            Some(v) => self.limits(v, &join(path, "limits")),
            None => Some(Limits::default()),
        };
        Some(Rule {
            id: RuleId::from(id?),
            priority: priority?,
            stackable: stackable?,
            group: match group {
                Some(parsed) => Some(GroupName::from(parsed?)),
                None => None,
            },
            when: when?,
            then: then?,
            limits: limits?,
        })
    }

    fn conditions(&mut self, value: &Value, path: &str) -> Option<Conditions> {
        let map = self.object(value, path, WHEN_FIELDS)?;
        let mut ok = true;
        let mut when = Conditions::default();
        let field = |key: &str| join(path, key);
        macro_rules! take {
            ($key:literal, $slot:expr, $parse:expr) => {
                if let Some(v) = optional(map, $key) {
                    match $parse(self, v, &field($key)) {
                        Some(parsed) => $slot = Some(parsed),
                        None => ok = false,
                    }
                }
            };
        }
        take!("promo_code", when.promo_code, Parser::text);
        take!(
            "min_subtotal",
            when.min_subtotal,
            Parser::non_negative_money
        );
        take!("sku_in", when.sku_in, Parser::sku_set);
        take!("min_quantity", when.min_quantity, Parser::count);
        take!("customer_email_in", when.customer_email_in, Parser::emails);
        take!("first_order", when.first_order, Parser::boolean);
        take!("valid_from", when.valid_from, Parser::timestamp);
        take!("valid_until", when.valid_until, Parser::timestamp);
        if let (Some(from), Some(until)) = (when.valid_from, when.valid_until) {
            if until <= from {
                self.error(field("valid_until"), "must be after valid_from");
                ok = false;
            }
        }
        ok.then_some(when)
    }

    fn action(&mut self, value: &Value, path: &str) -> Option<Action> {
        let map = self.object(value, path, THEN_FIELDS)?;
        let named: Vec<&str> = ACTIONS
            .iter()
            .copied()
            .filter(|key| optional(map, key).is_some())
            .collect();
        let kind = match named.as_slice() {
            [one] => *one,
            [] => {
                self.error(
                    path,
                    "must name one action: percent_off, amount_off, buy_x_get_y, tiers or free_shipping",
                );
                return None;
            }
            several => {
                let message = format!(
                    "names several actions ({}); a rule has exactly one, so split it into several rules",
                    several.join(", ")
                );
                self.error(path, message);
                return None;
            }
        };
        let field = join(path, kind);
        // Some(None): a target was given but is unusable (already reported).
        let target = match optional(map, "target") {
            Some(v) if matches!(kind, "percent_off" | "amount_off" | "tiers") => {
                Some(self.target(v, &join(path, "target")))
            }
            Some(_) => {
                let message = if kind == "buy_x_get_y" {
                    "does not apply to buy_x_get_y, which names its SKUs in its own sku_in"
                } else {
                    "applies only to percent_off, amount_off and tiers"
                };
                self.error(join(path, "target"), message);
                Some(None)
            }
            None => None,
        };
        let value = optional(map, kind)?;
        let action = self.action_of(kind, value, &field, target.clone().flatten());
        match target {
            Some(None) => None,
            _ => action,
        }
    }

    fn action_of(
        &mut self,
        kind: &str,
        value: &Value,
        field: &str,
        target: Option<Target>,
    ) -> Option<Action> {
        match kind {
            "percent_off" => Some(Action::PercentOff {
                percent: self.percent(value, field)?,
                target,
            }),
            "amount_off" => Some(Action::AmountOff {
                amount: self.money(value, field, 1)?,
                target,
            }),
            "buy_x_get_y" => self.buy_x_get_y(value, field).map(Action::BuyXGetY),
            "tiers" => Some(Action::Tiers {
                tiers: self.tiers(value, field)?,
                target,
            }),
            _ => match value.as_bool() {
                Some(true) => Some(Action::FreeShipping),
                _ => {
                    self.error(
                        field,
                        "must be true (leave the rule out for no free shipping)",
                    );
                    None
                }
            },
        }
    }

    fn target(&mut self, value: &Value, path: &str) -> Option<Target> {
        let map = self.object(value, path, &["sku_in"])?;
        let skus = self.required(map, path, "sku_in")?;
        let sku_in = self.sku_set(skus, &join(path, "sku_in"))?;
        Some(Target { sku_in })
    }

    fn buy_x_get_y(&mut self, value: &Value, path: &str) -> Option<BuyXGetY> {
        let map = self.object(value, path, &["buy", "get", "sku_in", "percent_off"])?;
        let buy = self
            .required(map, path, "buy")
            .and_then(|v| self.count(v, &join(path, "buy")));
        let get = self
            .required(map, path, "get")
            .and_then(|v| self.count(v, &join(path, "get")));
        let sku_in = self
            .required(map, path, "sku_in")
            .and_then(|v| self.sku_set(v, &join(path, "sku_in")));
        let percent_off = match optional(map, "percent_off") {
            Some(v) => self.percent(v, &join(path, "percent_off")),
            None => Some(Percent::HUNDRED),
        };
        Some(BuyXGetY {
            buy: buy?,
            get: get?,
            sku_in: sku_in?,
            percent_off: percent_off?,
        })
    }

    fn tiers(&mut self, value: &Value, path: &str) -> Option<Vec<Tier>> {
        let Some(items) = value.as_array() else {
            self.error(path, "must be an array of tiers");
            return None;
        };
        if items.is_empty() {
            self.error(path, "must list at least one tier");
            return None;
        }
        let mut tiers = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let tier_path = format!("{path}[{index}]");
            match self.tier(item, &tier_path) {
                Some(tier) => tiers.push(tier),
                None => ok = false,
            }
        }
        ok.then_some(tiers)
    }

    fn tier(&mut self, value: &Value, path: &str) -> Option<Tier> {
        let map = self.object(
            value,
            path,
            &["min_quantity", "min_subtotal", "percent_off"],
        )?;
        let threshold = match (optional(map, "min_quantity"), optional(map, "min_subtotal")) {
            (Some(v), None) => self
                .count(v, &join(path, "min_quantity"))
                .map(Threshold::MinQuantity),
            (None, Some(v)) => self
                .non_negative_money(v, &join(path, "min_subtotal"))
                .map(Threshold::MinSubtotal),
            (Some(_), Some(_)) => {
                self.error(
                    path,
                    "has both min_quantity and min_subtotal; a tier has one",
                );
                None
            }
            (None, None) => {
                self.error(path, "needs min_quantity or min_subtotal");
                None
            }
        };
        let percent_off = self
            .required(map, path, "percent_off")
            .and_then(|v| self.percent(v, &join(path, "percent_off")));
        Some(Tier {
            threshold: threshold?,
            percent_off: percent_off?,
        })
    }

    fn limits(&mut self, value: &Value, path: &str) -> Option<Limits> {
        let map = self.object(value, path, LIMIT_FIELDS)?;
        let mut ok = true;
        let mut limits = Limits::default();
        if let Some(v) = optional(map, "uses") {
            limits.uses = self
                .integer(v, &join(path, "uses"), 1, i64::MAX)
                .map(|n| n.unsigned_abs());
            ok &= limits.uses.is_some();
        }
        if let Some(v) = optional(map, "uses_per_customer") {
            limits.uses_per_customer = self
                .integer(v, &join(path, "uses_per_customer"), 1, i64::MAX)
                .map(|n| n.unsigned_abs());
            ok &= limits.uses_per_customer.is_some();
        }
        if let Some(v) = optional(map, "budget") {
            limits.budget = self.money(v, &join(path, "budget"), 1);
            ok &= limits.budget.is_some();
        }
        ok.then_some(limits)
    }

    // ---- leaves ----

    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = value.as_object() else {
            self.error(path, "must be an object");
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let message = format!("unknown field; expected one of: {}", allowed.join(", "));
                self.error(join(path, key), message);
            }
        }
        Some(map)
    }

    fn required<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Value> {
        let value = optional(map, key);
        if value.is_none() {
            self.error(join(path, key), "is required");
        }
        value
    }

    fn text(&mut self, value: &Value, path: &str) -> Option<String> {
        let Some(text) = value.as_str() else {
            self.error(path, "must be a string");
            return None;
        };
        if text.trim().is_empty() {
            self.error(path, "must not be empty");
            None
        } else if text.chars().count() > MAX_TEXT {
            self.error(path, format!("must be at most {MAX_TEXT} characters"));
            None
        } else if text.chars().any(char::is_control) {
            self.error(path, "must not contain control characters");
            None
        } else {
            Some(text.to_owned())
        }
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        let flag = value.as_bool();
        if flag.is_none() {
            self.error(path, "must be true or false");
        }
        flag
    }

    fn integer(&mut self, value: &Value, path: &str, min: i64, max: i64) -> Option<i64> {
        let number = match value {
            // Above i64::MAX: out of range, not fractional.
            Value::Number(n) if n.as_u64().is_some() => n.as_i64().or(Some(i64::MAX)),
            Value::Number(n) => n.as_i64(),
            _ => {
                self.error(path, "must be a number");
                return None;
            }
        };
        match number {
            Some(n) if (min..=max).contains(&n) && !is_above_i64(value) => Some(n),
            Some(n) if n < min => {
                self.error(path, format!("must be at least {min}"));
                None
            }
            Some(_) => {
                self.error(path, format!("must be at most {max}"));
                None
            }
            None => {
                self.error(path, "must be a whole number");
                None
            }
        }
    }

    /// A count of units: 1 to u32::MAX.
    fn count(&mut self, value: &Value, path: &str) -> Option<u32> {
        self.integer(value, path, 1, u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    /// 0 to 100 with at most two decimals, read from the number's decimal text.
    fn percent(&mut self, value: &Value, path: &str) -> Option<Percent> {
        const RANGE: &str = "must be a percentage from 0 to 100";
        let Value::Number(number) = value else {
            self.error(path, RANGE);
            return None;
        };
        if let Some(whole) = number.as_u64() {
            return match u16::try_from(whole.saturating_mul(100))
                .ok()
                .and_then(Percent::from_bps)
            {
                Some(percent) => Some(percent),
                None => {
                    self.error(path, RANGE);
                    None
                }
            };
        }
        let text = number.to_string();
        if text.starts_with('-') {
            self.error(path, RANGE);
            return None;
        }
        let bps = match text.split_once('.') {
            Some((whole, fraction))
                if !whole.is_empty()
                    && whole.bytes().all(|b| b.is_ascii_digit())
                    && (1..=2).contains(&fraction.len())
                    && fraction.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let scale = if fraction.len() == 1 { 10 } else { 1 };
                let whole: Option<u64> = whole.parse().ok();
                let fraction: Option<u64> = fraction.parse().ok();
                whole
                    .zip(fraction)
                    .and_then(|(w, f)| w.checked_mul(100)?.checked_add(f * scale))
            }
            _ => {
                self.error(
                    path,
                    "must have at most two decimals (basis points), e.g. 12.5",
                );
                return None;
            }
        };
        match bps
            .and_then(|bps| u16::try_from(bps).ok())
            .and_then(Percent::from_bps)
        {
            Some(percent) => Some(percent),
            None => {
                self.error(path, RANGE);
                None
            }
        }
    }

    fn non_negative_money(&mut self, value: &Value, path: &str) -> Option<Money> {
        self.money(value, path, 0)
    }

    /// `{"amount", "currency"}` in the merchant's currency, amount at least `min`.
    fn money(&mut self, value: &Value, path: &str, min: i64) -> Option<Money> {
        let map = self.object(value, path, &["amount", "currency"])?;
        let amount_path = join(path, "amount");
        let amount = self.required(map, path, "amount").and_then(|v| {
            if v.as_i64().is_some_and(|a| a < 0) {
                self.error(&amount_path, "must not be negative");
                None
            } else {
                self.integer(v, &amount_path, min, i64::MAX)
            }
        });
        let currency = match self.required(map, path, "currency") {
            Some(Value::String(code)) => match Currency::parse(code) {
                Ok(currency) if currency == self.currency => Some(currency),
                Ok(other) => {
                    let message = format!(
                        "must be {}, the merchant's currency, not {other}",
                        self.currency
                    );
                    self.error(join(path, "currency"), message);
                    None
                }
                Err(error) => {
                    self.error(join(path, "currency"), error.to_string());
                    None
                }
            },
            Some(_) => {
                self.error(join(path, "currency"), "must be a currency code, e.g. EUR");
                None
            }
            None => None,
        };
        Some(Money::new(amount?, currency?))
    }

    fn sku_set(&mut self, value: &Value, path: &str) -> Option<SkuSet> {
        let items = self.non_empty_array(value, path, "must list at least one SKU")?;
        let mut skus = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            match self.text(item, &format!("{path}[{index}]")) {
                Some(sku) => skus.push(Sku::from(sku)),
                None => ok = false,
            }
        }
        ok.then(|| SkuSet::new(skus))
    }

    fn emails(&mut self, value: &Value, path: &str) -> Option<Vec<String>> {
        let items = self.non_empty_array(value, path, "must list at least one email address")?;
        let mut emails = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            match self.text(item, &item_path) {
                Some(email) if email.contains('@') => emails.push(email),
                Some(_) => {
                    self.error(item_path, "must be an email address");
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(emails)
    }

    fn non_empty_array<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        empty: &str,
    ) -> Option<&'v Vec<Value>> {
        match value.as_array() {
            Some(items) if items.is_empty() => {
                self.error(path, empty);
                None
            }
            Some(items) => Some(items),
            None => {
                self.error(path, "must be an array");
                None
            }
        }
    }

    fn timestamp(&mut self, value: &Value, path: &str) -> Option<DateTime<Utc>> {
        let parsed = value
            .as_str()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc));
        if parsed.is_none() {
            self.error(
                path,
                "must be an RFC 3339 timestamp, e.g. 2026-06-01T00:00:00Z",
            );
        }
        parsed
    }
}

fn is_above_i64(value: &Value) -> bool {
    value.as_u64().is_some_and(|n| i64::try_from(n).is_err())
}

/// A field that is present and not `null`.
fn optional<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}
