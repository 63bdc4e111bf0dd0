//! The walk-through written declaratively (`examples/declarative.toml`: split
//! `full_name`, numeric price to cents, in place), run phase by phase with the
//! `pgshift` binary while two plain-SQL clients write: one on the old shape
//! (`search_path` = members_v1, from before expand until contract), one on the
//! new shape (members_v2, from expand until after contract). No statement may
//! fail, validation must match, and each side sees the other's writes. Then a
//! table with a composite UUID key, through the library, with an abort first.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::{Migrator, Phase, Plan};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

const README: &str = include_str!("../README.md");
const PLAN: &str = include_str!("../examples/declarative.toml");
const SETUP: &str = include_str!("../examples/walkthrough_setup.sql");
const PLAN_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/declarative.toml");

async fn pgshift(url: &str, args: &[&str]) -> Output {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // Off the runtime's thread: the writers share it (see walkthrough.rs).
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .arg(PLAN_PATH)
            .args(&args)
            .env("DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("pgshift runs")
    })
    .await
    .expect("pgshift's thread")
}

/// A pool of `role` whose sessions see `version`'s shape first.
async fn client(url: &str, role: &'static str, version: &'static str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(
                    format!("set role {role}; set search_path = {version}, public").as_str(),
                )
                .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .unwrap()
}

#[derive(Default, Debug)]
struct Log {
    statements: u64,
    failed: Vec<String>,
}

