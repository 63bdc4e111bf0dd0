//! # Mercato pricing
//!
//! The pricing core: money, the merchant's promotion rules (a JSON DSL), and
//! versioned calculators that turn a cart into an exact, explainable [`Breakdown`].
//!
//! It is pure: no I/O, no async, no clock, no floating point. [`price`] is a function of
//! its arguments only — the cart (which carries its own "now"), the rule set, the
//! [`CalculatorVersion`] and the [`Context`] (tax and shipping providers, and which
//! limited rules are used up). Record those with an order and calling `price` again
//! reproduces the stored breakdown exactly, today or in ten years; calling it with
//! another version shows what that version would have charged.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use pricing::{price, CalculatorVersion, Cart, Context, Currency, FlatRate, Line, Money, RateTable, RuleSet};
//!
//! let rules = RuleSet::parse(
//!     r#"{"rules":[{"id":"summer10","priority":10,"stackable":false,
//!         "when":{"promo_code":"SUMMER10","min_subtotal":{"amount":5000,"currency":"EUR"}},
//!         "then":{"percent_off":10}}]}"#,
//!     Currency::EUR,
//! )
//! .expect("valid rules")
//! .with_revision(7);
//!
//! let cart = Cart {
//!     currency: Currency::EUR,
//!     lines: vec![Line::new("TSHIRT-M", 2, 2_000), Line::new("CAP", 1, 1_500)],
//!     customer: None,
//!     promo_code: Some("summer10".into()),
//!     country: Some("DE".into()),
//!     at: Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap(),
//! };
//! let tax = RateTable::single(1_900, true); // 19 % VAT, prices include it
//! let shipping = FlatRate { amount: Money::new(490, Currency::EUR) };
//! let ctx = Context::new(&tax, &shipping);
//!
//! let breakdown = price(&cart, &rules, CalculatorVersion::V1, &ctx).expect("priced");
//! assert_eq!(breakdown.subtotal.amount, 5_500);
//! assert_eq!(breakdown.discount_total.amount, 550);
//! assert_eq!(breakdown.total.amount, 5_500 - 550 + 490);
//! assert_eq!(breakdown.applied, ["summer10"]);
//! assert_eq!(breakdown.ruleset_revision, 7);
//! ```
//!
//! ## Money
//!
//! [`Money`] is `{"amount": i64 minor units, "currency": "EUR"}`. Arithmetic is
//! checked: an overflow is an error ([`PricingError::Overflow`]), never a wrap.
//! Percentages are basis points ([`Percent`]); products are taken in 128-bit
//! integers; every division rounds in a stated way (below).
//!
//! ## The rule DSL
//!
//! A rule set is `{"rules": [rule, …]}`; [`RuleSet::parse`] reads it for one merchant
//! currency and reports *every* problem at once as [`RuleError`]s naming the rule
//! (its id, or `rules[i]`) and the JSON path (`rules[0].then.percent_off`). Unknown
//! fields are refused everywhere. `null` counts as absent.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `id` | string, required | unique within the set |
//! | `priority` | integer, required | higher is evaluated first |
//! | `stackable` | bool, required | `false` makes the rule exclusive (below) |
//! | `group` | string | at most one rule of a group applies |
//! | `when` | object | conditions, all must hold (absent: always) |
//! | `then` | object, required | exactly one action |
//! | `limits` | object | `uses`, `uses_per_customer` (≥ 1), `budget` (Money > 0): counted by the service |
//!
//! **Conditions** (`when`) look at the cart as submitted, before any discount:
//! - `promo_code`: the cart's code equals it, ignoring ASCII case and surrounding spaces;
//! - `min_subtotal` (Money): Σ unit price × quantity ≥ it;
//! - `sku_in` (list of SKUs, non-empty): some line has one of these SKUs;
//! - `min_quantity` (≥ 1): units of the `sku_in` SKUs if given, else of the whole cart, ≥ it;
//! - `customer_email_in` (list of emails): the customer's email is listed, ignoring ASCII case;
//! - `first_order` (bool): the customer's `first_order` flag equals it;
//! - `valid_from`, `valid_until` (RFC 3339): `valid_from ≤ cart.at < valid_until`.
//!
//! Customer conditions are unmet when the cart has no customer. `when.sku_in` only
//! decides *whether* a rule applies; what it discounts is the action's business.
//!
//! **Actions** (`then`, exactly one):
//! - `percent_off` (0–100, at most two decimals): without `target`, an **order-level**
//!   discount: the percentage of what is left of the whole order, rounded once, then
//!   allocated to the lines. With `"target": {"sku_in": [...]}`, an **item-level**
//!   discount: the percentage of what is left of each targeted line, rounded per line.
//! - `amount_off` (Money > 0): order level, allocated to the lines (or to the `target`
//!   lines only); never more than what is left of them.
//! - `buy_x_get_y` (`{"buy", "get", "sku_in", "percent_off"?}`, `percent_off` defaults
//!   to 100 = free): among the units of the `sku_in` SKUs — and only those — every
//!   `buy + get` units make `get` units discounted, and the discounted ones are the
//!   **cheapest** qualifying units (by what is left per unit after earlier rules;
//!   equal ones in the line content order below). Units of other SKUs are never
//!   discounted and do not count. Example: buy 2 get 1 on socks, with socks at 5.00 ×3
//!   and 9.00 ×1 and a key ring at 0.50: 4 qualifying units, so one 5.00 sock is free;
//!   the key ring is not a sock and is never the free item.
//! - `tiers` (`[{"min_quantity" | "min_subtotal", "percent_off"}, …]`): among the tiers
//!   whose threshold the cart reaches (units and subtotal before discounts, over the
//!   `target` lines if a target is given), the largest `percent_off` applies: order
//!   level without a target, item level with one.
//! - `free_shipping` (`true`): the shipping charge is discounted to zero.
//!
//! The parser refuses: unknown fields; missing `id`, `priority`, `stackable`, `then`;
//! percentages outside 0–100 or with more than two decimals; negative amounts;
//! Money in a currency other than the merchant's; a `then` with no action or several;
//! `target` on an action that cannot take one; empty `sku_in` lists; duplicate ids;
//! `valid_until` not after `valid_from`; a tier with both or neither threshold.
//!
//! ## Combination
//!
//! Rules are evaluated one at a time in **evaluation order: `priority` descending,
//! then `id` ascending** (so equal priorities are still ordered, by id). For each
//! rule, the first of these that holds is recorded in `not_applied` and the rule is
//! skipped:
//!
//! 1. a `when` condition does not hold → `condition_unmet` (naming the condition);
//! 2. the service reports a limit reached ([`RuleUsage`]) → `usage_limit_reached` or
//!    `budget_exhausted`;
//! 3. an exclusive rule applied earlier → `lost_to_exclusive` (naming it);
//! 4. another rule of its `group` applied earlier → `lost_in_group` (naming it);
//! 5. it would take nothing off → `nothing_to_discount`.
//!
//! Otherwise the rule **applies**: it is listed in `applied` and its discount is taken.
//!
//! - **Exclusive** (`stackable: false`): once an exclusive rule applies, no rule after
//!   it in evaluation order applies. Rules before it that applied keep their
//!   discounts — so a rule that must never combine with anything gets the highest
//!   priority, and one that may combine with a few (say free shipping) gets a
//!   priority just below them.
//! - **Groups**: the first rule of a group (in evaluation order) that applies is the
//!   group's only one; a rule of the group that fails its conditions does not block
//!   the next one.
//! - A rule only "applies" if it takes something off, so an exclusive rule that has
//!   nothing to discount never blocks others. `free_shipping` is the exception: it
//!   applies when its conditions hold, even if shipping turns out to cost nothing
//!   (shipping is quoted after all line discounts); a second free-shipping rule has
//!   nothing left to discount.
//! - **Stacking**: each discount applies to what the earlier ones left. No line, no
//!   order total and no shipping charge ever goes below zero: a line discount is
//!   capped at what is left of the line, an order discount at what is left of the order.
//!
//! ## Rounding and allocation
//!
//! - Item-level percentages (targeted `percent_off`, targeted `tiers`) are rounded
//!   **per line**; buy-X-get-Y rounds per line over the line's discounted units.
//! - Order-level discounts (`amount_off`, untargeted `percent_off` and `tiers`) are
//!   computed once on the order (a percentage rounded once), then **allocated to the
//!   lines in whole minor units by largest remainder**, in proportion to what is left
//!   of each line; leftover units go to the largest remainders. So line nets always
//!   add up to the order exactly: no one-cent drift (three lines of 3.33 with 10 %
//!   off: 1.00 off the order, split 0.34 / 0.33 / 0.33).
//! - Equal remainders (and equally cheap buy-X-get-Y units) are ordered by **line
//!   content**: unit price, then quantity, then SKU, then position in the cart. Lines
//!   that tie on all of that are identical, so the breakdown is the same, line for
//!   line, whatever order the cart lists its lines in.
//! - The rounding mode of percentages is the calculator version's: `v1` rounds half
//!   to even, `v2` half up ([`CalculatorVersion`]).
//! - A budget cap ([`RuleUsage::budget_left`]) scales a rule's line shares down by
//!   largest remainder.
//!
//! ## Shipping and tax
//!
//! Order of work: **line discounts → shipping → tax → total**. Discounts apply before tax.
//!
//! 1. The rules run over the lines (above).
//! 2. The [`ShippingProvider`] quotes shipping on the discounted goods total
//!    (built-ins: [`FlatRate`], [`FreeOverThreshold`], free from a threshold reached
//!    *after* discounts). A `free_shipping` rule then discounts it to zero.
//! 3. The [`TaxProvider`] assesses tax on the discounted lines and the shipping
//!    charged. The built-in [`RateTable`] has a rate per ship-to country, prices
//!    inclusive or exclusive of tax, computes the tax once per rate on the sum and
//!    allocates it to the lines by largest remainder (rounded half to even).
//! 4. `total = Σ line nets + shipping + tax` (tax not added again when prices include it).
//!
//! With tax-inclusive prices a discount comes off the gross price and the tax in it
//! is worked out on what is left; with tax-exclusive prices tax is added to what is
//! left. Either way no tax is charged on money the customer did not pay. The
//! built-in rate table rounds half to even in every calculator version; a version
//! changes the discount arithmetic only.
//!
//! ## Versions and re-pricing
//!
//! Every [`CalculatorVersion`] is kept forever and selected by value. A breakdown
//! records its `calculator_version` and `ruleset_revision`. To re-price an order,
//! call [`price`] with the recorded cart, rule set revision, version, providers and
//! [`RuleUsage`]: the result equals the stored breakdown (also after a JSON round trip).
//!
//! ## Limits
//!
//! `limits` are validated here and enforced by the service, which knows the counts:
//! it passes [`RuleUsage`] in the context, naming rules that have reached a limit
//! and what is left of budgets. [`Breakdown::discounts`] gives each applied rule's
//! total, which is what a budget is charged.
//!
//! `not_applied` lists every rule that did not apply, including ones whose promo code
//! the customer did not enter: filter it before showing it to buyers.
//!
//! ## Benchmark
//!
//! [`bench::workload`] builds realistic carts and rules; `cargo run --release -p
//! pricing --example bench` prints carts priced per second on one core.

#![forbid(unsafe_code)]

pub mod bench;
mod breakdown;
mod cart;
mod engine;
mod ids;
mod money;
mod providers;
mod rules;
mod version;

pub use breakdown::{
    AppliedDiscount, Breakdown, Condition, LimitKind, LineBreakdown, NotApplied, NotAppliedReason,
    RateTax, ShippingBreakdown, TaxBreakdown,
};
pub use cart::{Cart, Customer, Line};
pub use engine::{price, Context, PricingError, RuleUsage};
pub use ids::{GroupName, RuleId, Sku};
pub use money::{Currency, Money, MoneyError, Percent, Rounding};
pub use providers::{
    FlatRate, FreeOverThreshold, ProviderError, RateTable, ShippingProvider, ShippingQuery,
    TaxAssessment, TaxProvider, TaxQuery, MAX_RATE_BPS,
};
pub use rules::{
    Action, BuyXGetY, Conditions, Limits, Rule, RuleError, RuleSet, SkuSet, Target, Threshold,
    Tier, MAX_RULES,
};
pub use version::{CalculatorVersion, UnknownVersion};
