//! Shared set-up for the pricing tests: carts, providers and a `price` shorthand.
#![allow(dead_code)] // each test file uses a different part

use chrono::{DateTime, TimeZone, Utc};
use pricing::{
    price, Breakdown, CalculatorVersion, Cart, Context, Currency, Customer, FlatRate, Line, Money,
    NotAppliedReason, PricingError, RateTable, RuleSet, RuleUsage, ShippingProvider, TaxProvider,
};
use serde_json::Value;

pub const EUR: Currency = Currency::EUR;

pub fn eur(amount: i64) -> Money {
    Money::new(amount, EUR)
}

pub fn noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0)
        .single()
        .expect("a valid date")
}

pub fn cart(lines: &[(&str, u32, i64)]) -> Cart {
    Cart {
        currency: EUR,
        lines: lines
            .iter()
            .map(|&(sku, quantity, unit_price)| Line::new(sku, quantity, unit_price))
            .collect(),
        customer: None,
        promo_code: None,
        country: None,
        at: noon(),
    }
}

pub fn with_promo(mut cart: Cart, code: &str) -> Cart {
    cart.promo_code = Some(code.to_owned());
    cart
}

pub fn with_customer(mut cart: Cart, email: &str, first_order: bool) -> Cart {
    cart.customer = Some(Customer {
        email: email.to_owned(),
        first_order,
    });
    cart
}

/// Parses a rule set written as JSON, panicking with the errors if it does not parse.
pub fn rules(json: Value) -> RuleSet {
    match RuleSet::from_value(&json, EUR) {
        Ok(rules) => rules,
        Err(errors) => panic!("rules do not parse: {errors:#?}"),
    }
}

/// No tax, no shipping: only the discounts show.
pub fn bare() -> (RateTable, FlatRate) {
    (RateTable::none(), FlatRate { amount: eur(0) })
}

pub fn price_with(
    cart: &Cart,
    rules: &RuleSet,
    tax: &dyn TaxProvider,
    shipping: &dyn ShippingProvider,
    usage: &RuleUsage,
) -> Result<Breakdown, PricingError> {
    let ctx = Context::new(tax, shipping).with_usage(usage);
    price(cart, rules, CalculatorVersion::V1, &ctx)
}

/// Prices with no tax, no shipping, no usage, version 1; checks the invariants.
pub fn price_bare(cart: &Cart, rules: &RuleSet) -> Breakdown {
    let (tax, shipping) = bare();
    let breakdown =
        price_with(cart, rules, &tax, &shipping, &RuleUsage::default()).expect("priced");
    if let Err(broken) = breakdown.check_invariants() {
        panic!("{broken}: {breakdown:#?}");
    }
    breakdown
}

/// Each line's discounts added up, in line order.
pub fn line_discounts(breakdown: &Breakdown) -> Vec<i64> {
    breakdown
        .lines
        .iter()
        .map(|line| line.discounts.iter().map(|d| d.amount.amount).sum())
        .collect()
}

pub fn nets(breakdown: &Breakdown) -> Vec<i64> {
    breakdown.lines.iter().map(|line| line.net.amount).collect()
}

pub fn reason(breakdown: &Breakdown, rule: &str) -> Option<NotAppliedReason> {
    breakdown
        .not_applied
        .iter()
        .find(|n| n.rule_id == rule)
        .map(|n| n.reason.clone())
}

pub fn applied(breakdown: &Breakdown) -> Vec<&str> {
    breakdown.applied.iter().map(|id| id.as_str()).collect()
}
