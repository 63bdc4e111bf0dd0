//! The README's walk-through (issue 11, item D), run exactly as written:
//! `examples/walkthrough_setup.sql` on a private cluster, then
//! `examples/walkthrough.toml` phase by phase with the `pgshift` binary,
//! while an application that knows only the phase keeps writing as
//! `members_app`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::{Phase, ReadSwitch};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

const README: &str = include_str!("../README.md");
const PLAN: &str = include_str!("../examples/walkthrough.toml");
const SETUP: &str = include_str!("../examples/walkthrough_setup.sql");
const PLAN_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/walkthrough.toml");

/// The phases as the README runs them.
const PHASES: &[&[&str]] = &[
    &["lint"],
    &["expand"],
    &["backfill"],
    &["switch", "--percent", "10"],
    &["switch", "--percent", "50"],
    &["switch", "--percent", "100"],
    &["validate"],
    &["status"],
    &["contract"],
    &["status"],
];

/// Runs the `pgshift` binary off the test's runtime thread: the application
/// task shares that thread, and a blocking wait here would freeze it mid-way
/// through its statements for the whole command. (It did: statements the
/// application had decided on before `contract` then ran after the drop, and
/// the test failed now and then for a cause that was not pgshift's.)
async fn pgshift(url: &str, args: &[&str]) -> Output {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
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

#[derive(Default, Debug)]
struct AppLog {
    statements: u64,
    failed: Vec<String>,
    new_shape_writes: u64,
}

/// The application: plain SQL as `members_app`, writing the old table while
/// it exists (the trigger keeps the new one current) and the new one from
/// contract on.
async fn app(pool: PgPool, stop: Arc<AtomicBool>) -> AppLog {
    let switch = ReadSwitch::new(pool.clone(), "members_split_name_cents", 10);
    let mut log = AppLog::default();
    while !stop.load(Ordering::Relaxed) {
        let phase = switch.view().await.phase;
        let statements: [&str; 3] = if phase.writes_old() {
            [
                "insert into members (full_name, price) values ('New Member', 4.20)",
                "update members set price = price + 1
                 where id = (select id from members tablesample bernoulli (1)
                             where full_name like 'Given%' limit 1)",
                "delete from members
                 where id = (select id from members tablesample bernoulli (1)
                             where full_name like 'Given%' limit 1)",
            ]
        } else {
            log.new_shape_writes += 1;
            [
                "insert into members_v2 (id, first_name, last_name, price_cents, joined_at)
                 values (gen_random_uuid(), 'New', 'Member', 420, now())",
                "update members_v2 set price_cents = price_cents + 100
                 where id = (select id from members_v2 tablesample bernoulli (1)
                             where first_name like 'Given%' limit 1)",
                "delete from members_v2
                 where id = (select id from members_v2 tablesample bernoulli (1)
                             where first_name like 'Given%' limit 1)",
            ]
        };
        for sql in statements {
            log.statements += 1;
            if let Err(e) = sqlx::query(sql).execute(&pool).await {
                log.failed.push(format!("{phase}: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written() {
    // The README shows the plan and the set-up exactly as they are run here.
    assert!(
        README.contains(PLAN.trim()),
        "README.md holds examples/walkthrough.toml verbatim"
    );
    assert!(
        README.contains(SETUP.trim()),
        "README.md holds examples/walkthrough_setup.sql verbatim"
    );
    for phase in PHASES {
        let line = format!(
            "pgshift crates/pgshift/examples/walkthrough.toml {}",
            phase.join(" ")
        );
        assert!(README.contains(&line), "README.md runs `{line}`");
    }

    let dir = std::env::temp_dir().join(format!("pgshift-walkthrough-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let url = pg.url("postgres");
    let owner = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(SETUP).execute(&owner).await.unwrap();
    let app_pool = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("set role members_app").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(app(app_pool.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for phase in PHASES {
        if phase == &["contract"] {
            // Reads at 100% for switch.min_full_seconds first.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let out = pgshift(&url, phase).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgshift {phase:?}: {:?}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains("status: phase "), "{stdout}");
        if phase == &["validate"] {
            assert!(stdout.contains("all match"), "{stdout}");
        }
    }
    // Keep writing the new shape for a while after contract.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await.unwrap();
    assert!(
        log.failed.is_empty(),
        "{} of {} statements failed, first: {:?}",
        log.failed.len(),
        log.statements,
        log.failed.first()
    );
    assert!(log.new_shape_writes > 10, "{log:?}");

    let status = pgshift(&url, &["status"]).await;
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("status: phase contracted"));
    let gone: bool = sqlx::query_scalar("select to_regclass('members') is null")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert!(gone, "the old table is dropped");
    let sync_left: i64 =
        sqlx::query_scalar("select count(*) from pg_proc where proname = 'members_sync'")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(sync_left, 0, "pgshift dropped the sync function");
    let edge: Vec<(String, String, i64)> = sqlx::query_as(
        "select first_name, last_name, price_cents from members_v2
         where first_name in ('Cher', 'Jean') order by first_name",
    )
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        edge,
        [
            ("Cher".to_owned(), String::new(), 999),
            ("Jean".to_owned(), "Claude Van Damme".to_owned(), 1250)
        ]
    );
    let (seeded, split_wrong): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where last_name <> 'Family' || substr(first_name, 6))
         from members_v2 where first_name like 'Given%'",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    // The setup seeds 20,000; the application deletes at most one a round of
    // three statements, and kept writing throughout.
    let rounds = (log.statements / 3) as i64;
    assert!(
        seeded >= 20_000 - rounds && seeded > 10_000,
        "{seeded} after {rounds} rounds"
    );
    assert_eq!(split_wrong, 0);
    let app_view = ReadSwitch::new(app_pool.clone(), "members_split_name_cents", 0);
    assert_eq!(app_view.view().await.phase, Phase::Contracted);
    drop((owner, app_pool));
    drop(pg);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
