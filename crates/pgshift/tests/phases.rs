//! pgshift end to end on a private cluster: a generic table changes shape while
//! a writer that knows nothing of the migration keeps writing (sync triggers).

use std::time::Duration;

use pgshift::switch::CACHE_TTL;
use pgshift::{Error, Migrator, Phase, Plan, ReadSwitch};
use sqlx::PgPool;

const PLAN: &str = r#"
name = "accounts_cents"

[[expand]]
name = "accounts_v2"
sql = "create table accounts_v2 (id bigint primary key, balance_cents bigint not null)"

[[dual_write]]
name = "sync trigger"
sql = """
create function accounts_sync() returns trigger language plpgsql as $$
begin
    insert into accounts_v2 (id, balance_cents) values (new.id, round(new.balance * 100)::bigint)
    on conflict (id) do update set balance_cents = excluded.balance_cents;
    return new;
end $$;
create trigger accounts_sync after insert or update on accounts for each row execute function accounts_sync();
"""

[backfill]
source = "accounts"
key = "id"
batch_size = 100
max_batch_size = 500
transform = """
insert into accounts_v2 (id, balance_cents)
select id, round(balance * 100)::bigint from accounts where id > $1 and id <= $2
on conflict (id) do nothing
"""

[switch]
min_full_seconds = 1

[validate]
chunk_size = 700
source = "select count(*), md5(string_agg(id || ':' || round(balance * 100)::bigint, ',' order by id)) from accounts where id > $1 and id <= $2"
target = "select count(*), md5(string_agg(id || ':' || balance_cents, ',' order by id)) from accounts_v2 where id > $1 and id <= $2"

[[contract]]
name = "drop trigger"
sql = "drop trigger accounts_sync on accounts"

[[contract]]
name = "drop old table"
sql = "drop table accounts"

[[abort]]
name = "drop new table"
sql = "drop table if exists accounts_v2; drop function if exists accounts_sync() cascade"
"#;

