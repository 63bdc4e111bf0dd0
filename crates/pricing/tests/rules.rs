//! Table tests: each rule kind, each condition, the combination rules, limits, tax,
//! shipping, versions and refusals.

mod common;

use common::*;
use pricing::{
    price, CalculatorVersion, Condition, Context, Currency, FlatRate, FreeOverThreshold, LimitKind,
    NotAppliedReason, PricingError, RateTable, RuleId, RuleUsage,
};
use serde_json::{json, Value};

fn one(then: Value) -> Value {
    json!({"rules": [{"id": "r", "priority": 1, "stackable": true, "then": then}]})
}

fn one_when(when: Value, then: Value) -> Value {
    json!({"rules": [{"id": "r", "priority": 1, "stackable": true, "when": when, "then": then}]})
}

fn unmet(condition: Condition) -> Option<NotAppliedReason> {
    Some(NotAppliedReason::ConditionUnmet { condition })
}

// ---- each action ----

#[test]
fn order_percent_off_is_rounded_once_and_shared_by_what_each_line_is_worth() {
    let set = rules(one(json!({"percent_off": 10})));
    let b = price_bare(&cart(&[("A", 1, 1000), ("B", 1, 3005)]), &set);
    // 10 % of 40.05 = 4.005 → 4.00 (half to even), split 1000 : 3005.
    assert_eq!(b.discount_total, eur(400));
    assert_eq!(line_discounts(&b), [100, 300]);
    assert_eq!(b.total, eur(3605));
    assert_eq!(applied(&b), ["r"]);
}

#[test]
fn targeted_percent_off_discounts_only_target_lines_rounded_per_line() {
    let set = rules(one(json!({"percent_off": 10, "target": {"sku_in": ["A"]}})));
    let b = price_bare(&cart(&[("A", 1, 333), ("A", 1, 335), ("B", 1, 1000)]), &set);
    // 33.3 → 33; 33.5 → 34 (half to even); B untouched.
    assert_eq!(line_discounts(&b), [33, 34, 0]);
}

#[test]
fn amount_off_is_shared_by_line_value_and_never_exceeds_the_order() {
    let set = rules(one(
        json!({"amount_off": {"amount": 100, "currency": "EUR"}}),
    ));
    let b = price_bare(&cart(&[("A", 1, 100), ("B", 1, 300)]), &set);
    assert_eq!(line_discounts(&b), [25, 75]);

    let set = rules(one(
        json!({"amount_off": {"amount": 100_000, "currency": "EUR"}}),
    ));
    let b = price_bare(&cart(&[("A", 1, 100), ("B", 1, 300)]), &set);
    assert_eq!(line_discounts(&b), [100, 300]);
    assert_eq!(b.total, eur(0));
}

#[test]
fn targeted_amount_off_is_shared_among_target_lines_only() {
    let set = rules(one(
        json!({"amount_off": {"amount": 500, "currency": "EUR"}, "target": {"sku_in": ["B", "C"]}}),
    ));
    let b = price_bare(&cart(&[("A", 1, 1000), ("B", 1, 100), ("C", 1, 300)]), &set);
    assert_eq!(line_discounts(&b), [0, 100, 300]);
}

#[test]
fn buy_two_get_one_frees_the_cheapest_qualifying_unit() {
    let set = rules(one(
        json!({"buy_x_get_y": {"buy": 2, "get": 1, "sku_in": ["SOCK-A", "SOCK-B"]}}),
    ));
    let b = price_bare(
        &cart(&[("SOCK-A", 2, 500), ("CAP", 1, 100), ("SOCK-B", 1, 300)]),
        &set,
    );
    assert_eq!(line_discounts(&b), [0, 0, 300]);
}

#[test]
fn buy_x_get_y_at_a_percentage_discounts_the_cheapest_units_across_lines() {
    let set = rules(one(
        json!({"buy_x_get_y": {"buy": 1, "get": 1, "sku_in": ["X", "Y"], "percent_off": 50}}),
    ));
    // 5 units → 2 discounted: the Y (8.00) and one X (10.00), half off each.
    let b = price_bare(&cart(&[("X", 4, 1000), ("Y", 1, 800)]), &set);
    assert_eq!(line_discounts(&b), [500, 400]);
}

