//! The service's side of pricing: a merchant's settings (tax, shipping, calculator
//! version), what an order records of its price, and rule-set diffs. The
//! arithmetic is the `pricing` crate's; nothing here does I/O.

use std::collections::BTreeMap;

use pricing::{
    Breakdown, CalculatorVersion, Cart, Context, Currency, FlatRate, FreeOverThreshold, LimitKind,
    Money, NotAppliedReason, PricingError, ProviderError, RateTable, RuleSet, RuleUsage,
    ShippingProvider, ShippingQuery,
};
use serde::{Deserialize, Serialize};

/// How a merchant charges shipping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shipping {
    Free,
    Flat { amount: Money },
    FreeOver { amount: Money, threshold: Money },
}

impl ShippingProvider for Shipping {
    fn quote(&self, query: &ShippingQuery<'_>) -> Result<Money, ProviderError> {
        match self {
            Shipping::Free => Ok(Money::zero(query.cart.currency)),
            Shipping::Flat { amount } => FlatRate { amount: *amount }.quote(query),
            Shipping::FreeOver { amount, threshold } => FreeOverThreshold {
                amount: *amount,
                threshold: *threshold,
            }
            .quote(query),
        }
    }
}

/// A merchant's pricing settings; a merchant that never set them gets `default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The currency rules are written in.
    pub currency: Currency,
    /// The calculator that charges.
    pub calculator_version: CalculatorVersion,
    pub tax: RateTable,
    pub shipping: Shipping,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            currency: Currency::EUR,
            calculator_version: CalculatorVersion::V1,
            tax: RateTable::single(0, true),
            shipping: Shipping::Free,
        }
    }
}

/// Everything `price` was given for one order and what it returned. Stored with
/// the order (`orders.pricing`), so the order can be re-priced exactly: the rules
/// are the revision it names (revisions never change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricedOrder {
    pub calculator_version: CalculatorVersion,
    pub ruleset_revision: u64,
    pub cart: Cart,
    pub usage: RuleUsage,
    pub tax: RateTable,
    pub shipping: Shipping,
    pub breakdown: Breakdown,
}

impl PricedOrder {
    /// Prices `cart` as of the merchant's `settings`, `rules` and rule `usage`.
    pub fn price(
        cart: Cart,
        rules: &RuleSet,
        settings: &Settings,
        version: CalculatorVersion,
        usage: RuleUsage,
    ) -> Result<PricedOrder, PricingError> {
        let context = Context::new(&settings.tax, &settings.shipping).with_usage(&usage);
        let breakdown = pricing::price(&cart, rules, version, &context)?;
        Ok(PricedOrder {
            calculator_version: version,
            ruleset_revision: rules.revision(),
            cart,
            usage,
            tax: settings.tax.clone(),
            shipping: settings.shipping.clone(),
            breakdown,
        })
    }

    /// Prices the recorded cart again with `rules` (the recorded revision, or
    /// another) and `version`; with the recorded ones it reproduces `breakdown`.
    pub fn reprice(
        &self,
        rules: &RuleSet,
        version: CalculatorVersion,
    ) -> Result<Breakdown, PricingError> {
        let context = Context::new(&self.tax, &self.shipping).with_usage(&self.usage);
        pricing::price(&self.cart, rules, version, &context)
    }

    /// The rule the buyer's promo code names, when a limit kept it from applying:
    /// such a checkout is refused rather than charged a price the buyer did not expect.
    pub fn exhausted_promo_rule(&self, rules: &RuleSet) -> Option<String> {
        let code = self.cart.promo_code.as_deref()?.trim();
        self.breakdown.not_applied.iter().find_map(|skipped| {
            let limited = matches!(
                skipped.reason,
                NotAppliedReason::UsageLimitReached { .. } | NotAppliedReason::BudgetExhausted
            );
            let rule = rules.get(skipped.rule_id.as_str())?;
            let named = rule
                .when
                .promo_code
                .as_deref()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case(code));
            (limited && named).then(|| skipped.rule_id.to_string())
        })
    }
}

