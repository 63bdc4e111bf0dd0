//! `mercato demo incident`: the pricing incident of brief §3, reproduced. A
//! merchant with many confirmed orders over some weeks (promo codes, annual
//! plans, combined and volume discounts), of which those placed in a window were
//! priced by the withdrawn calculator `v3` (stacked percentages taken of the
//! subtotal: underpaid; the lowest volume tier: overpaid), the rest by `v2`;
//! paid with a mix of methods (valid with a mandate, expired, no mandate).
//! Prints the incident's facts, computed here from both calculators, so the
//! remediation pipeline's findings can be checked against the truth.
//!
//! Demo tooling: it writes historical orders in bulk, straight into the
//! tables of checkout, inventory and payments (as an import would), not
//! through the checkout saga.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use pricing::{CalculatorVersion, Cart, Currency, Customer, Line, RuleSet, RuleUsage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{create_product, Money, NewProduct, NewVariant, Sku};
use crate::db::{MerchantId, TenantTx};
use crate::pricing::{PricedOrder, Settings, Shipping};
use crate::tenancy::{create_merchant, Created, MerchantName, Slug};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Orders to seed, over --weeks weeks ending a day ago.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub orders: i64,
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i64).range(3..=520))]
    pub weeks: i64,
    /// Seed of the generator: the same seed, the same orders and facts.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print the facts as JSON only.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
    #[arg(long, env = "MERCATO_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// What really happened, to compare the pipeline's findings with.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Facts {
    pub merchant_id: Uuid,
    pub merchant_slug: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bad_version: String,
    pub fixed_version: String,
    /// All orders seeded.
    pub orders: i64,
    pub orders_in_window: i64,
    pub underpaid: i64,
    pub overpaid: i64,
    /// Σ (expected − charged) of the underpaid, minor units.
    pub underpaid_sum: i64,
    /// Σ (charged − expected) of the overpaid, minor units.
    pub overpaid_sum: i64,
    /// Mis-priced orders by payment method status: valid, expired, no_mandate.
    pub underpaid_by_method: std::collections::BTreeMap<String, i64>,
    pub currency: String,
}

const CATALOG: &[(&str, &str, i64)] = &[
    ("Annual plan", "PLAN-ANNUAL", 12_000),
    ("Monthly plan", "PLAN-MONTHLY", 1_500),
    ("T-shirt", "TEE", 2_500),
    ("Mug", "MUG", 1_200),
    ("Espresso beans 1 kg", "BEANS", 2_490),
    ("Socks", "SOCKS", 500),
];

/// The merchant's promotions: an annual-plan discount, a promo code, and
/// volume tiers. Combined, they are what `v3` got wrong.
fn rules_document() -> serde_json::Value {
    serde_json::json!({"rules": [
        {"id": "annual20", "priority": 20, "stackable": true,
         "when": {"sku_in": ["PLAN-ANNUAL"]},
         "then": {"percent_off": 20, "target": {"sku_in": ["PLAN-ANNUAL"]}}},
        {"id": "welcome10", "priority": 10, "stackable": true,
         "when": {"promo_code": "WELCOME10"}, "then": {"percent_off": 10}},
        {"id": "volume", "priority": 5, "stackable": true,
         "then": {"tiers": [{"min_quantity": 3, "percent_off": 5}, {"min_quantity": 6, "percent_off": 10}]}}
    ]})
}

fn settings() -> Settings {
    Settings {
        currency: Currency::EUR,
        calculator_version: CalculatorVersion::V2,
        tax: pricing::RateTable::single(1_900, true),
        shipping: Shipping::Flat {
            amount: pricing::Money::new(490, Currency::EUR),
        },
    }
}

