//! The rule DSL: what parses, and every refusal naming its rule and field.

mod common;

use common::*;
use pricing::{Action, Percent, RuleError, RuleSet, Threshold};
use serde_json::{json, Value};

/// The errors for a body that must not parse.
fn refused(body: Value) -> Vec<RuleError> {
    match RuleSet::from_value(&body, EUR) {
        Ok(rules) => panic!("expected errors, parsed {rules:#?}"),
        Err(errors) => errors,
    }
}

/// A body with one rule: `summer10` with the given `then`, plus `extra` fields merged in.
fn one_rule(then: Value, extra: Value) -> Value {
    let mut rule = json!({"id": "summer10", "priority": 10, "stackable": true, "then": then});
    if let (Some(rule), Some(extra)) = (rule.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            rule.insert(key.clone(), value.clone());
        }
    }
    json!({ "rules": [rule] })
}

fn assert_error(errors: &[RuleError], rule: Option<&str>, field: &str, message_part: &str) {
    let found = errors
        .iter()
        .any(|e| e.rule.as_deref() == rule && e.field == field && e.message.contains(message_part));
    assert!(
        found,
        "no error for rule {rule:?} at {field:?} containing {message_part:?} in {errors:#?}"
    );
}

#[test]
fn the_api_example_parses_exactly_as_written() {
    let body = r#"{"rules":[{"id":"summer10","priority":10,"stackable":false,"when":{"promo_code":"SUMMER10","min_subtotal":{"amount":5000,"currency":"EUR"}},"then":{"percent_off":10}}]}"#;
    let rules = RuleSet::parse(body, EUR).expect("the API example parses");
    let rule = &rules.rules()[0];
    assert_eq!(rule.id, "summer10");
    assert_eq!(rule.priority, 10);
    assert!(!rule.stackable);
    assert_eq!(rule.when.promo_code.as_deref(), Some("SUMMER10"));
    assert_eq!(rule.when.min_subtotal, Some(eur(5000)));
    assert_eq!(
        rule.then,
        Action::PercentOff {
            percent: Percent::from_bps(1000).expect("10 %"),
            target: None
        }
    );
}

#[test]
fn the_api_example_discounts_ten_percent_with_the_code_over_fifty_euros() {
    let body = r#"{"rules":[{"id":"summer10","priority":10,"stackable":false,"when":{"promo_code":"SUMMER10","min_subtotal":{"amount":5000,"currency":"EUR"}},"then":{"percent_off":10}}]}"#;
    let rules = RuleSet::parse(body, EUR).expect("parses");
    let with_code = price_bare(&with_promo(cart(&[("A", 2, 3000)]), "SUMMER10"), &rules);
    assert_eq!(with_code.discount_total, eur(600));
    assert_eq!(with_code.total, eur(5400));
    let small = price_bare(&with_promo(cart(&[("A", 1, 4999)]), "SUMMER10"), &rules);
    assert_eq!(small.discount_total, eur(0));
    let without = price_bare(&cart(&[("A", 2, 3000)]), &rules);
    assert_eq!(without.discount_total, eur(0));
}

