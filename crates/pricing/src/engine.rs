//! The calculator: cart + rule set + version + context → breakdown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::breakdown::{
    AppliedDiscount, Breakdown, Condition, LimitKind, LineBreakdown, NotApplied, NotAppliedReason,
    ShippingBreakdown, TaxBreakdown,
};
use crate::cart::{Cart, Line};
use crate::ids::{GroupName, RuleId};
use crate::money::{allocate, content_order, Currency, Money, Percent, Rounding};
use crate::providers::{
    ProviderError, ShippingProvider, ShippingQuery, TaxAssessment, TaxProvider, TaxQuery,
};
use crate::rules::{Action, BuyXGetY, Conditions, Rule, RuleSet, SkuSet, Target, Threshold, Tier};
use crate::version::CalculatorVersion;

/// What `price` needs besides the cart and the rules: the merchant's tax and shipping
/// providers, and the usage state of limited rules.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub tax: &'a dyn TaxProvider,
    pub shipping: &'a dyn ShippingProvider,
    pub usage: &'a RuleUsage,
}

impl<'a> Context<'a> {
    /// A context in which no rule has reached a limit.
    pub fn new(tax: &'a dyn TaxProvider, shipping: &'a dyn ShippingProvider) -> Self {
        Context {
            tax,
            shipping,
            usage: &NO_USAGE,
        }
    }

    pub fn with_usage(self, usage: &'a RuleUsage) -> Self {
        Context { usage, ..self }
    }
}

static NO_USAGE: RuleUsage = RuleUsage {
    exhausted: BTreeMap::new(),
    budget_left: BTreeMap::new(),
};

/// The state of limited rules at the moment of pricing, as the service counts it.
/// Record it with the order: it is an input like the cart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleUsage {
    /// Rules that may not apply any more, and the limit each has reached. Reported
    /// as `UsageLimitReached` (`uses`, `uses_per_customer`) or `BudgetExhausted` (`budget`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exhausted: BTreeMap<RuleId, LimitKind>,
    /// What is left of a rule's budget, in minor units: the rule gives at most this
    /// much (its line shares scaled down by largest remainder); 0 or less is `BudgetExhausted`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub budget_left: BTreeMap<RuleId, i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("the cart is in {cart} but the rule set is in {rules}")]
    CurrencyMismatch { cart: Currency, rules: Currency },
    #[error("{field}: {message}")]
    InvalidCart { field: String, message: String },
    #[error("{0}: amount out of range")]
    Overflow(String),
    #[error("shipping provider: {0}")]
    Shipping(ProviderError),
    #[error("tax provider: {0}")]
    Tax(ProviderError),
}

