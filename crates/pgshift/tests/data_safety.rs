//! Data safety (issue 11) on a user's table that is not Mercato's:
//! `people(id, full_name)` gains `first_name` and `last_name`, kept in sync by
//! a trigger from the plan's dual_write section, and loses `full_name` at
//! contract.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::{Error, Migrator, Phase, Plan, ReadSwitch};
use sqlx::PgPool;

const PLAN: &str = r#"
name = "people_split_name"
readers = ["people_app"]

[[expand]]
name = "name columns"
sql = "alter table people add column first_name text, add column last_name text"

[[dual_write]]
name = "split trigger"
sql = """
create function people_split_name() returns trigger language plpgsql as $$
begin
    -- Only a write of the old shape is copied: a write of the new shape alone
    -- (full_name untouched) passes through as it is.
    if (tg_op = 'INSERT' and new.full_name is not null)
       or (tg_op = 'UPDATE' and new.full_name is distinct from old.full_name) then
        new.first_name := split_part(new.full_name, ' ', 1);
        new.last_name := split_part(new.full_name, ' ', 2);
    end if;
    return new;
end $$;
create trigger people_split_name before insert or update on people
    for each row execute function people_split_name();
"""

[backfill]
source = "people"
key = "id"
batch_size = 200
max_batch_size = 1000
transform = """
update people set first_name = split_part(full_name, ' ', 1), last_name = split_part(full_name, ' ', 2)
where id > $1 and id <= $2 and first_name is null and full_name is not null
"""

[switch]
min_full_seconds = 1

[validate]
chunk_size = 500
source = "select count(*), md5(string_agg(id || ':' || split_part(full_name, ' ', 1) || ':' || split_part(full_name, ' ', 2), ',' order by id)) from people where id > $1 and id <= $2"
target = "select count(*), md5(string_agg(id || ':' || coalesce(first_name, '') || ':' || coalesce(last_name, ''), ',' order by id)) from people where id > $1 and id <= $2"

[[contract]]
name = "drop full_name"
sql = "alter table people drop column full_name"

[[abort]]
name = "drop name columns"
sql = "alter table people drop column if exists first_name, drop column if exists last_name"
"#;

const SEEDED: i64 = 2000;

