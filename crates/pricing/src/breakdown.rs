//! What [`price`](crate::price) returns: every amount, and why each rule did or did not apply.
//!
//! Serialize it to store it with the order; deserializing gives back an equal value,
//! so a re-price can be compared with `==` (or as JSON text).

use serde::{Deserialize, Serialize};

use crate::ids::{GroupName, RuleId, Sku};
use crate::money::{Currency, Money};
use crate::version::CalculatorVersion;

/// A priced cart.
///
/// Invariants (checked by [`Breakdown::check_invariants`] and the property tests):
/// - each line: `base = unit_price × quantity`, `net = base − Σ discounts`, `0 ≤ net`;
/// - `subtotal = Σ base`, `discount_total = Σ line discounts`, `Σ net = subtotal − discount_total`;
/// - shipping: `amount = base − discount`, `0 ≤ amount`;
/// - tax: `amount = Σ line tax + shipping tax = Σ rates`;
/// - `total = Σ net + shipping.amount (+ tax.amount when prices exclude tax)`, `total ≥ 0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breakdown {
    pub calculator_version: CalculatorVersion,
    pub ruleset_revision: u64,
    pub currency: Currency,
    /// In the cart's line order.
    pub lines: Vec<LineBreakdown>,
    /// Σ line `base`: the goods before any discount.
    pub subtotal: Money,
    /// Σ of every line discount. Shipping discounts are in `shipping.discount`.
    pub discount_total: Money,
    pub shipping: ShippingBreakdown,
    pub tax: TaxBreakdown,
    /// What the customer pays.
    pub total: Money,
    /// The rules that applied, in evaluation order.
    pub applied: Vec<RuleId>,
    /// What each applied rule gave in total (its line discounts plus any shipping
    /// discount), in evaluation order: what the service counts against a budget.
    pub discounts: Vec<AppliedDiscount>,
    /// Every other rule of the set, in evaluation order, with the reason.
    pub not_applied: Vec<NotApplied>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineBreakdown {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: Money,
    /// `unit_price × quantity`.
    pub base: Money,
    /// In the order the rules applied.
    pub discounts: Vec<AppliedDiscount>,
    /// `base − Σ discounts`; never negative.
    pub net: Money,
    /// This line's share of the tax (contained in `net` when prices include tax).
    pub tax: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedDiscount {
    pub rule_id: RuleId,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingBreakdown {
    /// What the shipping provider charges for the discounted goods.
    pub base: Money,
    pub discount: Money,
    /// `base − discount`.
    pub amount: Money,
    /// The free-shipping rule that applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<RuleId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxBreakdown {
    /// Prices include tax: `total` already contains `amount`.
    pub inclusive: bool,
    pub amount: Money,
    /// The tax on shipping (part of `amount`).
    pub shipping: Money,
    /// Per rate: what was taxed at it and the tax (Σ = `amount`).
    pub rates: Vec<RateTax>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTax {
    /// Basis points: 1900 = 19 %.
    pub rate_bps: u32,
    /// The amount the rate applies to (tax included when prices include tax).
    pub taxable: Money,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotApplied {
    pub rule_id: RuleId,
    pub reason: NotAppliedReason,
}

/// Why a rule did not apply. Reasons are checked in this order, and the first that
/// holds is reported: conditions, limits, exclusivity, group, nothing to discount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotAppliedReason {
    /// A `when` condition does not hold (the first one that fails, in DSL order).
    ConditionUnmet { condition: Condition },
    /// The service reported the rule's `uses` or `uses_per_customer` limit reached.
    UsageLimitReached { limit: LimitKind },
    /// The rule's budget is spent.
    BudgetExhausted,
    /// An exclusive (`stackable: false`) rule applied earlier in evaluation order.
    LostToExclusive { winner: RuleId },
    /// Another rule of the same group applied earlier in evaluation order.
    LostInGroup { group: GroupName, winner: RuleId },
    /// The rule holds but has nothing to take off: its lines are already free, too
    /// few units for buy-X-get-Y, no tier reached, or shipping already claimed free.
    NothingToDiscount,
}

/// A `when` condition, as `ConditionUnmet` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    PromoCode,
    MinSubtotal,
    SkuIn,
    MinQuantity,
    CustomerEmailIn,
    FirstOrder,
    ValidFrom,
    ValidUntil,
}

/// A usage limit (`limits` in the DSL), as the service reports one reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    Uses,
    UsesPerCustomer,
    Budget,
}

impl Breakdown {
    /// Checks the arithmetic invariants listed on [`Breakdown`]; the first broken one
    /// is described in the error. `price` never returns a breakdown that fails this;
    /// it is here for stored breakdowns and tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let currency = self.currency;
        let wide = |m: &Money| i128::from(m.amount);
        let all_money = self
            .lines
            .iter()
            .flat_map(|l| {
                [l.unit_price, l.base, l.net, l.tax]
                    .into_iter()
                    .chain(l.discounts.iter().map(|d| d.amount))
            })
            .chain([
                self.subtotal,
                self.discount_total,
                self.total,
                self.shipping.base,
                self.shipping.discount,
                self.shipping.amount,
                self.tax.amount,
                self.tax.shipping,
            ])
            .chain(self.tax.rates.iter().flat_map(|r| [r.taxable, r.amount]));
        for money in all_money {
            if money.currency != currency {
                return Err(format!("{money:?} is not in {currency}"));
            }
            if money.amount < 0 {
                return Err(format!("{money:?} is negative"));
            }
        }
        let (mut base_sum, mut net_sum, mut discount_sum, mut line_tax) =
            (0i128, 0i128, 0i128, 0i128);
        for (index, line) in self.lines.iter().enumerate() {
            let discounts: i128 = line.discounts.iter().map(|d| wide(&d.amount)).sum();
            if wide(&line.base) != wide(&line.unit_price) * i128::from(line.quantity) {
                return Err(format!("lines[{index}]: base is not unit_price × quantity"));
            }
            if wide(&line.net) != wide(&line.base) - discounts {
                return Err(format!("lines[{index}]: net is not base − discounts"));
            }
            base_sum += wide(&line.base);
            net_sum += wide(&line.net);
            discount_sum += discounts;
            line_tax += wide(&line.tax);
        }
        if base_sum != wide(&self.subtotal) {
            return Err("subtotal is not Σ line base".into());
        }
        if discount_sum != wide(&self.discount_total) {
            return Err("discount_total is not Σ line discounts".into());
        }
        if net_sum != wide(&self.subtotal) - wide(&self.discount_total) {
            return Err("Σ line net is not subtotal − discount_total".into());
        }
        if wide(&self.shipping.amount) != wide(&self.shipping.base) - wide(&self.shipping.discount)
        {
            return Err("shipping amount is not base − discount".into());
        }
        let rate_sum: i128 = self.tax.rates.iter().map(|r| wide(&r.amount)).sum();
        if wide(&self.tax.amount) != line_tax + wide(&self.tax.shipping)
            || rate_sum != wide(&self.tax.amount)
        {
            return Err("tax amount is not Σ line tax + shipping tax = Σ rates".into());
        }
        let exclusive_tax = if self.tax.inclusive {
            0
        } else {
            wide(&self.tax.amount)
        };
        if wide(&self.total) != net_sum + wide(&self.shipping.amount) + exclusive_tax {
            return Err("total is not Σ net + shipping (+ tax when exclusive)".into());
        }
        let by_rule: i128 = self.discounts.iter().map(|d| wide(&d.amount)).sum();
        if by_rule != discount_sum + wide(&self.shipping.discount) {
            return Err("Σ discounts per rule is not line discounts + shipping discount".into());
        }
        Ok(())
    }
}
