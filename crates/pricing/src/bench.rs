//! A realistic, deterministic workload for benchmarks: `mercato bench pricing` and
//! `examples/bench.rs` loop [`price`](crate::price) over it.
//!
//! Carts of 10 lines from a 40-SKU catalog; 8 rules of every kind (item and order
//! percentages, amount off, buy-X-get-Y, tiers, free shipping, a group, an exclusive
//! rule, a time window, customer conditions, a budget); German VAT, prices inclusive;
//! free shipping over a threshold. About a third of the carts use the promo code.

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::cart::{Cart, Customer, Line};
use crate::engine::{Context, RuleUsage};
use crate::ids::RuleId;
use crate::money::{Currency, Money};
use crate::providers::{FreeOverThreshold, RateTable};
use crate::rules::{RuleError, RuleSet};

/// Lines per benchmark cart.
pub const LINES_PER_CART: usize = 10;

/// The benchmark's rule set (8 rules), in EUR.
pub const RULES_JSON: &str = r#"{"rules": [
  {"id": "summer10", "priority": 10, "stackable": false,
   "when": {"promo_code": "SUMMER10", "min_subtotal": {"amount": 5000, "currency": "EUR"}},
   "then": {"percent_off": 10}},
  {"id": "shoes-15", "priority": 20, "stackable": true, "group": "category",
   "when": {"sku_in": ["SHOE-01", "SHOE-02", "SHOE-03", "SHOE-04", "SHOE-05"]},
   "then": {"percent_off": 15, "target": {"sku_in": ["SHOE-01", "SHOE-02", "SHOE-03", "SHOE-04", "SHOE-05"]}}},
  {"id": "vip-20", "priority": 25, "stackable": true, "group": "category",
   "when": {"customer_email_in": ["vip1@example.com", "vip2@example.com", "vip3@example.com"]},
   "then": {"percent_off": 20}},
  {"id": "socks-3for2", "priority": 30, "stackable": true,
   "when": {"sku_in": ["SOCK-01", "SOCK-02", "SOCK-03", "SOCK-04", "SOCK-05"]},
   "then": {"buy_x_get_y": {"buy": 2, "get": 1, "sku_in": ["SOCK-01", "SOCK-02", "SOCK-03", "SOCK-04", "SOCK-05"], "percent_off": 100}}},
  {"id": "volume", "priority": 5, "stackable": true,
   "then": {"tiers": [{"min_quantity": 20, "percent_off": 5}, {"min_quantity": 30, "percent_off": 7.5}]}},
  {"id": "welcome5", "priority": 8, "stackable": true,
   "when": {"first_order": true},
   "then": {"amount_off": {"amount": 500, "currency": "EUR"}},
   "limits": {"uses_per_customer": 1}},
  {"id": "free-shipping-vip", "priority": 50, "stackable": true,
   "when": {"customer_email_in": ["vip1@example.com", "vip2@example.com", "vip3@example.com"]},
   "then": {"free_shipping": true}},
  {"id": "flash-sale", "priority": 1, "stackable": true,
   "when": {"min_subtotal": {"amount": 20000, "currency": "EUR"},
            "valid_from": "2026-11-27T00:00:00Z", "valid_until": "2026-11-30T00:00:00Z"},
   "then": {"amount_off": {"amount": 1000, "currency": "EUR"}},
   "limits": {"budget": {"amount": 10000000, "currency": "EUR"}}}
]}"#;

/// Everything a benchmark loop needs; [`Workload::context`] borrows the providers.
pub struct Workload {
    pub carts: Vec<Cart>,
    pub rules: RuleSet,
    pub tax: RateTable,
    pub shipping: FreeOverThreshold,
    pub usage: RuleUsage,
}

impl Workload {
    pub fn context(&self) -> Context<'_> {
        Context::new(&self.tax, &self.shipping).with_usage(&self.usage)
    }
}

/// `carts` deterministic pseudo-random carts and the benchmark rules.
pub fn workload(carts: usize) -> Result<Workload, Vec<RuleError>> {
    let rules = RuleSet::parse(RULES_JSON, Currency::EUR)?.with_revision(1);
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    let catalog = catalog(&mut random);
    // Black Friday weekend: the flash sale's window is open for some carts.
    let start: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 11, 26, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let carts = (0..carts)
        .map(|_| {
            let lines = (0..LINES_PER_CART)
                .map(|_| {
                    let (sku, price) = &catalog[random.below(catalog.len() as u64) as usize];
                    Line::new(sku.as_str(), 1 + random.below(4) as u32, *price)
                })
                .collect();
            let customer = match random.below(10) {
                0 => None,
                n => Some(Customer {
                    email: if n == 1 {
                        format!("vip{}@example.com", 1 + random.below(3))
                    } else {
                        format!("buyer{}@example.com", random.below(100_000))
                    },
                    first_order: random.below(5) == 0,
                }),
            };
            Cart {
                currency: Currency::EUR,
                lines,
                customer,
                promo_code: (random.below(3) == 0).then(|| "summer10".to_owned()),
                country: Some(if random.below(4) == 0 { "FR" } else { "DE" }.to_owned()),
                at: start + Duration::minutes(random.below(4 * 24 * 60) as i64),
            }
        })
        .collect();
    let mut tax = RateTable::single(1_900, true);
    tax.rates.insert("DE".to_owned(), 1_900);
    tax.rates.insert("FR".to_owned(), 2_000);
    tax.shipping_taxable = true;
    let mut usage = RuleUsage::default();
    usage
        .budget_left
        .insert(RuleId::from("flash-sale"), 4_000_000);
    Ok(Workload {
        carts,
        rules,
        tax,
        shipping: FreeOverThreshold {
            amount: Money::new(495, Currency::EUR),
            threshold: Money::new(10_000, Currency::EUR),
        },
        usage,
    })
}

fn catalog(random: &mut XorShift) -> Vec<(String, i64)> {
    let families = [
        ("SHOE", 4_999, 12_999),
        ("SOCK", 299, 1_299),
        ("SHIRT", 1_499, 4_999),
        ("CAP", 999, 2_999),
        ("BAG", 2_999, 9_999),
        ("BELT", 1_999, 3_999),
        ("SCARF", 1_299, 3_499),
        ("GLOVE", 999, 2_499),
    ];
    families
        .iter()
        .flat_map(|&(family, low, high)| {
            (1..=5).map(move |n| (format!("{family}-{n:02}"), low, high))
        })
        .map(|(sku, low, high)| {
            let price = low + random.below((high - low) as u64) as i64;
            (sku, price)
        })
        .collect()
}

/// A tiny deterministic generator, so the workload is the same on every run.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}