async fn cluster(name: &str) -> (localpg::LocalPg, PgPool, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pgshift-safety-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let pool = PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(&format!(
        "create role people_app;
         create table people (id bigint primary key, full_name text);
         insert into people select g, 'Given' || g || ' Family' || g from generate_series(1, {SEEDED}) g;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    (pg, pool, dir)
}

fn plan() -> Plan {
    Plan::parse(PLAN).unwrap()
}

async fn scalar<T>(pool: &PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn has_column(pool: &PgPool, column: &str) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns where table_name = 'people' and column_name = $1)",
    )
    .bind(column)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Expand, backfill, a passing validation, reads at 100% long enough for contract.
async fn up_to_full_switch(migrator: &Migrator) {
    migrator.expand().await.unwrap();
    migrator.backfill().await.unwrap();
    migrator.validate().await.unwrap();
    migrator.switch(100).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = migrator.status().await.unwrap();
    assert!(status.validated && status.phase() == Phase::Validated);
}

/// A write of the new shape the trigger never saw: the shapes now differ on row 42.
async fn diverge_row_42(pool: &PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set local session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("update people set full_name = 'Changed Name' where id = 42")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

// ---- 1. A failed validation forgets the earlier pass; contract re-validates.

#[tokio::test]
async fn a_failed_validation_clears_validated_and_contract_then_keeps_the_old_columns() {
    let (_pg, pool, dir) = cluster("revalidate").await;
    let migrator = Migrator::open(pool.clone(), plan()).await.unwrap();
    up_to_full_switch(&migrator).await;
    diverge_row_42(&pool).await;

    let failed = migrator.validate().await.unwrap_err();
    assert!(matches!(failed, Error::Validation(_)), "{failed}");
    let status = migrator.status().await.unwrap();
    assert!(!status.validated, "a failed validation clears the pass");
    assert_eq!(status.phase(), Phase::Backfilled);

    let refused = migrator.contract().await.unwrap_err();
    assert!(refused.to_string().contains("validate first"), "{refused}");
    assert!(has_column(&pool, "full_name").await, "nothing was dropped");
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Backfilled);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn contract_revalidates_and_refuses_naming_the_differing_ranges() {
    let (_pg, pool, dir) = cluster("contract-revalidates").await;
    let migrator = Migrator::open(pool.clone(), plan()).await.unwrap();
    up_to_full_switch(&migrator).await;
    // The shapes diverge after the validation that passed.
    diverge_row_42(&pool).await;

    let refused = migrator.contract().await.unwrap_err();
    assert!(matches!(refused, Error::Validation(_)), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("(-9223372036854775808, 500]") && message.contains("contract"),
        "{message}"
    );
    assert!(has_column(&pool, "full_name").await, "nothing was dropped");
    let status = migrator.status().await.unwrap();
    assert!(!status.validated);
    assert_eq!(status.phase(), Phase::Backfilled);

    // Repaired, validated again: contract goes ahead.
    sqlx::query("update people set full_name = 'Given42 Family42' where id = 42")
        .execute(&pool)
        .await
        .unwrap();
    migrator.validate().await.unwrap();
    migrator.contract().await.unwrap();
    assert!(!has_column(&pool, "full_name").await);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- 2. pgshift drops the dual-write trigger and function it created.

#[derive(Default)]
struct WriterLog {
    statements: u64,
    failed: Vec<String>,
    /// What each written row must hold at the end: (first_name, last_name).
    expected: HashMap<i64, (String, String)>,
    /// Rows inserted once the migration was contracted.
    after_contract: Vec<i64>,
}

/// A writer of plain SQL that follows only the phase: the old shape while it
/// exists (the trigger fills the new columns), the new shape once the
/// migration contracts. It counts failed statements instead of stopping.
async fn plain_writer(pool: PgPool, stop: Arc<AtomicBool>) -> WriterLog {
    let view = ReadSwitch::new(pool.clone(), "people_split_name", 0);
    let mut log = WriterLog::default();
    let mut next_id = 1_000_000_i64;
    let mut n = 0_i64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let phase = view.view().await.phase;
        let (first, last) = (format!("G{n}"), format!("F{n}"));
        let inserted = next_id;
        next_id += 1;
        let updated = 1 + (n * 7919) % SEEDED;
        let results = if phase.writes_old() {
            let full = format!("{first} {last}");
            let insert = sqlx::query("insert into people (id, full_name) values ($1, $2)")
                .bind(inserted)
                .bind(&full)
                .execute(&pool)
                .await;
            let update = sqlx::query("update people set full_name = $2 where id = $1")
                .bind(updated)
                .bind(&full)
                .execute(&pool)
                .await;
            [insert, update]
        } else {
            let insert =
                sqlx::query("insert into people (id, first_name, last_name) values ($1, $2, $3)")
                    .bind(inserted)
                    .bind(&first)
                    .bind(&last)
                    .execute(&pool)
                    .await;
            let update =
                sqlx::query("update people set first_name = $2, last_name = $3 where id = $1")
                    .bind(updated)
                    .bind(&first)
                    .bind(&last)
                    .execute(&pool)
                    .await;
            [insert, update]
        };
        for (id, result) in [inserted, updated].into_iter().zip(results) {
            log.statements += 1;
            match result {
                Ok(_) => {
                    log.expected.insert(id, (first.clone(), last.clone()));
                }
                Err(err) => log.failed.push(format!("{phase}: {err}")),
            }
        }
        if phase == Phase::Contracted {
            log.after_contract.push(inserted);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    log
}

async fn check_rows(pool: &PgPool, log: &WriterLog) {
    let rows: Vec<(i64, Option<String>, Option<String>)> =
        sqlx::query_as("select id, first_name, last_name from people")
            .fetch_all(pool)
            .await
            .unwrap();
    let rows: HashMap<i64, (Option<String>, Option<String>)> =
        rows.into_iter().map(|(id, f, l)| (id, (f, l))).collect();
    for (id, (first, last)) in &log.expected {
        assert_eq!(
            rows.get(id),
            Some(&(Some(first.clone()), Some(last.clone()))),
            "row {id}"
        );
    }
    for id in 1..=SEEDED {
        if !log.expected.contains_key(&id) {
            let want = (Some(format!("Given{id}")), Some(format!("Family{id}")));
            assert_eq!(rows.get(&id), Some(&want), "seeded row {id}");
        }
    }
}

async fn owned_objects_left(pool: &PgPool) -> (i64, i64) {
    let triggers = scalar(
        pool,
        "select count(*) from pg_trigger where tgname = 'people_split_name'",
    )
    .await;
    let functions = scalar(
        pool,
        "select count(*) from pg_proc where proname = 'people_split_name'",
    )
    .await;
    (triggers, functions)
}

#[tokio::test]
async fn a_plain_sql_writer_never_fails_from_before_expand_to_after_contract() {
    let (_pg, pool, dir) = cluster("writer-contract").await;
    let migrator = Migrator::open(pool.clone(), plan()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(plain_writer(pool.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    up_to_full_switch(&migrator).await;
    migrator.contract().await.unwrap();
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Contracted);
    // Keep writing the new shape for a while after contract.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await.unwrap();

    assert!(
        log.failed.is_empty(),
        "{} of {} statements failed, first: {:?}",
        log.failed.len(),
        log.statements,
        log.failed.first()
    );
    assert!(
        log.after_contract.len() > 10,
        "the writer kept writing after contract: {}",
        log.after_contract.len()
    );
    assert!(!has_column(&pool, "full_name").await);
    check_rows(&pool, &log).await;
    assert_eq!(
        owned_objects_left(&pool).await,
        (0, 0),
        "trigger and function dropped"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn abort_drops_the_dual_write_trigger_with_the_new_columns() {
    let (_pg, pool, dir) = cluster("writer-abort").await;
    let migrator = Migrator::open(pool.clone(), plan()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(plain_writer(pool.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    migrator.expand().await.unwrap();
    migrator.backfill().await.unwrap();
    migrator.abort().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await.unwrap();

    assert!(
        log.failed.is_empty(),
        "{} of {} statements failed, first: {:?}",
        log.failed.len(),
        log.statements,
        log.failed.first()
    );
    assert!(!has_column(&pool, "first_name").await);
    assert_eq!(
        owned_objects_left(&pool).await,
        (0, 0),
        "trigger and function dropped"
    );
    // Expand runs again from scratch (CREATE FUNCTION without OR REPLACE).
    migrator.expand().await.unwrap();
    assert_eq!(owned_objects_left(&pool).await, (1, 1));
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- 3. Transaction control is refused; an expand step's effect is checked.

#[tokio::test]
async fn lint_refuses_transaction_control_in_a_step() {
    let (_pg, pool, dir) = cluster("txn-control").await;
    let text = PLAN.replace(
        r#"sql = "alter table people add column first_name text, add column last_name text""#,
        r#"sql = "BEGIN; alter table people add column first_name text, add column last_name text""#,
    );
    let migrator = Migrator::open(pool.clone(), Plan::parse(&text).unwrap())
        .await
        .unwrap();
    let findings = migrator.lint().await.unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "transaction-control" && f.step == r#"expand[0] "name columns""#),
        "{findings:?}"
    );
    let refused = migrator.expand().await.unwrap_err();
    assert!(matches!(refused, Error::Lint(_)), "{refused}");
    assert!(!has_column(&pool, "first_name").await);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn expand_fails_when_a_step_did_not_create_what_it_names() {
    let (_pg, pool, dir) = cluster("effect").await;
    // Lint sees table `people` (live); the step names `archive.people`, which
    // does not exist, so IF EXISTS makes it a silent no-op.
    let text = PLAN.replace(
        r#"sql = "alter table people add column first_name text, add column last_name text""#,
        r#"sql = "alter table if exists archive.people add column first_name text, add column last_name text""#,
    );
    let migrator = Migrator::open(pool.clone(), Plan::parse(&text).unwrap())
        .await
        .unwrap();
    assert!(migrator.lint().await.unwrap().is_empty(), "lint passes it");
    let failed = migrator.expand().await.unwrap_err();
    let message = failed.to_string();
    assert!(
        message.contains(r#"expand[0] "name columns""#) && message.contains("first_name"),
        "{message}"
    );
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Planned);
    let recorded: i64 = scalar(&pool, "select count(*) from pgshift.expand_steps").await;
    assert_eq!(recorded, 0, "the step is not recorded as done");
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- 4. Lint runs nothing.

#[tokio::test]
async fn lint_writes_nothing_on_a_fresh_database() {
    let (_pg, pool, dir) = cluster("lint-readonly").await;
    let no_schema = "select to_regnamespace('pgshift') is null";

    let clean = Migrator::open(pool.clone(), plan()).await.unwrap();
    assert!(clean.lint().await.unwrap().is_empty());
    assert!(
        scalar::<bool>(&pool, no_schema).await,
        "clean lint created nothing"
    );

    let failing = PLAN.replace(
        r#"sql = "alter table people add column first_name text, add column last_name text""#,
        r#"sql = "create index people_by_name on people (full_name)""#,
    );
    let failing = Migrator::open(pool.clone(), Plan::parse(&failing).unwrap())
        .await
        .unwrap();
    let findings = failing.lint().await.unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "index-without-concurrently"),
        "{findings:?}"
    );
    assert!(
        scalar::<bool>(&pool, no_schema).await,
        "failing lint created nothing"
    );

    // Status reads an absent state as planned, and creates nothing either.
    let status = clean.status().await.unwrap();
    assert_eq!((status.phase(), status.validated), (Phase::Planned, false));
    assert!(scalar::<bool>(&pool, no_schema).await);
    // Nor does a command refused as out of order.
    assert!(clean.switch(10).await.is_err());
    assert!(scalar::<bool>(&pool, no_schema).await);

    // The first phase that needs state creates it, with the readers' grants.
    clean.expand().await.unwrap();
    assert!(
        scalar::<bool>(
            &pool,
            "select has_table_privilege('people_app', 'pgshift.migrations', 'select')"
        )
        .await
    );
    assert_eq!(clean.status().await.unwrap().phase(), Phase::Expanded);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}