#[test]
fn buy_x_get_y_with_too_few_units_has_nothing_to_discount() {
    let set = rules(one(
        json!({"buy_x_get_y": {"buy": 2, "get": 1, "sku_in": ["X"]}}),
    ));
    let b = price_bare(&cart(&[("X", 2, 1000), ("Y", 5, 100)]), &set);
    assert_eq!(b.discount_total, eur(0));
    assert_eq!(reason(&b, "r"), Some(NotAppliedReason::NothingToDiscount));
}

#[test]
fn tiers_by_quantity_apply_the_best_tier_reached() {
    let set = rules(one(json!({"tiers": [
        {"min_quantity": 10, "percent_off": 10},
        {"min_quantity": 5, "percent_off": 5}
    ]})));
    let seven = price_bare(&cart(&[("A", 4, 1000), ("B", 3, 1000)]), &set);
    assert_eq!(seven.discount_total, eur(350));
    let twelve = price_bare(&cart(&[("A", 12, 1000)]), &set);
    assert_eq!(twelve.discount_total, eur(1200));
    let three = price_bare(&cart(&[("A", 3, 1000)]), &set);
    assert_eq!(
        reason(&three, "r"),
        Some(NotAppliedReason::NothingToDiscount)
    );
}

#[test]
fn tiers_by_subtotal_look_at_the_subtotal_before_discounts() {
    let set = rules(one(json!({"tiers": [
        {"min_subtotal": {"amount": 10000, "currency": "EUR"}, "percent_off": 10},
        {"min_subtotal": {"amount": 20000, "currency": "EUR"}, "percent_off": 15}
    ]})));
    assert_eq!(
        price_bare(&cart(&[("A", 1, 12000)]), &set).discount_total,
        eur(1200)
    );
    assert_eq!(
        price_bare(&cart(&[("A", 2, 12000)]), &set).discount_total,
        eur(3600)
    );
    assert_eq!(
        price_bare(&cart(&[("A", 1, 9999)]), &set).discount_total,
        eur(0)
    );
}

#[test]
fn targeted_tiers_count_and_discount_the_target_lines_only() {
    let set = rules(one(json!({
        "tiers": [{"min_quantity": 3, "percent_off": 20}],
        "target": {"sku_in": ["A"]}
    })));
    let b = price_bare(&cart(&[("A", 3, 1000), ("B", 5, 1000)]), &set);
    assert_eq!(line_discounts(&b), [600, 0]);
    let b = price_bare(&cart(&[("A", 2, 1000), ("B", 5, 1000)]), &set);
    assert_eq!(b.discount_total, eur(0));
}

