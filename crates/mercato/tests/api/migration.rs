//! The orders migration (pgshift) under live traffic, and a backfill killed mid-way.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mercato::bench::load::seed_legacy_orders;

use crate::helpers::{TestApp, TestDatabase};

const PLAN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/migrations/plans/orders_money_customers.toml"
);

fn mercato_migrate(db: &TestDatabase, plan: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mercato"));
    cmd.args(["migrate", plan])
        .args(args)
        .env("DATABASE_URL", &db.owner_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

fn run(db: &TestDatabase, plan: &str, args: &[&str]) -> Output {
    mercato_migrate(db, plan, args)
        .output()
        .expect("mercato runs")
}

#[tokio::test]
async fn the_orders_migration_under_live_traffic_fails_no_request_and_no_shadow_read() {
    let db = TestDatabase::create().await;
    let summary = mercato::bench::live_migration::run(mercato::bench::live_migration::Options {
        rows: 5_000,
        rate: 150,
        dwell: Duration::from_secs(1),
        out: None,
        database: mercato::config::DatabaseUrlArg {
            database_url: Some(db.owner_url.clone()),
        },
        progress: false,
    })
    .await
    .expect("the migration completes with no failed request and no mismatch");
    assert_eq!(summary["requests"]["failed"], 0);
    assert!(
        summary["requests"]["total"].as_u64().unwrap() > 100,
        "{summary}"
    );
    assert_eq!(summary["shadow_reads"]["mismatched"], 0);
    assert!(
        summary["shadow_reads"]["compared"].as_i64().unwrap() > 0,
        "shadow reads ran: {summary}"
    );
    assert!(summary["rows_backfilled"].as_i64().unwrap() >= 5_000);
    assert_eq!(summary["final_phase"], "contracted");
}

#[tokio::test]
async fn a_backfill_killed_with_sigkill_resumes_exactly_where_it_stopped() {
    let db = TestDatabase::create().await;
    let config = db.config();
    let app = TestApp::spawn_with(db, config).await;
    let merchant = app.create_merchant("legacy").await;
    let rows = 300_000;
    seed_legacy_orders(&app.owner, merchant.id.0, rows, false)
        .await
        .unwrap();
    let db = &app.db;

    // Out of order is refused with the reason, and changes nothing.
    let early = run(db, PLAN, &["contract"]);
    assert!(!early.status.success());
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("cannot contract now"),
        "{early:?}"
    );
    let expand = run(db, PLAN, &["expand"]);
    assert!(
        expand.status.success(),
        "{}",
        String::from_utf8_lossy(&expand.stderr)
    );

    let mut backfill = mercato_migrate(db, PLAN, &["backfill"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let progress = |owner: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i64, Option<i64>)>(
            "select rows_backfilled, backfill_cursor from pgshift.migrations where name = 'orders_money_customers'",
        )
        .fetch_one(&owner)
        .await
        .unwrap()
    };
    for _ in 0..2_000 {
        if progress(app.owner.clone()).await.0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backfill.kill().unwrap(); // SIGKILL
    backfill.wait().unwrap();
    let (done, cursor) = progress(app.owner.clone()).await;
    let cursor = cursor.expect("a batch committed before the kill");
    assert!(done > 0 && done < rows, "killed mid-way: {done} of {rows}");
    // Each batch commits with its cursor: the new shape holds exactly the rows up to it.
    let (copied, below): (i64, i64) = sqlx::query_as(
        "select (select count(*) from order_records), (select count(*) from legacy_orders where id <= $1)",
    )
    .bind(cursor)
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!((copied, done), (below, below));

    let resumed = run(db, PLAN, &["backfill"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        progress(app.owner.clone()).await.0,
        rows,
        "every row once, none twice"
    );
    let validate = run(db, PLAN, &["validate"]);
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let copied: i64 = app.count("order_records").await;
    assert_eq!(copied, rows);
}

#[tokio::test]
async fn a_plan_that_fails_lint_or_does_not_parse_runs_nothing() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("pgshift-plans-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = std::fs::read_to_string(PLAN).unwrap();
    let index_step = r#"sql = "create index order_records_by_id on order_records (id)""#;
    assert!(plan.contains(index_step));
    let locking = plan.replace(
        index_step,
        &format!("{index_step}\n\n[[expand]]\nname = \"blocking index\"\nsql = \"create index legacy_by_total on legacy_orders (total)\""),
    );
    let locking_path = dir.join("locking.toml");
    std::fs::write(&locking_path, locking).unwrap();
    let out = run(&app.db, locking_path.to_str().unwrap(), &["expand"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("index-without-concurrently") && stderr.contains("blocking index"),
        "{stderr}"
    );
    let created: bool = sqlx::query_scalar("select to_regclass('legacy_customers') is not null")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert!(!created, "nothing ran");

    let broken_path = dir.join("broken.toml");
    std::fs::write(&broken_path, "name = \"x\"\n[backfill]\nsource = 1\n").unwrap();
    let out = run(&app.db, broken_path.to_str().unwrap(), &["lint"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("broken.toml"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