/// Prices `cart` with `rules` as calculator `version` computes.
///
/// Pure and deterministic: the same arguments give the same breakdown, on any
/// machine, at any time. See the crate docs for the order of work, combination and
/// rounding.
pub fn price(
    cart: &Cart,
    rules: &RuleSet,
    version: CalculatorVersion,
    ctx: &Context<'_>,
) -> Result<Breakdown, PricingError> {
    let currency = cart.currency;
    if currency != rules.currency() {
        return Err(PricingError::CurrencyMismatch {
            cart: currency,
            rules: rules.currency(),
        });
    }
    let mut state = State::new(cart, version)?;
    let money = |amount| Money::new(amount, currency);

    let rule_count = rules.rules().len();
    let mut applied: Vec<RuleId> = Vec::with_capacity(rule_count);
    let mut by_rule: Vec<AppliedDiscount> = Vec::with_capacity(rule_count);
    let mut not_applied: Vec<NotApplied> = Vec::with_capacity(rule_count);
    let mut exclusive_winner: Option<&RuleId> = None;
    let mut group_winners: Vec<(&GroupName, &RuleId)> = Vec::new();
    // The free-shipping rule that claimed shipping: its index in `by_rule`, and its budget cap.
    let mut free_shipping: Option<(&RuleId, usize, Option<i64>)> = None;

    for rule in rules.rules() {
        let budget_left = ctx.usage.budget_left.get(&rule.id).copied();
        let blocked = state
            .unmet_condition(&rule.when)
            .map(|condition| NotAppliedReason::ConditionUnmet { condition })
            .or_else(|| limit_reached(rule, ctx.usage, budget_left))
            .or_else(|| {
                exclusive_winner.map(|winner| NotAppliedReason::LostToExclusive {
                    winner: winner.clone(),
                })
            })
            .or_else(|| {
                let group = rule.group.as_ref()?;
                group_winners
                    .iter()
                    .find(|(taken, _)| *taken == group)
                    .map(|(_, winner)| NotAppliedReason::LostInGroup {
                        group: group.clone(),
                        winner: (*winner).clone(),
                    })
            });
        if let Some(reason) = blocked {
            not_applied.push(NotApplied {
                rule_id: rule.id.clone(),
                reason,
            });
            continue;
        }

        let given = if let Action::FreeShipping = rule.then {
            if free_shipping.is_some() {
                None
            } else {
                // The amount is known once shipping is quoted, after every line discount.
                free_shipping = Some((&rule.id, by_rule.len(), budget_left));
                Some(0)
            }
        } else {
            let total = state.propose(&rule.then, budget_left);
            (total > 0).then(|| state.apply(&rule.id, total))
        };
        let Some(given) = given else {
            not_applied.push(NotApplied {
                rule_id: rule.id.clone(),
                reason: NotAppliedReason::NothingToDiscount,
            });
            continue;
        };
        applied.push(rule.id.clone());
        by_rule.push(AppliedDiscount {
            rule_id: rule.id.clone(),
            amount: money(given),
        });
        if let Some(group) = &rule.group {
            group_winners.push((group, &rule.id));
        }
        if !rule.stackable {
            exclusive_winner = Some(&rule.id);
        }
    }

    // Shipping, quoted on the discounted goods.
    let subtotal = state.subtotal;
    let mut lines = state.out;
    let goods_total: i64 = lines.iter().map(|line| line.net.amount).sum();
    let shipping_base = ctx
        .shipping
        .quote(&ShippingQuery {
            cart,
            goods_total: money(goods_total),
        })
        .map_err(PricingError::Shipping)?;
    if shipping_base.currency != currency || shipping_base.amount < 0 {
        return Err(PricingError::Shipping(ProviderError(format!(
            "quoted {shipping_base:?}; expected a non-negative amount in {currency}"
        ))));
    }
    let shipping_discount = match free_shipping {
        Some((_, index, cap)) => {
            let discount = shipping_base.amount.min(cap.unwrap_or(i64::MAX)).max(0);
            if let Some(entry) = by_rule.get_mut(index) {
                entry.amount = money(discount);
            }
            discount
        }
        None => 0,
    };
    let shipping_amount = shipping_base.amount - shipping_discount;

    // Tax, on the discounted lines and the shipping charged.
    let assessment = ctx
        .tax
        .assess(&TaxQuery {
            cart,
            lines: &lines,
            shipping: money(shipping_amount),
        })
        .map_err(PricingError::Tax)?;
    let tax_amount = check_assessment(&assessment, &lines, currency)?;
    for (line, tax) in lines.iter_mut().zip(&assessment.lines) {
        line.tax = *tax;
    }

    let overflow = || PricingError::Overflow("total".to_owned());
    let mut total = goods_total
        .checked_add(shipping_amount)
        .ok_or_else(overflow)?;
    if !assessment.inclusive {
        total = total.checked_add(tax_amount).ok_or_else(overflow)?;
    }

    Ok(Breakdown {
        calculator_version: version,
        ruleset_revision: rules.revision(),
        currency,
        lines,
        subtotal: money(subtotal),
        discount_total: money(subtotal - goods_total),
        shipping: ShippingBreakdown {
            base: shipping_base,
            discount: money(shipping_discount),
            amount: money(shipping_amount),
            rule_id: free_shipping.map(|(id, _, _)| id.clone()),
        },
        tax: TaxBreakdown {
            inclusive: assessment.inclusive,
            amount: money(tax_amount),
            shipping: assessment.shipping,
            rates: assessment.rates,
        },
        total: money(total),
        applied,
        discounts: by_rule,
        not_applied,
    })
}

fn limit_reached(
    rule: &Rule,
    usage: &RuleUsage,
    budget_left: Option<i64>,
) -> Option<NotAppliedReason> {
    match usage.exhausted.get(&rule.id) {
        Some(LimitKind::Budget) => Some(NotAppliedReason::BudgetExhausted),
        Some(&limit) => Some(NotAppliedReason::UsageLimitReached { limit }),
        None if budget_left.is_some_and(|left| left <= 0) => {
            Some(NotAppliedReason::BudgetExhausted)
        }
        None => None,
    }
}