#[test]
fn free_shipping_discounts_the_shipping_charge_to_zero() {
    let set = rules(json!({"rules": [
        {"id": "ship", "priority": 2, "stackable": true, "then": {"free_shipping": true}},
        {"id": "ship-again", "priority": 1, "stackable": true, "then": {"free_shipping": true}}
    ]}));
    let tax = RateTable::none();
    let shipping = FlatRate { amount: eur(490) };
    let b = price_with(
        &cart(&[("A", 1, 1000)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect("priced");
    assert_eq!(
        (b.shipping.base, b.shipping.discount, b.shipping.amount),
        (eur(490), eur(490), eur(0))
    );
    assert_eq!(b.shipping.rule_id, Some(RuleId::from("ship")));
    assert_eq!(b.total, eur(1000));
    assert_eq!(
        reason(&b, "ship-again"),
        Some(NotAppliedReason::NothingToDiscount)
    );
    assert_eq!(b.discounts[0].amount, eur(490), "what the rule gave");
    b.check_invariants().expect("consistent");
}

#[test]
fn shipping_is_quoted_on_the_discounted_goods() {
    let set = rules(one(json!({"percent_off": 10})));
    let tax = RateTable::none();
    let shipping = FreeOverThreshold {
        amount: eur(490),
        threshold: eur(5000),
    };
    // 50.00 before the discount, 45.00 after: below the threshold, so shipping is charged.
    let b = price_with(
        &cart(&[("A", 1, 5000)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect("priced");
    assert_eq!(b.shipping.base, eur(490));
    assert_eq!(b.total, eur(4500 + 490));
    let b = price_with(
        &cart(&[("A", 1, 6000)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect("priced");
    assert_eq!(b.shipping.base, eur(0));
}

// ---- conditions ----

#[test]
fn each_unmet_condition_is_named() {
    let base = cart(&[("A", 2, 1000)]);
    let cases: Vec<(Value, Condition)> = vec![
        (json!({"promo_code": "SUMMER"}), Condition::PromoCode),
        (
            json!({"min_subtotal": {"amount": 2001, "currency": "EUR"}}),
            Condition::MinSubtotal,
        ),
        (json!({"sku_in": ["B"]}), Condition::SkuIn),
        (json!({"min_quantity": 3}), Condition::MinQuantity),
        (
            json!({"customer_email_in": ["a@example.com"]}),
            Condition::CustomerEmailIn,
        ),
        (json!({"first_order": true}), Condition::FirstOrder),
        (
            json!({"valid_from": "2026-07-01T12:00:01Z"}),
            Condition::ValidFrom,
        ),
        (
            json!({"valid_until": "2026-07-01T12:00:00Z"}),
            Condition::ValidUntil,
        ),
    ];
    for (when, condition) in cases {
        let set = rules(one_when(when.clone(), json!({"percent_off": 10})));
        let b = price_bare(&base, &set);
        assert_eq!(reason(&b, "r"), unmet(condition), "{when}");
        assert_eq!(b.discount_total, eur(0));
    }
}

#[test]
fn conditions_that_hold_let_the_rule_apply() {
    let when = json!({
        "promo_code": "summer", "min_subtotal": {"amount": 2000, "currency": "EUR"},
        "sku_in": ["A"], "min_quantity": 2, "customer_email_in": ["Ann@Example.com"],
        "first_order": true,
        "valid_from": "2026-07-01T12:00:00Z", "valid_until": "2026-07-01T12:00:01Z"
    });
    let set = rules(one_when(when, json!({"percent_off": 10})));
    let c = with_customer(
        with_promo(cart(&[("A", 2, 1000)]), " SUMMER "),
        "ann@example.com",
        true,
    );
    let b = price_bare(&c, &set);
    assert_eq!(applied(&b), ["r"]);
    assert_eq!(b.discount_total, eur(200));
}

#[test]
fn min_quantity_counts_units_of_the_listed_skus_when_sku_in_is_given() {
    let set = rules(one_when(
        json!({"sku_in": ["A"], "min_quantity": 3}),
        json!({"percent_off": 10}),
    ));
    let b = price_bare(&cart(&[("A", 2, 1000), ("B", 5, 1000)]), &set);
    assert_eq!(reason(&b, "r"), unmet(Condition::MinQuantity));
    let b = price_bare(&cart(&[("A", 3, 1000), ("B", 5, 1000)]), &set);
    assert_eq!(applied(&b), ["r"]);
}

#[test]
fn customer_conditions_are_unmet_without_a_customer() {
    let set = rules(one_when(
        json!({"first_order": false}),
        json!({"percent_off": 10}),
    ));
    let b = price_bare(&cart(&[("A", 1, 1000)]), &set);
    assert_eq!(reason(&b, "r"), unmet(Condition::FirstOrder));
    let returning = with_customer(cart(&[("A", 1, 1000)]), "a@example.com", false);
    assert_eq!(applied(&price_bare(&returning, &set)), ["r"]);
}

// ---- combination ----

#[test]
fn an_exclusive_rule_that_applies_blocks_every_rule_after_it() {
    let set = rules(json!({"rules": [
        {"id": "exclusive", "priority": 10, "stackable": false, "then": {"percent_off": 10}},
        {"id": "later", "priority": 5, "stackable": true, "then": {"percent_off": 50}},
        {"id": "ship", "priority": 1, "stackable": true, "then": {"free_shipping": true}}
    ]}));
    let b = price_bare(&cart(&[("A", 1, 1000)]), &set);
    assert_eq!(applied(&b), ["exclusive"]);
    let winner = RuleId::from("exclusive");
    for later in ["later", "ship"] {
        assert_eq!(
            reason(&b, later),
            Some(NotAppliedReason::LostToExclusive {
                winner: winner.clone()
            })
        );
    }
}

#[test]
fn rules_before_an_exclusive_rule_keep_their_discount() {
    let set = rules(json!({"rules": [
        {"id": "ship", "priority": 20, "stackable": true, "then": {"free_shipping": true}},
        {"id": "exclusive", "priority": 10, "stackable": false, "then": {"percent_off": 10}}
    ]}));
    let tax = RateTable::none();
    let shipping = FlatRate { amount: eur(490) };
    let b = price_with(
        &cart(&[("A", 1, 1000)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect("priced");
    assert_eq!(applied(&b), ["ship", "exclusive"]);
    assert_eq!(b.total, eur(900));
}

#[test]
fn an_exclusive_rule_that_does_not_apply_blocks_nothing() {
    let set = rules(json!({"rules": [
        {"id": "code-only", "priority": 10, "stackable": false,
         "when": {"promo_code": "VIP"}, "then": {"percent_off": 30}},
        {"id": "bxgy", "priority": 9, "stackable": false,
         "then": {"buy_x_get_y": {"buy": 5, "get": 1, "sku_in": ["A"]}}},
        {"id": "sale", "priority": 1, "stackable": true, "then": {"percent_off": 10}}
    ]}));
    let b = price_bare(&cart(&[("A", 1, 1000)]), &set);
    assert_eq!(applied(&b), ["sale"]);
    assert_eq!(reason(&b, "code-only"), unmet(Condition::PromoCode));
    assert_eq!(
        reason(&b, "bxgy"),
        Some(NotAppliedReason::NothingToDiscount)
    );
}

#[test]
fn equal_priorities_are_evaluated_in_id_order() {
    let set = rules(json!({"rules": [
        {"id": "b", "priority": 5, "stackable": false, "then": {"percent_off": 50}},
        {"id": "a", "priority": 5, "stackable": false, "then": {"percent_off": 10}}
    ]}));
    let b = price_bare(&cart(&[("A", 1, 1000)]), &set);
    assert_eq!(applied(&b), ["a"]);
    assert_eq!(b.discount_total, eur(100));
}

#[test]
fn only_the_first_applying_rule_of_a_group_applies() {
    let set = rules(json!({"rules": [
        {"id": "vip", "priority": 30, "stackable": true, "group": "tier",
         "when": {"promo_code": "VIP"}, "then": {"percent_off": 20}},
        {"id": "member", "priority": 20, "stackable": true, "group": "tier", "then": {"percent_off": 10}},
        {"id": "guest", "priority": 10, "stackable": true, "group": "tier", "then": {"percent_off": 5}},
        {"id": "other", "priority": 1, "stackable": true, "then": {"amount_off": {"amount": 100, "currency": "EUR"}}}
    ]}));
    let b = price_bare(&cart(&[("A", 1, 10000)]), &set);
    assert_eq!(applied(&b), ["member", "other"]);
    assert_eq!(reason(&b, "vip"), unmet(Condition::PromoCode));
    assert_eq!(
        reason(&b, "guest"),
        Some(NotAppliedReason::LostInGroup {
            group: "tier".into(),
            winner: RuleId::from("member")
        })
    );
    let b = price_bare(&with_promo(cart(&[("A", 1, 10000)]), "vip"), &set);
    assert_eq!(applied(&b), ["vip", "other"]);
}

#[test]
fn each_discount_applies_to_what_the_earlier_ones_left() {
    let set = rules(json!({"rules": [
        {"id": "half", "priority": 2, "stackable": true, "then": {"percent_off": 50}},
        {"id": "half-again", "priority": 1, "stackable": true, "then": {"percent_off": 50}}
    ]}));
    let b = price_bare(&cart(&[("A", 1, 1000)]), &set);
    assert_eq!(b.total, eur(250));
    let amounts: Vec<i64> = b.lines[0]
        .discounts
        .iter()
        .map(|d| d.amount.amount)
        .collect();
    assert_eq!(amounts, [500, 250]);
}

#[test]
fn not_applied_lists_every_other_rule_in_evaluation_order() {
    let set = rules(json!({"rules": [
        {"id": "z", "priority": 1, "stackable": true, "when": {"promo_code": "Z"}, "then": {"percent_off": 1}},
        {"id": "y", "priority": 2, "stackable": true, "then": {"percent_off": 1}},
        {"id": "x", "priority": 3, "stackable": true, "when": {"promo_code": "X"}, "then": {"percent_off": 1}}
    ]}));
    let b = price_bare(&cart(&[("A", 1, 1000)]), &set);
    let ids: Vec<&str> = b.not_applied.iter().map(|n| n.rule_id.as_str()).collect();
    assert_eq!(ids, ["x", "z"]);
    assert_eq!(applied(&b), ["y"]);
}

// ---- limits ----

#[test]
fn rules_the_service_reports_used_up_do_not_apply() {
    let set = rules(json!({"rules": [
        {"id": "uses", "priority": 3, "stackable": true, "then": {"percent_off": 10}, "limits": {"uses": 100}},
        {"id": "per-customer", "priority": 2, "stackable": true, "then": {"percent_off": 10}, "limits": {"uses_per_customer": 1}},
        {"id": "budget", "priority": 1, "stackable": true, "then": {"percent_off": 10}, "limits": {"budget": {"amount": 1000, "currency": "EUR"}}}
    ]}));
    let mut usage = RuleUsage::default();
    usage.exhausted.insert("uses".into(), LimitKind::Uses);
    usage
        .exhausted
        .insert("per-customer".into(), LimitKind::UsesPerCustomer);
    usage.budget_left.insert("budget".into(), 0);
    let (tax, shipping) = bare();
    let b = price_with(&cart(&[("A", 1, 1000)]), &set, &tax, &shipping, &usage).expect("priced");
    assert!(b.applied.is_empty());
    assert_eq!(
        reason(&b, "uses"),
        Some(NotAppliedReason::UsageLimitReached {
            limit: LimitKind::Uses
        })
    );
    assert_eq!(
        reason(&b, "per-customer"),
        Some(NotAppliedReason::UsageLimitReached {
            limit: LimitKind::UsesPerCustomer
        })
    );
    assert_eq!(
        reason(&b, "budget"),
        Some(NotAppliedReason::BudgetExhausted)
    );
}

#[test]
fn a_rule_gives_no_more_than_what_is_left_of_its_budget() {
    let set = rules(json!({"rules": [
        {"id": "budget", "priority": 1, "stackable": true, "then": {"percent_off": 10},
         "limits": {"budget": {"amount": 100000, "currency": "EUR"}}}
    ]}));
    let mut usage = RuleUsage::default();
    usage.budget_left.insert("budget".into(), 151);
    let (tax, shipping) = bare();
    let c = cart(&[("A", 1, 1000), ("B", 1, 2000)]);
    let b = price_with(&c, &set, &tax, &shipping, &usage).expect("priced");
    // 300 wanted, 151 left: scaled 100 : 200 → 50.33 : 100.67 → 50 : 101.
    assert_eq!(b.discount_total, eur(151));
    assert_eq!(line_discounts(&b), [50, 101]);
    assert_eq!(b.discounts[0].amount, eur(151));
    b.check_invariants().expect("consistent");
}

// ---- tax ----

#[test]
fn inclusive_tax_is_contained_in_the_prices() {
    let set = rules(json!({"rules": []}));
    let tax = RateTable::single(1_900, true);
    let shipping = FlatRate { amount: eur(0) };
    let b = price_with(
        &cart(&[("A", 1, 11900)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect("priced");
    assert_eq!(b.tax.amount, eur(1900));
    assert_eq!(b.total, eur(11900));
    assert!(b.tax.inclusive);
    b.check_invariants().expect("consistent");
}

#[test]
fn exclusive_tax_is_added_after_discounts_and_allocated_without_drift() {
    let set = rules(one(json!({"percent_off": 10})));
    let tax = RateTable::single(1_000, false);
    let shipping = FlatRate { amount: eur(0) };
    let b = price_with(
        &cart(&[("A", 1, 370), ("B", 1, 370), ("C", 1, 370)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect("priced");
    // 11.10 − 1.11 = 9.99; tax 10 % = 0.999 → 1.00, shared 34/33/33.
    assert_eq!(b.tax.amount, eur(100));
    let line_tax: Vec<i64> = b.lines.iter().map(|l| l.tax.amount).collect();
    assert_eq!(line_tax, [34, 33, 33]);
    assert_eq!(b.total, eur(999 + 100));
    b.check_invariants().expect("consistent");
}

#[test]
fn tax_rates_follow_the_ship_to_country_and_may_cover_shipping() {
    let set = rules(json!({"rules": []}));
    let mut tax = RateTable::single(0, false);
    tax.default_rate = None;
    tax.rates.insert("DE".into(), 1_900);
    tax.rates.insert("FR".into(), 2_000);
    tax.shipping_taxable = true;
    let shipping = FlatRate { amount: eur(500) };
    let mut c = cart(&[("A", 1, 1000)]);
    c.country = Some("fr".into());
    let b = price_with(&c, &set, &tax, &shipping, &RuleUsage::default()).expect("priced");
    assert_eq!(b.tax.amount, eur(300));
    assert_eq!(b.tax.shipping, eur(100));
    assert_eq!(b.tax.rates[0].rate_bps, 2_000);
    assert_eq!(b.total, eur(1000 + 500 + 300));
    b.check_invariants().expect("consistent");

    c.country = Some("US".into());
    let error = price_with(&c, &set, &tax, &shipping, &RuleUsage::default()).expect_err("no rate");
    assert!(matches!(error, PricingError::Tax(_)), "{error}");
}

// ---- versions ----

#[test]
fn v1_rounds_half_to_even_and_v2_rounds_half_up() {
    let set = rules(one(json!({"percent_off": 10, "target": {"sku_in": ["A"]}})));
    let c = cart(&[("A", 1, 325), ("A", 1, 335)]);
    let (tax, shipping) = bare();
    let ctx = Context::new(&tax, &shipping);
    let v1 = price(&c, &set, CalculatorVersion::V1, &ctx).expect("v1");
    let v2 = price(&c, &set, CalculatorVersion::V2, &ctx).expect("v2");
    assert_eq!(line_discounts(&v1), [32, 34]);
    assert_eq!(line_discounts(&v2), [33, 34]);
    assert_eq!(v1.calculator_version, CalculatorVersion::V1);
    assert_eq!(v2.calculator_version, CalculatorVersion::V2);
    assert_eq!("v2".parse::<CalculatorVersion>(), Ok(CalculatorVersion::V2));
    assert!("v9".parse::<CalculatorVersion>().is_err());
    assert_eq!(
        serde_json::to_value(CalculatorVersion::V1).ok(),
        Some(json!("v1"))
    );
}

#[test]
fn versions_agree_when_no_percentage_lands_on_half_a_cent() {
    let set = rules(one(json!({"percent_off": 10})));
    let c = cart(&[("A", 3, 1000), ("B", 1, 990)]);
    let (tax, shipping) = bare();
    let ctx = Context::new(&tax, &shipping);
    let v1 = price(&c, &set, CalculatorVersion::V1, &ctx).expect("v1");
    let v2 = price(&c, &set, CalculatorVersion::V2, &ctx).expect("v2");
    assert_eq!(v1.lines, v2.lines);
    assert_eq!(v1.total, v2.total);
}

// ---- refusals ----

#[test]
fn carts_that_cannot_be_priced_are_refused() {
    let set = rules(json!({"rules": []}));
    let (tax, shipping) = bare();
    let usage = RuleUsage::default();
    let invalid = |c: &pricing::Cart| price_with(c, &set, &tax, &shipping, &usage);

    let mut dollars = cart(&[("A", 1, 100)]);
    dollars.currency = Currency::USD;
    assert_eq!(
        invalid(&dollars),
        Err(PricingError::CurrencyMismatch {
            cart: Currency::USD,
            rules: Currency::EUR
        })
    );
    assert!(
        matches!(invalid(&cart(&[])), Err(PricingError::InvalidCart { field, .. }) if field == "lines")
    );
    assert!(matches!(
        invalid(&cart(&[("A", 1, 1), ("B", 0, 100)])),
        Err(PricingError::InvalidCart { field, .. }) if field == "lines[1].quantity"
    ));
    assert!(matches!(
        invalid(&cart(&[("A", 1, -1)])),
        Err(PricingError::InvalidCart { field, .. }) if field == "lines[0].unit_price"
    ));
    assert!(matches!(
        invalid(&cart(&[("A", 2, i64::MAX)])),
        Err(PricingError::Overflow(_))
    ));
    assert!(matches!(
        invalid(&cart(&[("A", 1, i64::MAX), ("B", 1, 1)])),
        Err(PricingError::Overflow(_))
    ));
}

#[test]
fn shipping_in_another_currency_is_a_provider_error() {
    let set = rules(json!({"rules": []}));
    let tax = RateTable::none();
    let shipping = FlatRate {
        amount: pricing::Money::new(500, Currency::USD),
    };
    let error = price_with(
        &cart(&[("A", 1, 100)]),
        &set,
        &tax,
        &shipping,
        &RuleUsage::default(),
    )
    .expect_err("refused");
    assert!(matches!(error, PricingError::Shipping(_)), "{error}");
}