#[test]
fn serializing_a_rule_set_gives_json_that_parses_to_the_same_set() {
    let original = rules(json!({"rules": [
        {"id": "b", "priority": 1, "stackable": true, "group": "g",
         "when": {"promo_code": "X", "min_subtotal": {"amount": 0, "currency": "EUR"},
                  "sku_in": ["B", "A", "A"], "min_quantity": 2,
                  "customer_email_in": ["a@example.com"], "first_order": false,
                  "valid_from": "2026-01-01T00:00:00+02:00", "valid_until": "2027-01-01T00:00:00Z"},
         "then": {"percent_off": 12.5, "target": {"sku_in": ["A"]}},
         "limits": {"uses": 10, "uses_per_customer": 1, "budget": {"amount": 100, "currency": "EUR"}}},
        {"id": "a", "priority": 1, "stackable": false,
         "then": {"buy_x_get_y": {"buy": 2, "get": 1, "sku_in": ["S"]}}},
        {"id": "c", "priority": 5, "stackable": true,
         "then": {"tiers": [{"min_quantity": 3, "percent_off": 5}, {"min_subtotal": {"amount": 9000, "currency": "EUR"}, "percent_off": 33.33}]}},
        {"id": "d", "priority": 0, "stackable": true, "then": {"amount_off": {"amount": 250, "currency": "EUR"}}},
        {"id": "e", "priority": 0, "stackable": true, "then": {"free_shipping": true}}
    ]}));
    let text = serde_json::to_string(&original).expect("serializes");
    let again = RuleSet::parse(&text, EUR).expect("its own output parses");
    assert_eq!(again, original);
    assert_eq!(
        serde_json::to_string(&again).expect("serializes"),
        text,
        "stable output"
    );
}

#[test]
fn rules_are_kept_in_evaluation_order_priority_descending_then_id() {
    let set = rules(json!({"rules": [
        {"id": "low", "priority": 1, "stackable": true, "then": {"percent_off": 1}},
        {"id": "b-high", "priority": 9, "stackable": true, "then": {"percent_off": 1}},
        {"id": "a-high", "priority": 9, "stackable": true, "then": {"percent_off": 1}},
        {"id": "negative", "priority": -3, "stackable": true, "then": {"percent_off": 1}}
    ]}));
    let order: Vec<&str> = set.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(order, ["a-high", "b-high", "low", "negative"]);
}

#[test]
fn percentages_take_up_to_two_decimals_as_basis_points() {
    for (written, bps) in [
        (json!(0), 0),
        (json!(100), 10_000),
        (json!(12.5), 1_250),
        (json!(33.33), 3_333),
        (json!(0.01), 1),
        (json!(100.0), 10_000),
    ] {
        let set = rules(one_rule(json!({ "percent_off": written }), json!({})));
        assert_eq!(
            set.rules()[0].then,
            Action::PercentOff {
                percent: Percent::from_bps(bps).expect("in range"),
                target: None
            },
            "{written}"
        );
    }
}