/// What `price` was given for an order, without what it returned: the part of
/// `PricedOrder` a re-price reads (a quarter of its size; the scan of an
/// incident fetches only this, as `pricing - 'breakdown'`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingInputs {
    pub calculator_version: CalculatorVersion,
    pub ruleset_revision: u64,
    pub cart: Cart,
    pub usage: RuleUsage,
    pub tax: RateTable,
    pub shipping: Shipping,
}

impl PricingInputs {
    /// Prices the recorded cart again with `rules` and `version`.
    pub fn reprice(
        &self,
        rules: &RuleSet,
        version: CalculatorVersion,
    ) -> Result<Breakdown, PricingError> {
        let context = Context::new(&self.tax, &self.shipping).with_usage(&self.usage);
        pricing::price(&self.cart, rules, version, &context)
    }
}

/// Uses and money a limited rule has given so far (from the usage counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub uses: i64,
    pub spent: i64,
    /// The current customer's uses of it.
    pub customer_uses: i64,
}

/// The `RuleUsage` pricing needs: which limited rules are used up, and what is
/// left of each budget, given the counters.
pub fn rule_usage(rules: &RuleSet, counted: &BTreeMap<String, Counted>) -> RuleUsage {
    let mut usage = RuleUsage::default();
    for rule in rules.rules() {
        let limits = &rule.limits;
        if limits.is_empty() {
            continue;
        }
        let seen = counted.get(rule.id.as_str()).cloned().unwrap_or_default();
        let reached = |limit: Option<u64>, used: i64| {
            limit.is_some_and(|l| u64::try_from(used).map_or(true, |u| u >= l))
        };
        if reached(limits.uses, seen.uses) {
            usage.exhausted.insert(rule.id.clone(), LimitKind::Uses);
        } else if reached(limits.uses_per_customer, seen.customer_uses) {
            usage
                .exhausted
                .insert(rule.id.clone(), LimitKind::UsesPerCustomer);
        }
        if let Some(budget) = limits.budget {
            usage
                .budget_left
                .insert(rule.id.clone(), budget.amount.saturating_sub(seen.spent));
        }
    }
    usage
}

