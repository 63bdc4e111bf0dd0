//! Properties that hold for any cart and any rule set: nothing negative, no discount
//! above what it discounts, lines add up exactly, deterministic, independent of line
//! order, and re-pricing from stored JSON reproduces the breakdown.

mod common;

use chrono::Duration;
use common::*;
use pricing::{
    price, Breakdown, CalculatorVersion, Cart, Context, Customer, FlatRate, FreeOverThreshold,
    LimitKind, Line, Percent, RateTable, Rounding, RuleId, RuleSet, RuleUsage, ShippingProvider,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{json, Map, Value};

const SKUS: &[&str] = &["A", "B", "C", "SOCK", "SHOE", "CAP"];

fn line() -> impl Strategy<Value = Line> {
    // Prices from a short list too, so carts often hold identical lines and ties.
    let price = prop_oneof![
        select(&[0i64, 100, 333, 999, 1_000][..]),
        0i64..=2_000,
        0i64..=200_000
    ];
    (select(SKUS), prop_oneof![1u32..=3, 1u32..=20], price)
        .prop_map(|(sku, quantity, price)| Line::new(sku, quantity, price))
}

fn cart_strategy() -> impl Strategy<Value = Cart> {
    (
        prop::collection::vec(line(), 1..=12),
        prop::option::of(select(&["SAVE", "save", "OTHER"][..])),
        prop::option::of((
            select(&["ann@example.com", "bob@example.com"][..]),
            any::<bool>(),
        )),
        prop::option::of(select(&["DE", "FR"][..])),
        0i64..=60 * 24 * 60,
    )
        .prop_map(|(lines, promo, customer, country, minutes)| Cart {
            currency: EUR,
            lines,
            customer: customer.map(|(email, first_order)| Customer {
                email: email.to_owned(),
                first_order,
            }),
            promo_code: promo.map(str::to_owned),
            country: country.map(str::to_owned),
            at: noon() + Duration::minutes(minutes),
        })
}

fn percent() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u16..=100).prop_map(|p| json!(p)),
        (0u16..=10_000).prop_map(|bps| {
            serde_json::to_value(Percent::from_bps(bps)).unwrap_or(Value::Null)
        }),
    ]
}

fn money(max: i64) -> impl Strategy<Value = Value> {
    (1..=max).prop_map(|amount| json!({"amount": amount, "currency": "EUR"}))
}

fn skus() -> impl Strategy<Value = Value> {
    subsequence(SKUS, 1..=3).prop_map(|skus| json!(skus))
}

fn target() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(skus().prop_map(|skus| json!({ "sku_in": skus })))
}

fn action() -> impl Strategy<Value = Value> {
    prop_oneof![
        (percent(), target()).prop_map(|(p, t)| with_target(json!({ "percent_off": p }), t)),
        (money(100_000), target()).prop_map(|(m, t)| with_target(json!({ "amount_off": m }), t)),
        (1u32..=3, 1u32..=2, skus(), percent()).prop_map(|(buy, get, skus, p)| {
            json!({"buy_x_get_y": {"buy": buy, "get": get, "sku_in": skus, "percent_off": p}})
        }),
        (
            prop::collection::vec(
                (
                    prop_oneof![
                        (1u32..=30).prop_map(|q| ("min_quantity", json!(q))),
                        money(300_000).prop_map(|m| ("min_subtotal", m)),
                    ],
                    percent()
                ),
                1..=3
            ),
            target()
        )
            .prop_map(|(tiers, t)| {
                let tiers: Vec<Value> = tiers
                    .into_iter()
                    .map(|((key, threshold), p)| json!({ key: threshold, "percent_off": p }))
                    .collect();
                with_target(json!({ "tiers": tiers }), t)
            }),
        Just(json!({"free_shipping": true})),
    ]
}

fn with_target(mut then: Value, target: Option<Value>) -> Value {
    if let (Some(map), Some(target)) = (then.as_object_mut(), target) {
        map.insert("target".into(), target);
    }
    then
}