/// Inserts, updates and deletes on one shape until told to stop.
async fn writer(pool: PgPool, statements: [&'static str; 3], stop: Arc<AtomicBool>) -> Log {
    let mut log = Log::default();
    while !stop.load(Ordering::Relaxed) {
        for sql in statements {
            log.statements += 1;
            if let Err(e) = sqlx::query(sql).execute(&pool).await {
                log.failed.push(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log
}

const OLD_SHAPE: [&str; 3] = [
    "insert into members (full_name, price) values ('Old Writer', 4.20)",
    "update members set price = price + 1
     where id = (select id from members where full_name like 'Given%' and id > gen_random_uuid() order by id limit 1)",
    "delete from members
     where id = (select id from members where full_name like 'Given%' and id > gen_random_uuid() order by id limit 1)",
];

const NEW_SHAPE: [&str; 3] = [
    "insert into members (first_name, last_name, price_cents) values ('New', 'Writer', 420)",
    "update members set price_cents = price_cents + 100
     where id = (select id from members where first_name like 'Given%' and id > gen_random_uuid() order by id limit 1)",
    "delete from members
     where id = (select id from members where first_name like 'Given%' and id > gen_random_uuid() order by id limit 1)",
];

fn assert_ran(phase: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgshift {phase:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_no_failures(side: &str, log: &Log) {
    assert!(
        log.failed.is_empty(),
        "{side}: {} of {} statements failed, first: {:?}",
        log.failed.len(),
        log.statements,
        log.failed.first()
    );
    assert!(log.statements > 30, "{side} hardly wrote: {log:?}");
}

#[tokio::test]
async fn both_shapes_live_through_a_declarative_migration() {
    assert!(
        README.contains(PLAN.trim()),
        "README.md holds examples/declarative.toml verbatim"
    );
    let lines = PLAN
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    assert!(
        lines <= 29,
        "{lines} lines: longer than Reshape's 29 for this change"
    );
    let dir = std::env::temp_dir().join(format!("pgshift-declarative-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let url = pg.url("postgres");
    let owner = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(SETUP).execute(&owner).await.unwrap();

    let old_client = client(&url, "members_app", "members_v1").await;
    let new_client = client(&url, "members_app", "members_v2").await;
    let stop_old = Arc::new(AtomicBool::new(false));
    let stop_new = Arc::new(AtomicBool::new(false));
    // Before expand members_v1 does not exist: the old client writes the table.
    let old = tokio::spawn(writer(old_client.clone(), OLD_SHAPE, stop_old.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_ran(&["lint"], &pgshift(&url, &["lint"]).await);
    assert_ran(&["expand"], &pgshift(&url, &["expand"]).await);
    let new = tokio::spawn(writer(new_client.clone(), NEW_SHAPE, stop_new.clone()));
    // A row the backfill has not reached, written on the new shape: the
    // columns the writer did not set are filled from the old shape first.
    let cher: i64 = sqlx::query_scalar(
        "update members set price_cents = 1099 where first_name is null and last_name is null
           and id = (select id from members_v1.members where full_name = 'Cher') returning price_cents",
    )
    .fetch_one(&new_client)
    .await
    .unwrap();
    assert_eq!(cher, 1099);
    let (full, price): (String, String) =
        sqlx::query_as("select full_name, price::text from members where full_name = 'Cher'")
            .fetch_one(&old_client)
            .await
            .unwrap();
    assert_eq!((full.as_str(), price.as_str()), ("Cher", "10.99"));
    assert_ran(&["backfill"], &pgshift(&url, &["backfill"]).await);

    // Each side sees the other's writes, in its own shape.
    sqlx::query("insert into members (full_name, price) values ('Ada Lovelace', 18.15)")
        .execute(&old_client)
        .await
        .unwrap();
    let ada: (String, String, i64) = sqlx::query_as(
        "select first_name, last_name, price_cents from members where first_name = 'Ada'",
    )
    .fetch_one(&new_client)
    .await
    .unwrap();
    assert_eq!(ada, ("Ada".into(), "Lovelace".into(), 1815));
    sqlx::query(
        "update members set last_name = 'King', price_cents = 2000 where first_name = 'Ada'",
    )
    .execute(&new_client)
    .await
    .unwrap();
    sqlx::query(
        "insert into members (first_name, last_name, price_cents) values ('Grace', 'Hopper', 999)",
    )
    .execute(&new_client)
    .await
    .unwrap();
    let seen: Vec<(String, String)> = sqlx::query_as(
        "select full_name, price::text from members where full_name in ('Ada King', 'Grace Hopper') order by 1",
    )
    .fetch_all(&old_client)
    .await
    .unwrap();
    assert_eq!(
        seen,
        [
            ("Ada King".into(), "20.00".into()),
            ("Grace Hopper".into(), "9.99".into())
        ]
    );
    let old_columns: Vec<String> = sqlx::query_scalar(
        "select column_name::text from information_schema.columns
         where table_schema = 'members_v1' and table_name = 'members' order by ordinal_position",
    )
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(old_columns, ["id", "full_name", "price", "joined_at"]);

    let validated = assert_ran(&["validate"], &pgshift(&url, &["validate"]).await);
    assert!(validated.contains("all match"), "{validated}");
    // The old application is gone before contract; no read switch was needed.
    stop_old.store(true, Ordering::Relaxed);
    let old = old.await.unwrap();
    assert_ran(&["contract"], &pgshift(&url, &["contract"]).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_new.store(true, Ordering::Relaxed);
    let new = new.await.unwrap();
    assert_no_failures("old shape", &old);
    assert_no_failures("new shape", &new);

    let status = assert_ran(&["status"], &pgshift(&url, &["status"]).await);
    assert!(status.starts_with("status: phase contracted"), "{status}");
    let (columns, not_null, sync_left, v1_left): (Vec<String>, bool, i64, bool) = sqlx::query_as(
        "select (select array_agg(attname::text order by attnum) from pg_attribute
                 where attrelid = 'public.members'::regclass and attnum > 0 and not attisdropped),
                (select bool_and(attnotnull) from pg_attribute
                 where attrelid = 'public.members'::regclass
                   and attname in ('first_name', 'last_name', 'price_cents')),
                (select count(*) from pg_proc where proname like 'pgshift_%_sync'),
                to_regnamespace('members_v1') is not null",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(
        columns,
        ["id", "joined_at", "first_name", "last_name", "price_cents"]
    );
    assert!(not_null, "the new columns are NOT NULL after contract");
    assert_eq!(sync_left, 0, "pgshift dropped the sync trigger's function");
    assert!(!v1_left, "the old version's schema is gone");
    let edge: Vec<(String, String, i64)> = sqlx::query_as(
        "select first_name, last_name, price_cents from members
         where first_name in ('Cher', 'Jean') order by first_name",
    )
    .fetch_all(&new_client)
    .await
    .unwrap();
    assert_eq!(
        edge,
        [
            ("Cher".to_owned(), String::new(), 1099),
            ("Jean".to_owned(), "Claude Van Damme".to_owned(), 1250)
        ]
    );
    let (seeded, split_wrong): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where last_name <> 'Family' || substr(first_name, 6))
         from members where first_name like 'Given%'",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    let deletes = ((old.statements + new.statements) / 3) as i64;
    assert!(seeded >= 20_000 - deletes && seeded > 10_000, "{seeded}");
    assert_eq!(split_wrong, 0);
    drop((owner, old_client, new_client));
    drop(pg);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

const COMPOSITE: &str = r#"
name = "accounts_minor_units"
table = "accounts"
key = ["tenant", "id"]
versions = ["accounts_v1", "accounts_v2"]

[[add]]
column = "balance_minor"
type = "bigint"
up = "round(balance * 100)"

[[remove]]
column = "balance"
down = "balance_minor / 100.0"
"#;

#[tokio::test]
async fn a_composite_uuid_key_works_the_same_and_abort_leaves_the_old_shape() {
    let dir = std::env::temp_dir().join(format!("pgshift-declarative-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let url = pg.url("postgres");
    let owner = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "create role accounts_app;
         create table accounts (
             tenant uuid not null, id uuid not null default gen_random_uuid(),
             balance numeric(12, 2) not null, primary key (tenant, id));
         grant select, insert, update, delete on accounts to accounts_app;
         insert into accounts (tenant, balance)
         select ('00000000-0000-0000-0000-00000000000' || (g % 3))::uuid, g / 4.0
         from generate_series(1, 5000) g;",
    )
    .execute(&owner)
    .await
    .unwrap();
    let migrator = |plan: &str| {
        let pool = owner.clone();
        let plan = Plan::parse(plan).unwrap();
        async move { Migrator::open(pool, plan).await.unwrap() }
    };
    let m = migrator(COMPOSITE).await;

    // Expand, then abort: the table is as it was, nothing of pgshift left on it.
    m.expand().await.unwrap();
    m.abort().await.unwrap();
    let (columns, triggers, schemas): (Vec<String>, i64, i64) = sqlx::query_as(
        "select (select array_agg(attname::text order by attnum) from pg_attribute
                 where attrelid = 'accounts'::regclass and attnum > 0 and not attisdropped),
                (select count(*) from pg_trigger where tgrelid = 'accounts'::regclass),
                (select count(*) from pg_namespace where nspname like 'accounts_v%')",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(columns, ["tenant", "id", "balance"]);
    assert_eq!((triggers, schemas), (0, 0));

    // Again, to the end, with a write on each side in the middle.
    m.expand().await.unwrap();
    let old = client(&url, "accounts_app", "accounts_v1").await;
    let new = client(&url, "accounts_app", "accounts_v2").await;
    sqlx::query("insert into accounts (tenant, balance) values ('00000000-0000-0000-0000-000000000009', 1.23)")
        .execute(&old)
        .await
        .unwrap();
    sqlx::query("insert into accounts (tenant, balance_minor) values ('00000000-0000-0000-0000-000000000009', 456)")
        .execute(&new)
        .await
        .unwrap();
    m.backfill().await.unwrap();
    let report = m.validate().await.unwrap();
    assert!(report.mismatched.is_empty());
    let both: Vec<String> = sqlx::query_scalar(
        "select balance::text from accounts where tenant = '00000000-0000-0000-0000-000000000009' order by 1",
    )
    .fetch_all(&old)
    .await
    .unwrap();
    assert_eq!(both, ["1.23", "4.56"]);
    m.contract().await.unwrap();
    assert_eq!(m.status().await.unwrap().phase, Phase::Contracted);
    // Seeded g / 4.0 for g in 1..=5000 is 25 g cents; plus the two written above.
    let (rows, total): (i64, i64) =
        sqlx::query_as("select count(*), sum(balance_minor)::bigint from accounts")
            .fetch_one(&new)
            .await
            .unwrap();
    assert_eq!((rows, total), (5002, 25 * 5000 * 5001 / 2 + 123 + 456));
    let minor: Vec<i64> = sqlx::query_scalar(
        "select balance_minor from accounts where tenant = '00000000-0000-0000-0000-000000000001' order by balance_minor limit 2",
    )
    .fetch_all(&new)
    .await
    .unwrap();
    // g = 1 and 4 land on tenant 1: 0.25 and 1.00.
    assert_eq!(minor, [25, 100]);
    drop((owner, old, new));
    drop(pg);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
