//! `mercato bench migrate`: backfill throughput under live load against one
//! plain `INSERT … SELECT` of the same data with no load, in the same run, the
//! live load's p99 before, during and just after each phase, the row versions
//! each copy wrote and the tables' sizes. Two migrations: Mercato's legacy
//! orders (a bigint key) and a table keyed `(merchant_id uuid, id uuid)` like
//! Mercato's own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgshift::{Migrator, Plan};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::load::{seed_legacy_orders, Load, PhaseLoad};
use super::{interruptible, Harness};
use crate::legacy_orders;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rows of each table to migrate.
    #[arg(long, default_value_t = 5_000_000)]
    pub rows: i64,
    /// Requests per second of the live load.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-migrate.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub database: crate::config::DatabaseUrlArg,
}

/// The composite-key table: (merchant_id uuid, id uuid), a numeric price that
/// becomes integer cents in `bench_items_v2`, kept in sync by a trigger.
const ITEMS_SETUP: &str = "
drop table if exists bench_items_v2;
drop table if exists bench_items;
create table bench_items (
    merchant_id uuid not null,
    id uuid not null,
    name text not null,
    price numeric(12, 2) not null,
    primary key (merchant_id, id)
);";

const ITEMS_PLAN: &str = r#"
name = "bench_items_cents"

[[expand]]
name = "bench_items_v2"
sql = """
create table bench_items_v2 (
    merchant_id uuid not null,
    id uuid not null,
    name text not null,
    price_cents bigint not null,
    primary key (merchant_id, id)
)"""

[[dual_write]]
name = "sync trigger"
sql = """
create function bench_items_sync() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        delete from bench_items_v2 where merchant_id = old.merchant_id and id = old.id;
        return old;
    end if;
    insert into bench_items_v2 (merchant_id, id, name, price_cents)
    values (new.merchant_id, new.id, new.name, round(new.price * 100)::bigint)
    on conflict (merchant_id, id) do update set name = excluded.name, price_cents = excluded.price_cents;
    return new;
end $$;
create trigger bench_items_sync after insert or update or delete on bench_items
    for each row execute function bench_items_sync();
"""

[backfill]
source = "bench_items"
key = ["merchant_id", "id"]
batch_size = 2000
max_batch_size = 20000
transform = """
insert into bench_items_v2 (merchant_id, id, name, price_cents)
select i.merchant_id, i.id, i.name, round(i.price * 100)::bigint
from bench_items i where {{key_range i}}
for key share
on conflict (merchant_id, id) do nothing
"""

[validate]
chunk_size = 20000
source = """
select count(*), md5(string_agg(id::text || round(price * 100)::bigint, ',' order by merchant_id, id))
from bench_items where {{key_range}}
"""
target = """
select count(*), md5(string_agg(id::text || price_cents, ',' order by merchant_id, id))
from bench_items_v2 where {{key_range}}
"""

[[contract]]
name = "drop old table"
sql = "drop table bench_items"

[[abort]]
name = "drop new table"
sql = "drop table if exists bench_items_v2"
"#;

/// One migration measured: its plan, the tables its copy writes, and how to
/// run its copy as one plain statement.
struct Scenario {
    label: &'static str,
    plan: Plan,
    targets: &'static [&'static str],
}