fn conditions() -> impl Strategy<Value = Value> {
    // Each condition on one rule in five, so that most rules get to apply.
    (
        prop::option::weighted(0.2, Just("SAVE")),
        prop::option::weighted(0.2, money(200_000)),
        prop::option::weighted(0.2, skus()),
        prop::option::weighted(0.2, 1u32..=15),
        prop::option::weighted(0.2, any::<bool>()),
        prop::option::weighted(0.2, 0i64..=60 * 24 * 60),
    )
        .prop_map(
            |(promo, min_subtotal, sku_in, min_quantity, first_order, from)| {
                let mut when = Map::new();
                let mut put = |key: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        when.insert(key.to_owned(), value);
                    }
                };
                put("promo_code", promo.map(|p| json!(p)));
                put("min_subtotal", min_subtotal);
                put("sku_in", sku_in);
                put("min_quantity", min_quantity.map(|q| json!(q)));
                put("first_order", first_order.map(|f| json!(f)));
                if let Some(minutes) = from {
                    let from = noon() + Duration::minutes(minutes);
                    put("valid_from", Some(json!(from.to_rfc3339())));
                    put(
                        "valid_until",
                        Some(json!((from + Duration::days(10)).to_rfc3339())),
                    );
                }
                Value::Object(when)
            },
        )
}

fn rule_set_json() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            -3i32..=3,
            prop::bool::weighted(0.75),
            prop::option::weighted(0.3, select(&["g1", "g2"][..])),
            conditions(),
            action(),
        ),
        0..=8,
    )
    .prop_map(|rules| {
        let rules: Vec<Value> = rules
            .into_iter()
            .enumerate()
            .map(|(index, (priority, stackable, group, when, then))| {
                let mut rule = json!({
                    "id": format!("r{index}"), "priority": priority, "stackable": stackable,
                    "when": when, "then": then
                });
                if let (Some(map), Some(group)) = (rule.as_object_mut(), group) {
                    map.insert("group".into(), json!(group));
                }
                rule
            })
            .collect();
        json!({ "rules": rules })
    })
}

fn usage() -> impl Strategy<Value = RuleUsage> {
    prop::collection::vec(
        (
            0usize..8,
            prop_oneof![
                Just(None),
                select(
                    &[
                        LimitKind::Uses,
                        LimitKind::UsesPerCustomer,
                        LimitKind::Budget
                    ][..]
                )
                .prop_map(Some),
            ],
            prop::option::of(0i64..=5_000),
        ),
        0..=3,
    )
    .prop_map(|entries| {
        let mut usage = RuleUsage::default();
        for (index, exhausted, budget_left) in entries {
            let id = RuleId::from(format!("r{index}"));
            if let Some(limit) = exhausted {
                usage.exhausted.insert(id.clone(), limit);
            }
            if let Some(left) = budget_left {
                usage.budget_left.insert(id, left);
            }
        }
        usage
    })
}

#[derive(Clone, Debug)]
enum Shipping {
    Flat(FlatRate),
    FreeOver(FreeOverThreshold),
}

impl Shipping {
    fn provider(&self) -> &dyn ShippingProvider {
        match self {
            Shipping::Flat(flat) => flat,
            Shipping::FreeOver(free_over) => free_over,
        }
    }
}

fn providers() -> impl Strategy<Value = (RateTable, Shipping)> {
    (
        0u32..=2_500,
        any::<bool>(),
        any::<bool>(),
        0i64..=1_000,
        prop::option::of(0i64..=100_000),
    )
        .prop_map(|(rate, inclusive, shipping_taxable, charge, threshold)| {
            let mut tax = RateTable::single(rate, inclusive);
            tax.shipping_taxable = shipping_taxable;
            tax.rates.insert("FR".into(), 2_000);
            let shipping = match threshold {
                None => Shipping::Flat(FlatRate {
                    amount: eur(charge),
                }),
                Some(threshold) => Shipping::FreeOver(FreeOverThreshold {
                    amount: eur(charge),
                    threshold: eur(threshold),
                }),
            };
            (tax, shipping)
        })
}

fn version() -> impl Strategy<Value = CalculatorVersion> {
    select(&CalculatorVersion::ALL[..])
}

fn parse(json: &Value) -> RuleSet {
    match RuleSet::from_value(json, EUR) {
        Ok(rules) => rules.with_revision(3),
        Err(errors) => panic!("generated rules do not parse: {errors:#?}\n{json}"),
    }
}

fn price_all(
    cart: &Cart,
    rules: &RuleSet,
    version: CalculatorVersion,
    (tax, shipping): &(RateTable, Shipping),
    usage: &RuleUsage,
) -> Breakdown {
    let ctx = Context::new(tax, shipping.provider()).with_usage(usage);
    match price(cart, rules, version, &ctx) {
        Ok(breakdown) => breakdown,
        Err(error) => panic!("pricing failed: {error}"),
    }
}