/// A tax provider's answer must add up before it goes into a breakdown.
fn check_assessment(
    assessment: &TaxAssessment,
    lines: &[LineBreakdown],
    currency: Currency,
) -> Result<i64, PricingError> {
    let refuse = |what: &str| Err(PricingError::Tax(ProviderError(what.to_owned())));
    if assessment.lines.len() != lines.len() {
        return refuse("returned a tax per line for a different number of lines");
    }
    let amounts = assessment.lines.iter().chain([&assessment.shipping]).chain(
        assessment
            .rates
            .iter()
            .flat_map(|r| [&r.taxable, &r.amount]),
    );
    for amount in amounts {
        if amount.currency != currency || amount.amount < 0 {
            return refuse("returned an amount that is negative or in another currency");
        }
    }
    if assessment.inclusive
        && assessment
            .lines
            .iter()
            .zip(lines)
            .any(|(tax, line)| tax.amount > line.net.amount)
    {
        return refuse("with inclusive prices, a line's tax exceeds the line");
    }
    let assessed: i128 = assessment
        .lines
        .iter()
        .chain([&assessment.shipping])
        .map(|m| i128::from(m.amount))
        .sum();
    let by_rate: i128 = assessment
        .rates
        .iter()
        .map(|r| i128::from(r.amount.amount))
        .sum();
    if assessed != by_rate {
        return refuse("line and shipping taxes do not add up to the per-rate taxes");
    }
    i64::try_from(assessed).map_err(|_| PricingError::Overflow("tax".to_owned()))
}

/// The lines as the rules work through them.
struct State<'c> {
    cart: &'c Cart,
    lines: &'c [Line],
    rounding: Rounding,
    version: CalculatorVersion,
    subtotal: i64,
    units: u64,
    /// The breakdown lines being built: `net` is what is left of each line after the
    /// rules so far (never below zero); `tax` is filled in last.
    out: Vec<LineBreakdown>,
    /// The current rule's discount per line.
    proposal: Vec<i64>,
    order: Vec<usize>,
}

impl<'c> State<'c> {
    fn new(cart: &'c Cart, version: CalculatorVersion) -> Result<Self, PricingError> {
        let lines = cart.lines.as_slice();
        if lines.is_empty() {
            return Err(PricingError::InvalidCart {
                field: "lines".to_owned(),
                message: "must have at least one line".to_owned(),
            });
        }
        let currency = cart.currency;
        let mut out = Vec::with_capacity(lines.len());
        let mut subtotal: i64 = 0;
        let mut units: u64 = 0;
        for (index, line) in lines.iter().enumerate() {
            let invalid = |field: &str, message: &str| PricingError::InvalidCart {
                field: format!("lines[{index}].{field}"),
                message: message.to_owned(),
            };
            if line.quantity == 0 {
                return Err(invalid("quantity", "must be at least 1"));
            }
            if line.unit_price < 0 {
                return Err(invalid("unit_price", "must not be negative"));
            }
            let base = line
                .unit_price
                .checked_mul(i64::from(line.quantity))
                .ok_or_else(|| PricingError::Overflow(format!("lines[{index}]")))?;
            subtotal = subtotal
                .checked_add(base)
                .ok_or_else(|| PricingError::Overflow("subtotal".to_owned()))?;
            units += u64::from(line.quantity);
            out.push(LineBreakdown {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price: Money::new(line.unit_price, currency),
                base: Money::new(base, currency),
                discounts: Vec::new(),
                net: Money::new(base, currency),
                tax: Money::zero(currency),
            });
        }
        Ok(State {
            cart,
            lines,
            rounding: version.percent_rounding(),
            version,
            subtotal,
            units,
            out,
            proposal: vec![0; lines.len()],
            order: Vec::new(),
        })
    }

    /// What is left of line `index`.
    fn remaining(&self, index: usize) -> i64 {
        self.out[index].net.amount
    }