impl Scenario {
    /// The backfill's statements over the whole key space.
    fn plain_statements(&self) -> Vec<(String, bool)> {
        self.plan
            .backfill
            .transform
            .iter()
            .map(|s| {
                let bound = s.contains("$1");
                let whole = s
                    .replace("{{key_range i}}", "true")
                    .replace("{{key_range}}", "true");
                (whole, bound)
            })
            .collect()
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let harness =
        Harness::start(opts.database.database_url.clone(), |c| c.shadow_percent = 0).await?;
    let outcome = interruptible(measure(&opts, &harness)).await;
    harness.shutdown().await;
    outcome
}

/// Row versions written to `tables` so far (inserts, updates, deletes), as the
/// statistics have them once every backend has reported (about a second).
async fn row_versions(owner: &PgPool, tables: &[&str]) -> anyhow::Result<i64> {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let names: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    Ok(sqlx::query_scalar::<_, i64>(
        "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
         from pg_stat_user_tables where relname = any($1)",
    )
    .bind(&names)
    .fetch_one(owner)
    .await?)
}

async fn bytes(owner: &PgPool, tables: &[&str]) -> anyhow::Result<i64> {
    let names: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    Ok(sqlx::query_scalar::<_, i64>(
        "select coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
         from pg_class c where c.relname = any($1) and c.relkind = 'r'",
    )
    .bind(&names)
    .fetch_one(owner)
    .await?)
}

/// The plain copy with nothing else running: time, row versions, size. The
/// targets are emptied afterwards for the backfill.
async fn plain_copy(owner: &PgPool, s: &Scenario, rows: i64) -> anyhow::Result<Value> {
    println!("{}: plain INSERT … SELECT of {rows} rows, no load", s.label);
    let versions_before = row_versions(owner, s.targets).await?;
    let started = Instant::now();
    let mut tx = owner.begin().await?;
    for (statement, bound) in s.plain_statements() {
        let query = sqlx::query(&statement);
        let query = if bound {
            query.bind(i64::MIN).bind(i64::MAX)
        } else {
            query
        };
        query.execute(&mut *tx).await.context("plain copy")?;
    }
    tx.commit().await?;
    let seconds = started.elapsed().as_secs_f64();
    let size = bytes(owner, s.targets).await?;
    let versions = row_versions(owner, s.targets).await? - versions_before;
    let truncate = format!("truncate {}", s.targets.join(", "));
    sqlx::query(&truncate).execute(owner).await?;
    Ok(json!({
        "seconds": seconds, "rows_per_second": rows as f64 / seconds.max(1e-9),
        "row_versions": versions, "target_bytes": size,
    }))
}

async fn measure(opts: &Options, h: &Harness) -> anyhow::Result<()> {
    println!("seeding {} legacy orders", opts.rows);
    let known_ids = seed_legacy_orders(&h.owner, h.merchant, opts.rows, true).await?;
    println!(
        "seeding {} items keyed (merchant_id uuid, id uuid)",
        opts.rows
    );
    sqlx::raw_sql(ITEMS_SETUP).execute(&h.owner).await?;
    sqlx::query(
        "insert into bench_items (merchant_id, id, name, price)
         select m.id, gen_random_uuid(), 'item ' || g, (g % 100000) / 100.0
         from (select gen_random_uuid() as id from generate_series(1, 20)) m,
              generate_series(1, ($1::bigint + 19) / 20) g",
    )
    .bind(opts.rows)
    .execute(&h.owner)
    .await?;
    sqlx::query("analyze bench_items").execute(&h.owner).await?;

    let scenarios = [
        Scenario {
            label: "legacy_orders (bigint key)",
            plan: Plan::parse(legacy_orders::PLAN)?,
            targets: &["order_records", "legacy_customers"],
        },
        Scenario {
            label: "bench_items (merchant_id uuid, id uuid)",
            plan: Plan::parse(ITEMS_PLAN)?,
            targets: &["bench_items_v2"],
        },
    ];
    let mut migrators = Vec::new();
    let mut plains = Vec::new();
    for s in &scenarios {
        let mut migrator = Migrator::open(h.owner.clone(), s.plan.clone()).await?;
        migrator.progress = true;
        migrator.expand().await?;
        plains.push(plain_copy(&h.owner, s, opts.rows).await?);
        migrators.push(migrator);
    }
    sqlx::query("vacuum analyze legacy_orders, bench_items")
        .execute(&h.owner)
        .await?;

    let load = Load::start(&h.base, &h.key, known_ids, opts.rate, 8);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut runs = Vec::new();
    for (i, (s, migrator)) in scenarios.iter().zip(&migrators).enumerate() {
        let versions_before = row_versions(&h.owner, s.targets).await?;
        load.phase(&format!("{i} backfill"));
        let report = migrator.backfill().await?;
        // The seconds right after a large backfill: where a stall would show.
        load.phase(&format!("{i} after backfill"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        load.phase(&format!("{i} validate"));
        let started = Instant::now();
        let validation = migrator.validate().await?;
        let validate_seconds = started.elapsed().as_secs_f64();
        load.phase("between");
        let versions = row_versions(&h.owner, s.targets).await? - versions_before;
        let size = bytes(&h.owner, s.targets).await?;
        runs.push((report, validation, validate_seconds, versions, size));
    }
    let by_phase = load.stop().await;
    for migrator in &migrators {
        migrator.abort().await?;
    }
    sqlx::raw_sql("drop table if exists bench_items")
        .execute(&h.owner)
        .await?;

    let p99 = |phase: &str| by_phase.get(phase).map(|p| p.latency.p99_ms).unwrap_or(0.0);
    let failed: usize = by_phase.values().map(|p: &PhaseLoad| p.failed).sum();
    let before = p99("before");
    let mut results = Vec::new();
    for (i, (s, ((report, validation, validate_seconds, versions, size), plain))) in
        scenarios.iter().zip(runs.iter().zip(&plains)).enumerate()
    {
        let rate = report.rows as f64 / report.seconds.max(1e-9);
        let plain_rate = plain["rows_per_second"].as_f64().unwrap_or(1.0);
        let during = p99(&format!("{i} backfill"));
        let after = p99(&format!("{i} after backfill"));
        let validating = p99(&format!("{i} validate"));
        println!(
            "{}: plain copy {plain_rate:.0} rows/s; backfill under load {rate:.0} rows/s ({:.2}x, target >= 0.5), \
             then vacuum {:.1} s; {} row versions written (plain: {}), {} MB (plain: {} MB); validation {:.1} s \
             ({:.0} rows/s); live p99 before {before:.1} ms, during backfill {during:.1} ms ({:.2}x, target <= 1.2), \
             just after {after:.1} ms, during validation {validating:.1} ms",
            s.label,
            rate / plain_rate,
            report.vacuum_seconds,
            versions,
            plain["row_versions"],
            size / 1_000_000,
            plain["target_bytes"].as_i64().unwrap_or(0) / 1_000_000,
            validate_seconds,
            validation.rows as f64 / validate_seconds.max(1e-9),
            during / before.max(1e-9),
        );
        results.push(json!({
            "migration": s.label,
            "plain_copy": plain,
            "backfill_under_load": {
                "seconds": report.seconds, "rows": report.rows, "rows_per_second": rate,
                "batches": report.batches, "throttled": report.throttled,
                "vacuum_seconds": report.vacuum_seconds, "vacuumed": report.vacuumed,
                "row_versions": versions, "target_bytes": size,
            },
            "backfill_to_plain_ratio": rate / plain_rate,
            "validation": {
                "seconds": validate_seconds, "rows": validation.rows, "ranges": validation.ranges,
                "rows_per_second": validation.rows as f64 / validate_seconds.max(1e-9),
                "throttled": validation.throttled,
            },
            "p99_ms_during_backfill": during,
            "p99_during_to_before_ratio": during / before.max(1e-9),
            "p99_ms_just_after_backfill": after,
            "p99_ms_during_validation": validating,
        }));
    }
    println!("failed requests: {failed}");
    let summary = json!({
        "benchmark": "migrate",
        "rows": opts.rows,
        "load_rate_per_second": opts.rate,
        "p99_ms_before": before,
        "failed_requests": failed,
        "migrations": results,
        "load": by_phase,
    });
    std::fs::write(&opts.out, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    println!("figures written to {}", opts.out.display());
    Ok(())
}