/// The lines as a sorted list of JSON texts: equal when the lines are the same up to order.
fn line_multiset(breakdown: &Breakdown) -> Vec<String> {
    let mut lines: Vec<String> = breakdown
        .lines
        .iter()
        .map(|line| serde_json::to_string(line).unwrap_or_default())
        .collect();
    lines.sort();
    lines
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn totals_are_never_negative_and_every_amount_adds_up(
        cart in cart_strategy(), rules in rule_set_json(), version in version(),
        providers in providers(), usage in usage(),
    ) {
        let breakdown = price_all(&cart, &parse(&rules), version, &providers, &usage);
        prop_assert_eq!(breakdown.check_invariants(), Ok(()));
        prop_assert!(breakdown.total.amount >= 0);
        prop_assert!(breakdown.lines.iter().all(|line| line.net.amount >= 0));
        let nets: i64 = breakdown.lines.iter().map(|line| line.net.amount).sum();
        prop_assert_eq!(nets, breakdown.subtotal.amount - breakdown.discount_total.amount);
        let tax_added = if breakdown.tax.inclusive { 0 } else { breakdown.tax.amount.amount };
        prop_assert_eq!(breakdown.total.amount, nets + breakdown.shipping.amount.amount + tax_added);
    }

    #[test]
    fn no_discount_exceeds_what_it_discounts(
        cart in cart_strategy(), rules in rule_set_json(), version in version(),
        providers in providers(), usage in usage(),
    ) {
        let breakdown = price_all(&cart, &parse(&rules), version, &providers, &usage);
        for line in &breakdown.lines {
            let mut left = line.base.amount;
            for discount in &line.discounts {
                prop_assert!(discount.amount.amount > 0);
                prop_assert!(discount.amount.amount <= left, "{discount:?} > {left} left");
                left -= discount.amount.amount;
            }
        }
        prop_assert!(breakdown.shipping.discount.amount <= breakdown.shipping.base.amount);
        prop_assert!(breakdown.discount_total.amount <= breakdown.subtotal.amount);
        for discount in &breakdown.discounts {
            if let Some(left) = usage.budget_left.get(&discount.rule_id) {
                prop_assert!(discount.amount.amount <= *left, "budget overrun: {discount:?}");
            }
        }
        for id in &breakdown.applied {
            prop_assert!(!usage.exhausted.contains_key(id), "{id} is used up");
        }
    }

    #[test]
    fn pricing_is_deterministic(
        cart in cart_strategy(), rules in rule_set_json(), version in version(),
        providers in providers(), usage in usage(),
    ) {
        let rules = parse(&rules);
        let first = price_all(&cart, &rules, version, &providers, &usage);
        let second = price_all(&cart, &rules, version, &providers, &usage);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn line_order_changes_neither_the_total_nor_any_line(
        (cart, shuffled) in cart_strategy().prop_flat_map(|cart| {
            let lines = cart.lines.clone();
            (Just(cart), Just(lines).prop_shuffle())
        }),
        rules in rule_set_json(), version in version(),
        providers in providers(), usage in usage(),
    ) {
        let rules = parse(&rules);
        let original = price_all(&cart, &rules, version, &providers, &usage);
        let permuted_cart = Cart { lines: shuffled, ..cart };
        let permuted = price_all(&permuted_cart, &rules, version, &providers, &usage);
        prop_assert_eq!(original.total, permuted.total);
        prop_assert_eq!(original.discount_total, permuted.discount_total);
        prop_assert_eq!(&original.shipping, &permuted.shipping);
        prop_assert_eq!(&original.tax, &permuted.tax);
        prop_assert_eq!(&original.applied, &permuted.applied);
        prop_assert_eq!(&original.discounts, &permuted.discounts);
        prop_assert_eq!(&original.not_applied, &permuted.not_applied);
        prop_assert_eq!(line_multiset(&original), line_multiset(&permuted));
    }

    #[test]
    fn repricing_from_stored_json_reproduces_the_breakdown_exactly(
        cart in cart_strategy(), rules in rule_set_json(), version in version(),
        providers in providers(), usage in usage(),
    ) {
        let set = parse(&rules);
        let stored = price_all(&cart, &set, version, &providers, &usage);
        let stored_json = serde_json::to_string(&stored).unwrap_or_default();

        let cart: Cart = serde_json::from_str(&serde_json::to_string(&cart).unwrap_or_default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let usage: RuleUsage = serde_json::from_str(&serde_json::to_string(&usage).unwrap_or_default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let set_json = serde_json::to_string(&set).unwrap_or_default();
        let set = RuleSet::parse(&set_json, EUR)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
            .with_revision(stored.ruleset_revision);
        let version: CalculatorVersion = stored.calculator_version;

        let repriced = price_all(&cart, &set, version, &providers, &usage);
        let restored: Breakdown = serde_json::from_str(&stored_json)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&repriced, &restored);
        prop_assert_eq!(serde_json::to_string(&repriced).unwrap_or_default(), stored_json);
    }

    #[test]
    fn an_order_percentage_is_rounded_once_on_the_order(
        cart in cart_strategy(), bps in 0u16..=10_000, version in version(),
    ) {
        let set = rules(json!({"rules": [{"id": "p", "priority": 0, "stackable": true,
            "then": {"percent_off": serde_json::to_value(Percent::from_bps(bps)).unwrap_or_default()}}]}));
        let breakdown = price_bare_version(&cart, &set, version);
        let rounding = match version {
            CalculatorVersion::V1 => Rounding::HalfEven,
            CalculatorVersion::V2 | CalculatorVersion::V3 => Rounding::HalfUp,
        };
        let expected = rounding.div(i128::from(breakdown.subtotal.amount) * i128::from(bps), 10_000);
        prop_assert_eq!(i128::from(breakdown.discount_total.amount), expected);
        // Each line's share is within one minor unit of its exact proportion.
        for line in &breakdown.lines {
            let exact = i128::from(line.base.amount) * i128::from(bps);
            let share = i128::from(line.base.amount - line.net.amount) * 10_000;
            prop_assert!((share - exact).abs() < 2 * 10_000, "{line:?}");
        }
    }

    #[test]
    fn buy_x_get_y_discounts_only_the_cheapest_qualifying_units(
        cart in cart_strategy(), buy in 1u32..=3, get in 1u32..=2,
        qualifying in subsequence(SKUS, 1..=3),
    ) {
        let set = rules(json!({"rules": [{"id": "bxgy", "priority": 0, "stackable": true,
            "then": {"buy_x_get_y": {"buy": buy, "get": get, "sku_in": qualifying}}}]}));
        let breakdown = price_bare_version(&cart, &set, CalculatorVersion::V1);
        let qualifies = |sku: &str| qualifying.contains(&sku);
        let units: u64 = cart.lines.iter()
            .filter(|l| qualifies(l.sku.as_str()))
            .map(|l| u64::from(l.quantity))
            .sum();
        let free = units / u64::from(buy + get) * u64::from(get);
        let mut freed_units = 0u64;
        for line in &breakdown.lines {
            let discount = line.base.amount - line.net.amount;
            if !qualifies(line.sku.as_str()) {
                prop_assert_eq!(discount, 0, "a non-qualifying SKU was discounted");
            } else if line.unit_price.amount > 0 {
                prop_assert_eq!(discount % line.unit_price.amount, 0, "whole units only");
                freed_units += u64::try_from(discount / line.unit_price.amount).unwrap_or(0);
            }
        }
        // Every discounted unit is no dearer than any qualifying unit left at full price.
        let dearest_free = breakdown.lines.iter()
            .filter(|l| l.net != l.base)
            .map(|l| l.unit_price.amount)
            .max();
        let cheapest_full = breakdown.lines.iter()
            .filter(|l| qualifies(l.sku.as_str()) && l.unit_price.amount > 0)
            .filter(|l| l.base.amount - l.net.amount < l.base.amount)
            .map(|l| l.unit_price.amount)
            .min();
        if let (Some(dearest_free), Some(cheapest_full)) = (dearest_free, cheapest_full) {
            prop_assert!(dearest_free <= cheapest_full);
        }
        let free_of_charge_units: u64 = breakdown.lines.iter()
            .filter(|l| l.unit_price.amount == 0 && qualifies(l.sku.as_str()))
            .map(|l| u64::from(l.quantity))
            .sum();
        prop_assert!(freed_units <= free && freed_units + free_of_charge_units >= free);
    }
}

fn price_bare_version(cart: &Cart, rules: &RuleSet, version: CalculatorVersion) -> Breakdown {
    let (tax, shipping) = bare();
    let breakdown = price(cart, rules, version, &Context::new(&tax, &shipping)).expect("priced");
    if let Err(broken) = breakdown.check_invariants() {
        panic!("{broken}: {breakdown:#?}");
    }
    breakdown
}