#[test]
fn percent_outside_0_to_100_is_refused_naming_the_field() {
    for bad in [
        json!(101),
        json!(-1),
        json!(100.01),
        json!(1e9),
        json!("10"),
    ] {
        let errors = refused(one_rule(json!({ "percent_off": bad }), json!({})));
        assert_error(
            &errors,
            Some("summer10"),
            "rules[0].then.percent_off",
            "from 0 to 100",
        );
    }
    let errors = refused(one_rule(json!({"percent_off": 12.345}), json!({})));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.percent_off",
        "two decimals",
    );
    let errors = refused(one_rule(
        json!({"buy_x_get_y": {"buy": 1, "get": 1, "sku_in": ["A"], "percent_off": 150}}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.buy_x_get_y.percent_off",
        "from 0 to 100",
    );
}

#[test]
fn unknown_fields_are_refused_wherever_they_are() {
    let errors = refused(json!({"rules": [{
        "id": "r", "priority": 1, "stackable": true, "colour": "red",
        "when": {"promo": "X", "min_subtotal": {"amount": 1, "currency": "EUR", "cents": true}},
        "then": {"percent_off": 5, "target": {"sku_in": ["A"], "except": ["B"]}},
        "limits": {"uses": 3, "forever": true}
    }], "version": 2}));
    assert_error(&errors, None, "version", "unknown field");
    assert_error(&errors, Some("r"), "rules[0].colour", "unknown field");
    assert_error(&errors, Some("r"), "rules[0].when.promo", "unknown field");
    assert_error(
        &errors,
        Some("r"),
        "rules[0].when.min_subtotal.cents",
        "unknown field",
    );
    assert_error(
        &errors,
        Some("r"),
        "rules[0].then.target.except",
        "unknown field",
    );
    assert_error(
        &errors,
        Some("r"),
        "rules[0].limits.forever",
        "unknown field",
    );
}

#[test]
fn negative_amounts_are_refused() {
    let errors = refused(one_rule(
        json!({"amount_off": {"amount": -100, "currency": "EUR"}}),
        json!({
            "when": {"min_subtotal": {"amount": -1, "currency": "EUR"}},
            "limits": {"budget": {"amount": -5, "currency": "EUR"}}
        }),
    ));
    for field in [
        "rules[0].then.amount_off.amount",
        "rules[0].when.min_subtotal.amount",
        "rules[0].limits.budget.amount",
    ] {
        assert_error(&errors, Some("summer10"), field, "negative");
    }
}

#[test]
fn money_in_another_currency_than_the_merchants_is_refused() {
    let errors = refused(one_rule(
        json!({"amount_off": {"amount": 100, "currency": "USD"}}),
        json!({"when": {"min_subtotal": {"amount": 100, "currency": "eur"}}}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.amount_off.currency",
        "merchant's currency",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].when.min_subtotal.currency",
        "three upper-case letters",
    );
}

#[test]
fn a_then_with_no_action_or_several_is_refused() {
    let errors = refused(one_rule(json!({}), json!({})));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then",
        "must name one action",
    );
    let errors = refused(one_rule(
        json!({"percent_off": 10, "free_shipping": true}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then",
        "several actions (percent_off, free_shipping)",
    );
    let errors = refused(one_rule(json!({"target": {"sku_in": ["A"]}}), json!({})));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then",
        "must name one action",
    );
}

#[test]
fn a_target_only_goes_with_actions_that_can_take_one() {
    let errors = refused(one_rule(
        json!({"free_shipping": true, "target": {"sku_in": ["A"]}}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.target",
        "applies only to",
    );
    let errors = refused(one_rule(
        json!({"buy_x_get_y": {"buy": 1, "get": 1, "sku_in": ["A"]}, "target": {"sku_in": ["A"]}}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.target",
        "own sku_in",
    );
}

#[test]
fn empty_sku_lists_are_refused() {
    let errors = refused(one_rule(
        json!({"percent_off": 10, "target": {"sku_in": []}}),
        json!({"when": {"sku_in": []}}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.target.sku_in",
        "at least one SKU",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].when.sku_in",
        "at least one SKU",
    );
    let errors = refused(one_rule(
        json!({"buy_x_get_y": {"buy": 2, "get": 1, "sku_in": []}}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.buy_x_get_y.sku_in",
        "at least one SKU",
    );
    let errors = refused(one_rule(
        json!({"buy_x_get_y": {"buy": 2, "get": 1}}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.buy_x_get_y.sku_in",
        "required",
    );
}

#[test]
fn duplicate_rule_ids_are_refused() {
    let errors = refused(json!({"rules": [
        {"id": "dup", "priority": 1, "stackable": true, "then": {"percent_off": 1}},
        {"id": "other", "priority": 1, "stackable": true, "then": {"percent_off": 1}},
        {"id": "dup", "priority": 2, "stackable": true, "then": {"percent_off": 2}}
    ]}));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_error(&errors, Some("dup"), "rules[2].id", "rules[0] has it too");
}

#[test]
fn valid_until_must_come_after_valid_from() {
    for until in ["2026-06-01T00:00:00Z", "2026-05-01T00:00:00Z"] {
        let errors = refused(one_rule(
            json!({"percent_off": 5}),
            json!({"when": {"valid_from": "2026-06-01T00:00:00Z", "valid_until": until}}),
        ));
        assert_error(
            &errors,
            Some("summer10"),
            "rules[0].when.valid_until",
            "after valid_from",
        );
    }
    let errors = refused(one_rule(
        json!({"percent_off": 5}),
        json!({"when": {"valid_from": "June 1st"}}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].when.valid_from",
        "RFC 3339",
    );
}

#[test]
fn required_fields_and_types_are_checked() {
    let errors = refused(json!({"rules": [{"when": {}}, 7]}));
    for field in [
        "rules[0].id",
        "rules[0].priority",
        "rules[0].stackable",
        "rules[0].then",
    ] {
        assert_error(&errors, Some("rules[0]"), field, "required");
    }
    assert_error(&errors, Some("rules[1]"), "rules[1]", "must be an object");

    let errors = refused(one_rule(
        json!({"percent_off": 5}),
        json!({"priority": 1.5, "stackable": "no", "group": "",
               "when": {"min_quantity": 0, "first_order": "yes", "customer_email_in": ["nobody"]}}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].priority",
        "whole number",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].stackable",
        "true or false",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].group",
        "must not be empty",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].when.min_quantity",
        "at least 1",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].when.first_order",
        "true or false",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].when.customer_email_in[0]",
        "email",
    );
}

#[test]
fn tiers_need_exactly_one_threshold_each() {
    let errors = refused(one_rule(
        json!({"tiers": [
            {"percent_off": 5},
            {"min_quantity": 2, "min_subtotal": {"amount": 1, "currency": "EUR"}, "percent_off": 5},
            {"min_quantity": 3, "percent_off": 500}
        ]}),
        json!({}),
    ));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.tiers[0]",
        "needs min_quantity or min_subtotal",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.tiers[1]",
        "has both",
    );
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.tiers[2].percent_off",
        "from 0 to 100",
    );
    let errors = refused(one_rule(json!({"tiers": []}), json!({})));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.tiers",
        "at least one tier",
    );

    let set = rules(one_rule(
        json!({"tiers": [{"min_subtotal": {"amount": 100, "currency": "EUR"}, "percent_off": 5}]}),
        json!({}),
    ));
    match &set.rules()[0].then {
        Action::Tiers { tiers, .. } => {
            assert_eq!(tiers[0].threshold, Threshold::MinSubtotal(eur(100)))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn free_shipping_must_be_true() {
    let errors = refused(one_rule(json!({"free_shipping": false}), json!({})));
    assert_error(
        &errors,
        Some("summer10"),
        "rules[0].then.free_shipping",
        "must be true",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let errors = refused(json!({"rules": [
        {"id": "a", "priority": 1, "stackable": true, "then": {"percent_off": 200}},
        {"id": "b", "priority": 1, "stackable": true, "then": {"amount_off": {"amount": -1, "currency": "EUR"}}},
        {"id": "c", "priority": 1, "stackable": true, "when": {"sku_in": []}, "then": {"free_shipping": true}}
    ]}));
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let rules: Vec<Option<&str>> = errors.iter().map(|e| e.rule.as_deref()).collect();
    assert_eq!(rules, [Some("a"), Some("b"), Some("c")]);
}

#[test]
fn malformed_json_and_wrong_shapes_are_refused_as_a_whole() {
    let errors = RuleSet::parse("{\"rules\": [", EUR).expect_err("malformed");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].rule, None);
    assert!(errors[0].message.starts_with("malformed JSON"));
    assert_error(&refused(json!([])), None, "", "must be an object");
    assert_error(&refused(json!({})), None, "rules", "required");
    assert_error(&refused(json!({"rules": {}})), None, "rules", "array");
}

#[test]
fn null_counts_as_absent() {
    let set = rules(one_rule(
        json!({"percent_off": 5, "target": null}),
        json!({"group": null, "limits": null, "when": {"promo_code": null}}),
    ));
    let rule = &set.rules()[0];
    assert_eq!(rule.group, None);
    assert!(rule.limits.is_empty());
    assert_eq!(rule.when.promo_code, None);
}

#[test]
fn an_empty_rule_set_prices_without_discounts() {
    let set = rules(json!({"rules": []}));
    let breakdown = price_bare(&cart(&[("A", 1, 100)]), &set);
    assert_eq!(breakdown.total, eur(100));
    assert!(breakdown.applied.is_empty() && breakdown.not_applied.is_empty());
}