    /// The first condition (in DSL order) that does not hold, on the cart as submitted.
    fn unmet_condition(&self, when: &Conditions) -> Option<Condition> {
        let cart = self.cart;
        let customer = cart.customer.as_ref();
        let unmet = |condition: Condition, holds: bool| (!holds).then_some(condition);
        let units_of = |skus: &SkuSet| -> u64 {
            cart.lines
                .iter()
                .filter(|line| skus.contains(&line.sku))
                .map(|line| u64::from(line.quantity))
                .sum()
        };
        when.promo_code
            .as_deref()
            .and_then(|code| {
                let typed = cart.promo_code.as_deref().map(str::trim);
                unmet(
                    Condition::PromoCode,
                    typed.is_some_and(|typed| typed.eq_ignore_ascii_case(code)),
                )
            })
            .or_else(|| {
                let min = when.min_subtotal?;
                unmet(Condition::MinSubtotal, self.subtotal >= min.amount)
            })
            .or_else(|| {
                let skus = when.sku_in.as_ref()?;
                let any = cart.lines.iter().any(|line| skus.contains(&line.sku));
                unmet(Condition::SkuIn, any)
            })
            .or_else(|| {
                let min = when.min_quantity?;
                let units = when.sku_in.as_ref().map_or(self.units, units_of);
                unmet(Condition::MinQuantity, units >= u64::from(min))
            })
            .or_else(|| {
                let emails = when.customer_email_in.as_ref()?;
                let listed = customer.is_some_and(|c| {
                    let email = c.email.trim();
                    emails.iter().any(|e| e.eq_ignore_ascii_case(email))
                });
                unmet(Condition::CustomerEmailIn, listed)
            })
            .or_else(|| {
                let first = when.first_order?;
                unmet(
                    Condition::FirstOrder,
                    customer.is_some_and(|c| c.first_order == first),
                )
            })
            .or_else(|| {
                let from = when.valid_from?;
                unmet(Condition::ValidFrom, cart.at >= from)
            })
            .or_else(|| {
                let until = when.valid_until?;
                unmet(Condition::ValidUntil, cart.at < until)
            })
    }

    /// Fills `proposal` with the rule's discount per line (each at most what is left
    /// of the line) and returns its sum, capped at `budget_left`.
    fn propose(&mut self, action: &Action, budget_left: Option<i64>) -> i64 {
        self.proposal.iter_mut().for_each(|p| *p = 0);
        let total = match action {
            Action::PercentOff {
                percent,
                target: None,
            } => self.order_percent(*percent, None),
            Action::PercentOff {
                percent,
                target: Some(target),
            } => self.line_percent(*percent, target),
            Action::AmountOff { amount, target } => {
                self.order_amount(amount.amount, target.as_ref())
            }
            Action::BuyXGetY(offer) => self.buy_x_get_y(offer),
            Action::Tiers { tiers, target } => match self.best_tier(tiers, target.as_ref()) {
                None => 0,
                Some(percent) => match target {
                    None => self.order_percent(percent, None),
                    Some(target) => self.line_percent(percent, target),
                },
            },
            Action::FreeShipping => 0,
        };
        match budget_left {
            Some(cap) if total > cap => {
                // Scale the shares down to the budget, in proportion, in whole units.
                let lines = self.lines;
                allocate(cap, &mut self.proposal, |a, b| content_order(lines, a, b));
                cap
            }
            _ => total,
        }
    }

    /// Takes `proposal` off the lines, recording it against `rule`. Returns `total`.
    fn apply(&mut self, rule: &RuleId, total: i64) -> i64 {
        for (line, &amount) in self.out.iter_mut().zip(self.proposal.iter()) {
            if amount > 0 {
                line.net.amount -= amount;
                line.discounts.push(AppliedDiscount {
                    rule_id: rule.clone(),
                    amount: Money::new(amount, line.net.currency),
                });
            }
        }
        total
    }

    fn targets(&self, target: Option<&Target>, index: usize) -> bool {
        target.is_none_or(|t| t.sku_in.contains(&self.lines[index].sku))
    }

    /// An order-level percentage: the percent of what is left of the targeted lines,
    /// rounded once, then allocated to them by largest remainder.
    fn order_percent(&mut self, percent: Percent, target: Option<&Target>) -> i64 {
        let left = self.weigh_targets(target);
        let base = if self.version.percent_of_subtotal() {
            (0..self.lines.len())
                .filter(|&i| self.targets(target, i))
                .map(|i| self.out[i].base.amount)
                .sum()
        } else {
            left
        };
        let discount = self.percent_of(base, percent).min(left);
        self.allocate_proposal(discount)
    }