/// A cart of one of the shapes customers buy: in the window, a quarter are an
/// annual plan with the promo code (v3 over-discounts), half are six or more
/// units (v3 gives the 5 % tier, not 10 %), the rest priced alike by both.
fn cart(rng: &mut StdRng, at: DateTime<Utc>, email: String) -> Cart {
    let price = |sku: &str| {
        CATALOG
            .iter()
            .find(|(_, s, _)| *s == sku)
            .map_or(0, |c| c.2)
    };
    let goods = ["TEE", "MUG", "BEANS", "SOCKS"];
    let roll: f64 = rng.random();
    let (lines, promo): (Vec<Line>, Option<&str>) = if roll < 0.24 {
        let mut lines = vec![Line::new("PLAN-ANNUAL", 1, price("PLAN-ANNUAL"))];
        if rng.random_bool(0.5) {
            let sku = goods[rng.random_range(0..goods.len())];
            lines.push(Line::new(sku, 1, price(sku)));
        }
        (lines, Some("WELCOME10"))
    } else if roll < 0.72 {
        // 6 to 9 units over two or three goods.
        let mut units = rng.random_range(6..=9u32);
        let kinds = rng.random_range(2..=3usize);
        let mut lines = Vec::new();
        for (i, sku) in goods.iter().take(kinds).enumerate() {
            let q = if i + 1 == kinds {
                units
            } else {
                rng.random_range(1..=units - (kinds - i - 1) as u32)
            };
            units -= q;
            lines.push(Line::new(*sku, q, price(sku)));
        }
        (lines, None)
    } else {
        let sku = goods[rng.random_range(0..goods.len())];
        match rng.random_range(0..3) {
            0 => (
                vec![Line::new(sku, rng.random_range(1..=2), price(sku))],
                Some("WELCOME10"),
            ),
            1 => (
                vec![Line::new(sku, rng.random_range(3..=5), price(sku))],
                None,
            ),
            _ => (
                vec![Line::new("PLAN-MONTHLY", 1, price("PLAN-MONTHLY"))],
                None,
            ),
        }
    };
    Cart {
        currency: Currency::EUR,
        lines,
        customer: Some(Customer {
            email,
            first_order: false,
        }),
        promo_code: promo.map(str::to_owned),
        country: Some("DE".into()),
        at,
    }
}

fn payment_method(rng: &mut StdRng) -> &'static str {
    let roll: f64 = rng.random();
    if roll < 0.7 {
        "pm_card_ok"
    } else if roll < 0.85 {
        "pm_card_expired"
    } else {
        "pm_card_no_mandate"
    }
}

/// Orders of one batch, as columns.
#[derive(Default)]
struct Batch {
    ids: Vec<Uuid>,
    reservations: Vec<Uuid>,
    payments: Vec<Uuid>,
    keys: Vec<String>,
    emails: Vec<String>,
    methods: Vec<String>,
    promos: Vec<Option<String>>,
    totals: Vec<i64>,
    versions: Vec<String>,
    pricing: Vec<String>,
    at: Vec<DateTime<Utc>>,
    item_orders: Vec<Uuid>,
    item_skus: Vec<String>,
    item_quantities: Vec<i64>,
    item_units: Vec<i64>,
}

pub async fn run(opts: Options) -> anyhow::Result<Facts> {
    let db = crate::db::command_database(opts.database.database_url.as_deref(), &opts.data_dir, 4)
        .await?;
    let facts = seed(&db.owner, &opts, !opts.json).await?;
    let text = serde_json::to_string_pretty(&facts)?;
    println!("{text}");
    if !opts.json {
        eprintln!(
            "next: mercato remediate open --merchant {} --from {} --to {} --bad-version {} --fixed-version {}",
            facts.merchant_slug,
            facts.from.to_rfc3339(),
            facts.to.to_rfc3339(),
            facts.bad_version,
            facts.fixed_version
        );
    }
    Ok(facts)
}