async fn cluster(name: &str) -> (localpg::LocalPg, PgPool, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pgshift-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let pool = PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(
        "create table accounts (id bigserial primary key, balance numeric(12, 2) not null);
         insert into accounts (balance) select (g % 1000) / 10.0 from generate_series(1, 5000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pg, pool, dir)
}

/// A writer that knows nothing of the migration: inserts and updates old rows.
async fn legacy_writer(pool: PgPool, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut writes = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        sqlx::query("insert into accounts (balance) values (12.34)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "update accounts set balance = balance + 1 where id = (random() * 4999)::bigint + 1",
        )
        .execute(&pool)
        .await
        .unwrap();
        writes += 2;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writes
}

#[tokio::test]
async fn every_phase_in_order_while_a_trigger_synced_writer_keeps_writing() {
    let (_pg, pool, dir) = cluster("phases").await;
    let migrator = Migrator::open(pool.clone(), Plan::parse(PLAN).unwrap())
        .await
        .unwrap();
    assert!(migrator.lint().await.unwrap().is_empty());

    // Out of order: refused with the reason.
    let refused = migrator.switch(10).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Error::OutOfOrder {
                command: "switch",
                ..
            }
        ),
        "{refused}"
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(legacy_writer(pool.clone(), stop.clone()));
    migrator.expand().await.unwrap();
    let report = migrator.backfill().await.unwrap();
    assert!(report.rows >= 5000 && report.batches > 1, "{report:?}");
    for percent in [10, 50, 100] {
        migrator.switch(percent).await.unwrap();
    }
    let early = migrator.contract().await.unwrap_err();
    assert!(early.to_string().contains("validate first"), "{early}");
    migrator.validate().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    migrator.contract().await.unwrap();
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Contracted);
    let old: bool = sqlx::query_scalar("select to_regclass('accounts') is null")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(old, "the old shape is gone");
    let abort = migrator.abort().await.unwrap_err();
    assert!(abort.to_string().contains("old shape is gone"), "{abort}");
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn validation_catches_a_row_the_new_shape_got_wrong() {
    let (_pg, pool, dir) = cluster("validate").await;
    let migrator = Migrator::open(pool.clone(), Plan::parse(PLAN).unwrap())
        .await
        .unwrap();
    migrator.expand().await.unwrap();
    migrator.backfill().await.unwrap();
    // Bypass the trigger: a write the dual-write never saw.
    sqlx::query("update accounts_v2 set balance_cents = balance_cents + 1 where id = 4321")
        .execute(&pool)
        .await
        .unwrap();
    let err = migrator.validate().await.unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err}");
    assert!(
        migrator.contract().await.is_err(),
        "no contract without a passed validation"
    );
    // Abort: the new shape goes, the old stays.
    migrator.abort().await.unwrap();
    let gone: bool = sqlx::query_scalar("select to_regclass('accounts_v2') is null")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(gone);
    let rows: i64 = sqlx::query_scalar("select count(*) from accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 5000);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_interrupted_validation_resumes_and_the_backfill_leaves_the_table_vacuumed() {
    let (_pg, pool, dir) = cluster("validate-resume").await;
    // Small ranges and long rests: the validation takes a while.
    let slow = PLAN.replace("chunk_size = 700", "chunk_size = 20").replace(
        "max_batch_size = 500",
        "max_batch_size = 500\nduty_cycle = 0.05\ntarget_batch_ms = 1",
    );
    let migrator = Migrator::open(pool.clone(), Plan::parse(&slow).unwrap())
        .await
        .unwrap();
    migrator.expand().await.unwrap();
    let report = migrator.backfill().await.unwrap();
    assert_eq!(report.vacuumed, ["accounts_v2"]);
    // The vacuum set the visibility map: an index-only scan needs no heap.
    let (vacuumed, all_visible): (i64, i32) = sqlx::query_as(
        "select vacuum_count + autovacuum_count, (select relallvisible from pg_class where relname = 'accounts_v2')
         from pg_stat_user_tables where relname = 'accounts_v2'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        vacuumed >= 1 && all_visible > 0,
        "{vacuumed} vacuums, {all_visible} pages all-visible"
    );

    // Interrupted part-way (as Ctrl-C or a lost connection would).
    // Cut once some ranges are done (the whole run takes about 5 s).
    let mut validation = Box::pin(migrator.validate());
    let mut cut = Ok(());
    for _ in 0..100 {
        let done: Option<i64> =
            sqlx::query_scalar("select ranges from pgshift.validation_progress")
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        if done.unwrap_or(0) >= 3 {
            cut = Err(());
            break;
        }
        if tokio::time::timeout(Duration::from_millis(50), &mut validation)
            .await
            .is_ok()
        {
            break;
        }
    }
    drop(validation);
    assert!(
        cut.is_err(),
        "the validation finished before it could be interrupted"
    );
    let kept: i64 = sqlx::query_scalar("select ranges from pgshift.validation_progress")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(kept > 0 && kept < 200, "{kept} ranges kept");
    // A row diverges behind the validation's back, in a range already compared:
    // the resumed run does not see it, a restarted one does.
    sqlx::query("update accounts_v2 set balance_cents = balance_cents + 1 where id = 1")
        .execute(&pool)
        .await
        .unwrap();
    let resumed = migrator.validate().await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.rows, 5000, "every row compared once");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from pgshift.validation_progress")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0,
        "a finished validation forgets its progress"
    );
    migrator.restart_validation().await.unwrap();
    let err = migrator.validate().await.unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err}");
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn ddl_that_hits_lock_timeout_is_retried_not_left_in_the_queue() {
    let (_pg, pool, dir) = cluster("locks").await;
    let plan = PLAN
        .replace(
            "sql = \"create table accounts_v2 (id bigint primary key, balance_cents bigint not null)\"",
            "sql = \"alter table accounts add column note text\"",
        )
        .replace("name = \"accounts_cents\"", "name = \"accounts_cents\"\nlock_timeout_ms = 50");
    let migrator = Migrator::open(pool.clone(), Plan::parse(&plan).unwrap())
        .await
        .unwrap();
    // Another session holds a lock on the table for a while.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("lock table accounts in access share mode")
        .execute(&mut *holder)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        holder.commit().await.unwrap();
    });
    // While the DDL waits, other sessions' reads are never queued behind it for
    // long (without lock_timeout this read would wait ~800 ms behind the ALTER).
    let started = std::time::Instant::now();
    let read = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let read_started = std::time::Instant::now();
        sqlx::query("select count(*) from accounts")
            .execute(&pool)
            .await
            .unwrap();
        read_started.elapsed()
    };
    let (expanded, read_wait) = tokio::join!(migrator.expand(), read);
    expanded.expect("expand succeeds once the lock is free");
    release.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited for the holder"
    );
    assert!(
        read_wait < Duration::from_millis(400),
        "readers were not stuck behind the DDL: {read_wait:?}"
    );
    let has_note: bool = sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns where table_name = 'accounts' and column_name = 'note')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(has_note);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_backfill_throttles_while_sessions_wait_on_locks() {
    let (_pg, pool, dir) = cluster("throttle").await;
    let mut plan = Plan::parse(PLAN).unwrap();
    plan.backfill.max_lock_waiters = 0;
    let migrator = Migrator::open(pool.clone(), plan).await.unwrap();
    migrator.expand().await.unwrap();
    // Someone holds a lock another session is queued behind: the database is under pressure.
    sqlx::query("create table unrelated (x int)")
        .execute(&pool)
        .await
        .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("lock table unrelated in access exclusive mode")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiter_pool = pool.clone();
    let waiter = tokio::spawn(async move {
        let _ = sqlx::query("select count(*) from unrelated")
            .execute(&waiter_pool)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let release = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        holder.commit().await.unwrap();
    };
    let (report, ()) = tokio::join!(migrator.backfill(), release);
    let report = report.unwrap();
    waiter.await.unwrap();
    assert!(report.throttled > 0, "the throttle backed off: {report:?}");
    assert!(
        report.rows >= 5000,
        "and the backfill still finished: {report:?}"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

async fn exists(pool: &PgPool, sql: &str) -> bool {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The plan with its expand split in two: step 1 cannot run twice (no IF NOT
/// EXISTS), step 2 fails until the table it references exists.
fn plan_whose_second_expand_step_fails_first() -> Plan {
    let text = PLAN.replace(
        r#"name = "accounts_v2"
sql = "create table accounts_v2 (id bigint primary key, balance_cents bigint not null)""#,
        r#"name = "note"
sql = "alter table accounts add column note text"

[[expand]]
name = "accounts_v2"
sql = "create table accounts_v2 (id bigint primary key, balance_cents bigint not null, kind text references account_kinds (code))""#,
    );
    let plan = Plan::parse(&text).unwrap();
    assert_eq!(plan.expand.len(), 2, "the replacement applied");
    plan
}

#[tokio::test]
async fn an_interrupted_expand_resumes_after_the_steps_already_done() {
    let (_pg, pool, dir) = cluster("resume").await;
    let migrator = Migrator::open(pool.clone(), plan_whose_second_expand_step_fails_first())
        .await
        .unwrap();

    let failed = migrator.expand().await.unwrap_err();
    assert!(
        matches!(&failed, Error::Step { step, .. } if step.starts_with("expand[1]")),
        "{failed}"
    );
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Planned);
    let column = "select exists (select 1 from information_schema.columns where table_name = 'accounts' and column_name = 'note')";
    assert!(exists(&pool, column).await, "step 1 ran and stays");
    let twice = sqlx::query("alter table accounts add column note text")
        .execute(&pool)
        .await;
    assert!(twice.is_err(), "step 1 fails if it runs again");
    let mut edited = plan_whose_second_expand_step_fails_first();
    edited.expand[0].sql = "alter table accounts add column note varchar".into();
    let edited = Migrator::open(pool.clone(), edited).await.unwrap();
    let refused = edited.expand().await.unwrap_err();
    assert!(
        refused.to_string().contains("already ran with other SQL"),
        "{refused}"
    );

    sqlx::query("create table account_kinds (code text primary key)")
        .execute(&pool)
        .await
        .unwrap();
    migrator
        .expand()
        .await
        .expect("expand runs again from step 2");
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Expanded);
    assert!(exists(&pool, "select to_regclass('accounts_v2') is not null").await);
    let done: Vec<(String, i32)> = sqlx::query_as(
        "select section, step_index from pgshift.expand_steps
         where migration = 'accounts_cents' order by section, step_index",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let done: Vec<(&str, i32)> = done.iter().map(|(s, i)| (s.as_str(), *i)).collect();
    assert_eq!(done, [("dual_write", 0), ("expand", 0), ("expand", 1)]);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn expand_after_abort_runs_every_step_again() {
    let (_pg, pool, dir) = cluster("reexpand").await;
    let migrator = Migrator::open(pool.clone(), Plan::parse(PLAN).unwrap())
        .await
        .unwrap();
    migrator.expand().await.unwrap();
    migrator.abort().await.unwrap();
    assert!(exists(&pool, "select to_regclass('accounts_v2') is null").await);

    migrator.expand().await.unwrap();
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Expanded);
    sqlx::query("insert into accounts (balance) values (1.25)")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        exists(
            &pool,
            "select exists (select 1 from accounts_v2 where balance_cents = 125)"
        )
        .await,
        "the new table and its sync trigger are back"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unknown_phase_is_refused_by_the_database_and_by_pgshift() {
    let (_pg, pool, dir) = cluster("unknown").await;
    let migrator = Migrator::open(pool.clone(), Plan::parse(PLAN).unwrap())
        .await
        .unwrap();
    migrator.expand().await.unwrap();
    let app = ReadSwitch::new(pool.clone(), "accounts_cents", 0);
    assert_eq!(app.view().await.phase, Phase::Expanded);

    let refused =
        sqlx::query("update pgshift.migrations set phase = 'bogus' where name = 'accounts_cents'")
            .execute(&pool)
            .await
            .unwrap_err();
    assert!(
        refused.to_string().contains("migrations_phase_known"),
        "{refused}"
    );

    // Without the constraint the row can hold anything; pgshift still refuses to guess.
    sqlx::raw_sql(
        "alter table pgshift.migrations drop constraint migrations_phase_known;
         update pgshift.migrations set phase = 'bogus' where name = 'accounts_cents';",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = migrator.status().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "migration accounts_cents has unknown phase 'bogus' in pgshift.migrations"
    );
    assert!(
        matches!(migrator.expand().await, Err(Error::UnknownPhase { .. })),
        "expand does not run again"
    );
    let reopened = Migrator::open(pool.clone(), Plan::parse(PLAN).unwrap())
        .await
        .expect("open writes nothing, so it cannot fail on the row");
    assert!(
        matches!(reopened.status().await, Err(Error::UnknownPhase { .. })),
        "but every command reading the state refuses"
    );
    assert!(
        matches!(reopened.abort().await, Err(Error::UnknownPhase { .. })),
        "abort reads the phase before it writes anything"
    );

    // The application keeps the view it had, and one with none reads the old shape.
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(100)).await;
    assert_eq!(app.view().await.phase, Phase::Expanded);
    let fresh = ReadSwitch::new(pool.clone(), "accounts_cents", 0);
    let view = fresh.view().await;
    assert_eq!((view.phase, view.percent), (Phase::Planned, 0));
    assert!(!view.reads_new("1"));
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_read_switch_does_not_query_pgshift_tables_before_they_exist() {
    let (_pg, pool, dir) = cluster("noschema").await;
    let app = ReadSwitch::new(pool.clone(), "accounts_cents", 0);
    for _ in 0..3 {
        assert_eq!(app.view().await.phase, Phase::Planned);
        tokio::time::sleep(CACHE_TTL + Duration::from_millis(50)).await;
    }
    // An error of our own marks how far the server log has been written.
    let _ = sqlx::query("select * from log_marker_xyz")
        .execute(&pool)
        .await;
    let log_path = dir.join("postgres.log");
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("log_marker_xyz") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains("log_marker_xyz"), "the log is read: {log}");
    assert!(
        !log.contains("pgshift.migrations"),
        "no failed query on pgshift's table: {log}"
    );

    // Once a migration exists, the same switch sees it.
    let migrator = Migrator::open(pool.clone(), Plan::parse(PLAN).unwrap())
        .await
        .unwrap();
    migrator.expand().await.unwrap();
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(50)).await;
    assert_eq!(app.view().await.phase, Phase::Expanded);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn contract_drops_the_sync_function_even_when_the_plan_only_drops_the_old_table() {
    let (_pg, pool, dir) = cluster("owned").await;
    // No step drops the trigger or the function: pgshift owns them.
    let text = PLAN.replace(
        r#"[[contract]]
name = "drop trigger"
sql = "drop trigger accounts_sync on accounts"
"#,
        "",
    );
    let plan = Plan::parse(&text).unwrap();
    assert_eq!(plan.contract.len(), 1, "the replacement applied");
    let migrator = Migrator::open(pool.clone(), plan).await.unwrap();
    migrator.expand().await.unwrap();
    migrator.backfill().await.unwrap();
    migrator.validate().await.unwrap();
    migrator.switch(100).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    migrator.contract().await.unwrap();
    assert!(exists(&pool, "select to_regclass('accounts') is null").await);
    assert!(
        exists(
            &pool,
            "select not exists (select 1 from pg_proc where proname = 'accounts_sync')"
        )
        .await,
        "the sync function went with the old table"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}