    /// An order-level amount, capped at what is left of the targeted lines.
    fn order_amount(&mut self, amount: i64, target: Option<&Target>) -> i64 {
        let left = self.weigh_targets(target);
        self.allocate_proposal(amount.min(left))
    }

    /// Sets `proposal` to what is left of each targeted line (0 for the others) and
    /// returns the sum.
    fn weigh_targets(&mut self, target: Option<&Target>) -> i64 {
        let mut sum = 0;
        for i in 0..self.lines.len() {
            let weight = if self.targets(target, i) {
                self.remaining(i)
            } else {
                0
            };
            self.proposal[i] = weight;
            sum += weight;
        }
        sum
    }

    /// Replaces the weights in `proposal` by `amount` (≤ their sum) allocated over them.
    fn allocate_proposal(&mut self, amount: i64) -> i64 {
        let lines = self.lines;
        allocate(amount, &mut self.proposal, |a, b| {
            content_order(lines, a, b)
        });
        amount
    }

    /// An item-level percentage: each targeted line's own percent, rounded per line.
    fn line_percent(&mut self, percent: Percent, target: &Target) -> i64 {
        let mut total = 0;
        for i in 0..self.lines.len() {
            if self.targets(Some(target), i) {
                let discount = self.percent_of(self.remaining(i), percent);
                self.proposal[i] = discount;
                total += discount;
            }
        }
        total
    }

    fn percent_of(&self, amount: i64, percent: Percent) -> i64 {
        let scaled = self.rounding.div(
            i128::from(amount) * i128::from(percent.bps()),
            i128::from(Percent::FULL_BPS),
        );
        // percent ≤ 100 %, so the result is at most `amount`.
        i64::try_from(scaled).unwrap_or(amount)
    }

    /// For every `buy + get` qualifying units, `get` of the cheapest qualifying units
    /// (by what is left per unit) get the percentage. Only `sku_in` lines qualify.
    fn buy_x_get_y(&mut self, offer: &BuyXGetY) -> i64 {
        let lines = self.lines;
        self.order.clear();
        self.order
            .extend((0..lines.len()).filter(|&i| offer.sku_in.contains(&lines[i].sku)));
        let units: u64 = self
            .order
            .iter()
            .map(|&i| u64::from(lines[i].quantity))
            .sum();
        let set = u64::from(offer.buy) + u64::from(offer.get);
        let mut free = units / set * u64::from(offer.get);
        if free == 0 {
            return 0;
        }
        let out = &self.out;
        self.order.sort_unstable_by(|&a, &b| {
            // What is left per unit, a vs b, without division.
            let left = i128::from(out[a].net.amount) * i128::from(lines[b].quantity);
            let right = i128::from(out[b].net.amount) * i128::from(lines[a].quantity);
            left.cmp(&right).then_with(|| content_order(lines, a, b))
        });
        let mut total = 0;
        for &i in &self.order {
            if free == 0 {
                break;
            }
            let quantity = u64::from(lines[i].quantity);
            let taken = free.min(quantity);
            free -= taken;
            let remaining = self.out[i].net.amount;
            let numerator =
                i128::from(remaining) * i128::from(taken) * i128::from(offer.percent_off.bps());
            let denominator = i128::from(quantity) * i128::from(Percent::FULL_BPS);
            let discount = i64::try_from(self.rounding.div(numerator, denominator))
                .unwrap_or(remaining)
                .min(remaining);
            self.proposal[i] = discount;
            total += discount;
        }
        total
    }

    /// The largest percentage among the tiers the cart reaches (before discounts;
    /// over the target lines when there is a target).
    fn best_tier(&self, tiers: &[Tier], target: Option<&Target>) -> Option<Percent> {
        let (units, subtotal) = match target {
            None => (self.units, self.subtotal),
            Some(_) => (0..self.lines.len())
                .filter(|&i| self.targets(target, i))
                .fold((0u64, 0i64), |(units, subtotal), i| {
                    let base = self.out[i].base.amount;
                    (units + u64::from(self.lines[i].quantity), subtotal + base)
                }),
        };
        let reached = tiers
            .iter()
            .filter(|tier| match tier.threshold {
                Threshold::MinQuantity(min) => units >= u64::from(min),
                Threshold::MinSubtotal(min) => subtotal >= min.amount,
            })
            .map(|tier| tier.percent_off);
        if self.version.lowest_tier() {
            reached.min()
        } else {
            reached.max()
        }
    }
}