/// Seeds the incident's merchant and orders; returns the facts.
pub async fn seed(pool: &sqlx::PgPool, opts: &Options, progress: bool) -> anyhow::Result<Facts> {
    let end = Utc::now() - Duration::days(1);
    let start = end - Duration::weeks(opts.weeks);
    let (from, to) = (end - Duration::days(21), end - Duration::days(14));
    let slug_text = format!("incident-{}", Utc::now().format("%Y%m%d%H%M%S%3f"));
    let slug = Slug::parse(&slug_text).map_err(|e| anyhow::anyhow!("slug: {e}"))?;
    let name = MerchantName::parse("Incident Demo Shop").map_err(|e| anyhow::anyhow!("{e}"))?;
    let Created::New { id: merchant, .. } = create_merchant(pool, &name, &slug, None, None).await?
    else {
        anyhow::bail!("the demo merchant existed already");
    };
    let rules = prepare_merchant(pool, merchant).await?;
    let revision = i64::try_from(rules.revision()).unwrap_or(i64::MAX);
    let settings = settings();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let span = (end - start).num_milliseconds().max(1);
    let mut facts = Facts {
        merchant_id: merchant.0,
        merchant_slug: slug_text,
        from,
        to,
        bad_version: CalculatorVersion::V3.as_str().into(),
        fixed_version: CalculatorVersion::V2.as_str().into(),
        orders: opts.orders,
        orders_in_window: 0,
        underpaid: 0,
        overpaid: 0,
        underpaid_sum: 0,
        overpaid_sum: 0,
        underpaid_by_method: Default::default(),
        currency: "EUR".into(),
    };
    let bar = if progress {
        ProgressBar::new(u64::try_from(opts.orders).unwrap_or(0))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("seed [{bar:30}] {pos}/{len} orders {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // Times in order, so orders are written as they would have been placed.
    let mut times: Vec<i64> = (0..opts.orders)
        .map(|_| rng.random_range(0..span))
        .collect();
    times.sort_unstable();
    for chunk in times.chunks(2_000) {
        let mut batch = Batch::default();
        for &offset in chunk {
            let at = start + Duration::milliseconds(offset);
            let email = format!("customer{}@example.com", rng.random_range(0..25_000));
            let cart = cart(&mut rng, at, email.clone());
            let in_window = at >= from && at < to;
            let version = if in_window {
                CalculatorVersion::V3
            } else {
                CalculatorVersion::V2
            };
            let method = payment_method(&mut rng);
            let charged = PricedOrder::price(
                cart.clone(),
                &rules,
                &settings,
                version,
                RuleUsage::default(),
            )
            .context("pricing a demo cart")?;
            if in_window {
                facts.orders_in_window += 1;
                let fixed = charged.reprice(&rules, CalculatorVersion::V2)?;
                let delta = fixed.total.amount - charged.breakdown.total.amount;
                if delta > 0 {
                    facts.underpaid += 1;
                    facts.underpaid_sum += delta;
                    let status = match method {
                        "pm_card_ok" => "valid",
                        "pm_card_expired" => "expired",
                        _ => "no_mandate",
                    };
                    *facts.underpaid_by_method.entry(status.into()).or_default() += 1;
                } else if delta < 0 {
                    facts.overpaid += 1;
                    facts.overpaid_sum -= delta;
                }
            }
            let id = Uuid::now_v7();
            for line in &cart.lines {
                batch.item_orders.push(id);
                batch.item_skus.push(line.sku.as_str().to_owned());
                batch.item_quantities.push(i64::from(line.quantity));
                batch.item_units.push(line.unit_price);
            }
            batch.ids.push(id);
            batch.reservations.push(Uuid::now_v7());
            batch.payments.push(Uuid::now_v7());
            batch.keys.push(format!("order_{}_payment", id.simple()));
            batch.emails.push(email);
            batch.methods.push(method.to_owned());
            batch.promos.push(cart.promo_code.clone());
            batch.totals.push(charged.breakdown.total.amount);
            batch.versions.push(version.as_str().to_owned());
            batch.pricing.push(serde_json::to_string(&charged)?);
            batch.at.push(at);
        }
        insert_batch(pool, merchant, revision, &batch).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    sqlx::query("analyze orders").execute(pool).await?;
    Ok(facts)
}

/// Products, pricing settings and rules (revision 1) of the demo merchant.
async fn prepare_merchant(pool: &sqlx::PgPool, merchant: MerchantId) -> anyhow::Result<RuleSet> {
    let mut tx = TenantTx::begin(pool, merchant).await?;
    for (name, sku, amount) in CATALOG {
        let product = NewProduct {
            name: (*name).to_owned(),
            description: None,
            variants: vec![NewVariant {
                sku: Sku::parse(sku).map_err(|e| anyhow::anyhow!("{e}"))?,
                price: Money {
                    amount: *amount,
                    currency: "EUR".into(),
                },
            }],
        };
        create_product(&mut tx, &product).await?;
    }
    let settings = settings();
    crate::pricing::put_settings(&mut tx, &settings).await?;
    let revision =
        crate::pricing::put_rules(&mut tx, &settings, &rules_document(), "demo", true).await?;
    tx.commit().await?;
    Ok(revision.rules)
}

async fn insert_batch(
    pool: &sqlx::PgPool,
    merchant: MerchantId,
    revision: i64,
    b: &Batch,
) -> anyhow::Result<()> {
    let mut tx = TenantTx::begin(pool, merchant).await?;
    let m = merchant.0;
    sqlx::query(
        "insert into reservations (merchant_id, id, status, expires_at, created_at, settled_at)
         select $1, r, 'consumed', t + interval '15 minutes', t, t from unnest($2::uuid[], $3::timestamptz[]) as x(r, t)",
    )
    .bind(m)
    .bind(&b.reservations)
    .bind(&b.at)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "insert into payments (merchant_id, id, idempotency_key, payment_method, amount, currency, status, created_at, updated_at)
         select $1, p, k, pm, a, 'EUR', 'captured', t, t
         from unnest($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[]) as x(p, k, pm, a, t)",
    )
    .bind(m)
    .bind(&b.payments)
    .bind(&b.keys)
    .bind(&b.methods)
    .bind(&b.totals)
    .bind(&b.at)
    .execute(tx.conn())
    .await?;
    // Each address's customer, as a checkout would have made it.
    sqlx::query(
        "insert into customers (merchant_id, id, email, email_key)
         select distinct on (lower(e)) $1, gen_random_uuid(), e, lower(e) from unnest($2::text[]) e
         on conflict (merchant_id, email_key) do nothing",
    )
    .bind(m)
    .bind(&b.emails)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "insert into orders (merchant_id, id, status, saga_step, customer_email, payment_method, promo_code,
                             reservation_id, payment_id, total_amount, currency, calculator_version,
                             ruleset_revision, pricing, created_at, updated_at, customer_id)
         select $1, o, 'confirmed', 'confirmed', e, pm, pc, r, p, a, 'EUR', v, $12, j::jsonb, t, t,
                (select c.id from customers c where c.merchant_id = $1 and c.email_key = lower(e))
         from unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::uuid[], $8::bigint[],
                     $9::text[], $10::text[], $11::timestamptz[]) as x(o, e, pm, pc, r, p, a, v, j, t)",
    )
    .bind(m)
    .bind(&b.ids)
    .bind(&b.emails)
    .bind(&b.methods)
    .bind(&b.promos)
    .bind(&b.reservations)
    .bind(&b.payments)
    .bind(&b.totals)
    .bind(&b.versions)
    .bind(&b.pricing)
    .bind(&b.at)
    .bind(revision)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "insert into order_items (merchant_id, order_id, sku, quantity, unit_amount)
         select $1, o, s, q, u from unnest($2::uuid[], $3::text[], $4::bigint[], $5::bigint[]) as x(o, s, q, u)",
    )
    .bind(m)
    .bind(&b.item_orders)
    .bind(&b.item_skus)
    .bind(&b.item_quantities)
    .bind(&b.item_units)
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(())
}