/// What a new revision changed against the one before, rule by rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RulesDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Compares two rule sets (their DSL JSON) by rule id.
pub fn diff(before: &serde_json::Value, after: &serde_json::Value) -> RulesDiff {
    let by_id = |doc: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        doc["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r.clone())))
            .collect()
    };
    let (old, new) = (by_id(before), by_id(after));
    RulesDiff {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
        changed: new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

/// A customer's place in a rollout, 0 to 99: stable for the rollout's life, so a
/// customer charged the candidate at 10 % still is at 50 %, and independent of
/// other rollouts (each draws its own cohort). Customers are their e-mail,
/// case-insensitively.
pub fn rollout_bucket(rollout: uuid::Uuid, email: &str) -> u8 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(rollout.as_bytes());
    h.update(email.trim().to_lowercase().as_bytes());
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    // 2^64 is not a multiple of 100; the bias (< 1e-17) is far below any share asked.
    (n % 100) as u8
}

/// Whether two breakdowns charge the customer the same: every line's net and
/// tax, shipping, tax and total (which rules gave it, and why others did not,
/// may differ).
pub fn same_charge(a: &Breakdown, b: &Breakdown) -> bool {
    a.total == b.total
        && a.shipping.amount == b.shipping.amount
        && a.tax.amount == b.tax.amount
        && a.lines.len() == b.lines.len()
        && a.lines
            .iter()
            .zip(&b.lines)
            .all(|(x, y)| x.sku == y.sku && x.net == y.net && x.tax == y.tax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rules(json: &str) -> RuleSet {
        RuleSet::parse(json, Currency::EUR).expect("valid rules")
    }

    #[test]
    fn limits_reached_make_rules_exhausted_and_budgets_shrink() {
        let set = rules(
            r#"{"rules":[
              {"id":"ten","priority":1,"stackable":true,"then":{"percent_off":10},"limits":{"uses":2}},
              {"id":"once","priority":1,"stackable":true,"then":{"percent_off":5},"limits":{"uses_per_customer":1}},
              {"id":"cash","priority":1,"stackable":true,"then":{"amount_off":{"amount":100,"currency":"EUR"}},
               "limits":{"budget":{"amount":1000,"currency":"EUR"}}}]}"#,
        );
        let mut counted = BTreeMap::new();
        counted.insert(
            "ten".into(),
            Counted {
                uses: 2,
                ..Default::default()
            },
        );
        counted.insert(
            "once".into(),
            Counted {
                uses: 7,
                customer_uses: 1,
                ..Default::default()
            },
        );
        counted.insert(
            "cash".into(),
            Counted {
                spent: 950,
                ..Default::default()
            },
        );
        let usage = rule_usage(&set, &counted);
        assert_eq!(usage.exhausted.get("ten"), Some(&LimitKind::Uses));
        assert_eq!(
            usage.exhausted.get("once"),
            Some(&LimitKind::UsesPerCustomer)
        );
        assert_eq!(usage.budget_left.get("cash"), Some(&50));
    }

    #[test]
    fn a_recorded_order_reprices_to_the_same_breakdown() {
        let set = rules(
            r#"{"rules":[{"id":"summer10","priority":10,"stackable":false,"when":{"promo_code":"SUMMER10","min_subtotal":{"amount":5000,"currency":"EUR"}},"then":{"percent_off":10}}]}"#,
        );
        let cart = Cart {
            currency: Currency::EUR,
            lines: vec![pricing::Line::new("A", 3, 1999)],
            customer: None,
            promo_code: Some("summer10".into()),
            country: None,
            at: chrono::Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap(),
        };
        let settings = Settings {
            shipping: Shipping::Flat {
                amount: Money::new(490, Currency::EUR),
            },
            ..Settings::default()
        };
        let priced = PricedOrder::price(
            cart,
            &set,
            &settings,
            CalculatorVersion::V1,
            RuleUsage::default(),
        )
        .unwrap();
        let stored = serde_json::to_string(&priced).unwrap();
        let loaded: PricedOrder = serde_json::from_str(&stored).unwrap();
        assert_eq!(loaded, priced);
        assert_eq!(
            loaded.reprice(&set, CalculatorVersion::V1).unwrap(),
            priced.breakdown
        );
        assert_eq!(priced.breakdown.total.amount, 5997 - 600 + 490);
    }

    #[test]
    fn diffs_name_added_removed_and_changed_rules() {
        let before =
            serde_json::json!({"rules": [{"id": "a", "priority": 1}, {"id": "b", "priority": 1}]});
        let after =
            serde_json::json!({"rules": [{"id": "b", "priority": 2}, {"id": "c", "priority": 1}]});
        let d = diff(&before, &after);
        assert_eq!(d.added, ["c"]);
        assert_eq!(d.removed, ["a"]);
        assert_eq!(d.changed, ["b"]);
    }

    proptest::proptest! {
        /// A customer's bucket is below 100 and ignores case and surrounding spaces.
        #[test]
        fn rollout_buckets_are_per_customer(email in "[a-z]{1,12}@[a-z]{1,8}\\.test", seed in proptest::prelude::any::<u128>()) {
            let rollout = uuid::Uuid::from_u128(seed);
            let b = rollout_bucket(rollout, &email);
            proptest::prop_assert!(b < 100);
            proptest::prop_assert_eq!(b, rollout_bucket(rollout, &format!(" {} ", email.to_uppercase())));
        }
    }

    #[test]
    fn a_rollout_percentage_takes_about_that_share_of_customers() {
        let rollout = uuid::Uuid::from_u128(7);
        let charged = (0..10_000)
            .filter(|i| rollout_bucket(rollout, &format!("c{i}@example.test")) < 10)
            .count();
        assert!(
            (900..=1_100).contains(&charged),
            "{charged} of 10,000 at 10 %"
        );
        // Another rollout draws another cohort: about 10 % of 10 % overlap.
        let other = uuid::Uuid::from_u128(8);
        let both = (0..10_000)
            .map(|i| format!("c{i}@example.test"))
            .filter(|e| rollout_bucket(rollout, e) < 10 && rollout_bucket(other, e) < 10)
            .count();
        assert!(both < 250, "{both} customers in both 10 % cohorts");
    }
}
