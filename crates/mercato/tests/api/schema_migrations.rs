//! Mercato's own migrations (`migrations/*.sql`, applied at every `serve`
//! start): each passes pgshift's lint against the schema the ones before it
//! made, but for the findings listed once in `ACCEPTED`; and the runner
//! waits for locks only briefly, tries again, and runs `-- no-transaction`
//! files outside a transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mercato::db::migrate::{self, MigrationError, Options};
use mercato::db::MIGRATOR;
use pgshift::lint::{lint_file, Catalog};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestDatabase;

/// Findings of migrations that shipped before pgshift's lint ran on them:
/// (file, rule, how many, why it was accepted then). Shipped files cannot
/// change (sqlx checks their checksums), so the list only shrinks: a new
/// migration must be clean, and an entry whose findings are gone (or fewer)
/// fails the test until it is corrected.
const ACCEPTED: &[(&str, &str, usize, &str)] = &[
    ("0002_checkout.sql", "constraint-without-not-valid", 1, FIRST_WEEK),
    ("0005_api_key_management.sql", "index-without-concurrently", 1, FIRST_WEEK),
    ("0006_pricing.sql", "constraint-without-not-valid", 1, FIRST_WEEK),
    ("0006_pricing.sql", "index-without-concurrently", 1, FIRST_WEEK),
    ("0007_refunds.sql", "constraint-without-not-valid", 1, FIRST_WEEK),
    ("0008_pricing_rollout.sql", "constraint-without-not-valid", 1, FIRST_WEEK),
    ("0008_pricing_rollout.sql", "index-without-concurrently", 2, FIRST_WEEK),
    ("0009_events.sql", "constraint-without-not-valid", 1, FIRST_WEEK),
    ("0010_webhook_leases.sql", "drop-before-contract", 1, FIRST_WEEK),
    ("0010_webhook_leases.sql", "drop-index-without-concurrently", 1, FIRST_WEEK),
    ("0010_webhook_leases.sql", "index-without-concurrently", 1, FIRST_WEEK),
    ("0011_orders_customer_key.sql", "drop-before-contract", 1, FIRST_WEEK),
    ("0011_orders_customer_key.sql", "drop-index-without-concurrently", 1, FIRST_WEEK),
    ("0011_orders_customer_key.sql", "index-without-concurrently", 1, FIRST_WEEK),
    ("0011_orders_customer_key.sql", "stored-generated-column", 1, FIRST_WEEK),
    ("0013_remediation.sql", "constraint-without-not-valid", 2, BEFORE_LINT),
    ("0013_remediation.sql", "drop-before-contract", 1, BEFORE_LINT),
    ("0013_remediation.sql", "drop-index-without-concurrently", 1, BEFORE_LINT),
    ("0013_remediation.sql", "index-without-concurrently", 1, BEFORE_LINT),
    ("0015_fair_workers.sql", "drop-before-contract", 2, BEFORE_LINT),
    ("0015_fair_workers.sql", "drop-index-without-concurrently", 2, BEFORE_LINT),
    ("0015_fair_workers.sql", "index-without-concurrently", 2, BEFORE_LINT),
    (
        "0017_move_reverse.sql",
        "constraint-without-not-valid",
        2,
        "tenant_moves holds a row per move: the check scans a handful of rows",
    ),
    ("0019_analytics.sql", "index-without-concurrently", 1, BEFORE_LINT),
    (
        "0020_move_capture_keys.sql",
        "drop-before-contract",
        1,
        "the same file replaces the capture trigger, the column's only writer; only the mover read it",
    ),
];
const FIRST_WEEK: &str = "shipped 2026-11-25, the first week, with no database holding data yet";
const BEFORE_LINT: &str =
    "shipped before Mercato's own migrations were linted; no deployment to protect then";

async fn owner_pool(db: &TestDatabase) -> PgPool {
    let pool = PgPool::connect(&db.owner_url)
        .await
        .expect("owner connects");
    let opts: PgConnectOptions = db.owner_url.parse().expect("owner URL parses");
    // The migrations' policies name the service roles.
    mercato::db::ensure_service_roles(&pool, &opts)
        .await
        .expect("service roles");
    pool
}

/// The migration files on disk, in the order sqlx applies them (by version).
fn migration_files() -> Vec<(i64, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
        .expect("read migrations/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let version = name
                .split('_')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no version prefix"));
            let sql = std::fs::read_to_string(&path).expect("read a migration");
            (version, name, sql)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_migration_passes_lint_against_the_schema_before_it_but_the_findings_accepted_once() {
    let db = TestDatabase::create().await;
    let pool = owner_pool(&db).await;
    let mut conn = pool.acquire().await.expect("a connection");
    conn.ensure_migrations_table()
        .await
        .expect("the migrations table");
    let files = migration_files();
    assert_eq!(
        files.iter().map(|f| f.0).collect::<Vec<_>>(),
        MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>(),
        "the build has exactly the migration files on disk"
    );
    // (file, rule) → the findings, as pgshift explains them.
    let mut found: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
    for (version, name, sql) in &files {
        let catalog = Catalog::load(&pool).await.expect("read the catalog");
        let migration = MIGRATOR
            .iter()
            .find(|m| m.version == *version)
            .expect("every file is in the build");
        // A `-- no-transaction` file runs statement by statement: each is a step.
        let steps = if migration.no_tx {
            migrate::statements(sql)
        } else {
            vec![sql.as_str()]
        };
        let findings = steps
            .into_iter()
            .flat_map(|step| lint_file(name, step, &catalog));
        for finding in findings {
            found
                .entry((name.clone(), finding.rule))
                .or_default()
                .push(finding.to_string());
        }
        let applied = if migration.no_tx {
            migrate::apply_outside_transaction(&mut conn, migration).await
        } else {
            conn.apply(migration).await.map(|_| ()).map_err(Into::into)
        };
        applied.unwrap_or_else(|e| panic!("{name} applies: {e}"));
    }
    let accepted = |file: &str, rule: &str| {
        ACCEPTED
            .iter()
            .find(|(f, r, _, _)| *f == file && *r == rule)
            .map_or(0, |entry| entry.2)
    };
    let not_accepted: Vec<&str> = found
        .iter()
        .filter(|((file, rule), lines)| lines.len() > accepted(file, rule))
        .flat_map(|(_, lines)| lines.iter().map(String::as_str))
        .collect();
    let stale: Vec<String> = ACCEPTED
        .iter()
        .filter(|(file, rule, count, _)| {
            found.get(&(file.to_string(), *rule)).map_or(0, Vec::len) < *count
        })
        .map(|(file, rule, count, _)| format!("{file} {rule} ×{count}"))
        .collect();
    let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for ((_, rule), lines) in &found {
        *by_rule.entry(rule).or_default() += lines.len();
    }
    println!("findings by rule: {by_rule:?}");
    assert!(
        not_accepted.is_empty(),
        "findings not accepted in ACCEPTED: make the migration safe (a new one must be clean):\n  {}",
        not_accepted.join("\n  ")
    );
    assert!(
        stale.is_empty(),
        "ACCEPTED lists findings that no longer occur (or fewer times): lower the count or remove the entry:\n  {}",
        stale.join("\n  ")
    );
}

/// A directory of migration files for a migrator of the test's own.
fn migrations_dir(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mercato-migrations-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("create a migrations directory");
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).expect("write a migration");
    }
    dir
}

async fn migrator(files: &[(&str, &str)]) -> Migrator {
    let dir = migrations_dir(files);
    let migrator = Migrator::new(dir.as_path())
        .await
        .expect("migrations resolve");
    let _ = std::fs::remove_dir_all(&dir);
    migrator
}

async fn column_exists(pool: &PgPool, table: &str, column: &str) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns where table_name = $1 and column_name = $2)",
    )
    .bind(table)
    .bind(column)
    .fetch_one(pool)
    .await
    .expect("read the catalog")
}

async fn recorded(pool: &PgPool, version: i64) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from _sqlx_migrations where version = $1 and success)",
    )
    .bind(version)
    .fetch_one(pool)
    .await
    .expect("read _sqlx_migrations")
}

/// A table `parcels`, a migration that alters it, and a transaction that
/// holds it locked (access exclusive) until it ends.
async fn parcels_locked() -> (
    TestDatabase,
    PgPool,
    Migrator,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let db = TestDatabase::create().await;
    let pool = PgPool::connect(&db.owner_url).await.expect("connect");
    sqlx::raw_sql("create table parcels (id int)")
        .execute(&pool)
        .await
        .unwrap();
    let migrator = migrator(&[(
        "1_parcel_notes.sql",
        "alter table parcels add column note text;",
    )])
    .await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::raw_sql("lock table parcels in access exclusive mode")
        .execute(&mut *holder)
        .await
        .unwrap();
    (db, pool, migrator, holder)
}

#[tokio::test]
async fn a_migration_waiting_for_a_lock_times_out_and_is_tried_again_until_it_completes() {
    let (_db, pool, migrator, holder) = parcels_locked().await;
    let options = Options {
        lock_timeout: Duration::from_millis(200),
        max_attempts: 20,
    };
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { migrate::run(&migrator, &pool, options).await }
    });
    // Several lock timeouts' worth: the migration gives up its place in the
    // queue each time instead of waiting there.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!running.is_finished(), "it waits while the lock is held");
    holder.commit().await.unwrap();
    let applied = running
        .await
        .unwrap()
        .expect("it completes once the lock is free");
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].version, 1);
    assert!(
        applied[0].attempts >= 2,
        "it timed out and was retried: {applied:?}"
    );
    assert!(column_exists(&pool, "parcels", "note").await);
    assert!(recorded(&pool, 1).await);
}

#[tokio::test]
async fn a_migration_that_never_gets_its_lock_fails_after_its_attempts_and_changes_nothing() {
    let (_db, pool, migrator, holder) = parcels_locked().await;
    let options = Options {
        lock_timeout: Duration::from_millis(100),
        max_attempts: 3,
    };
    let err = migrate::run(&migrator, &pool, options)
        .await
        .expect_err("the lock is never free");
    assert!(
        matches!(
            err,
            MigrationError::LockTimeout {
                version: 1,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    holder.rollback().await.unwrap();
    assert!(!column_exists(&pool, "parcels", "note").await);
    assert!(!recorded(&pool, 1).await);
}

#[tokio::test]
async fn a_no_transaction_migration_builds_its_index_concurrently_and_an_invalid_one_stops_it() {
    let db = TestDatabase::create().await;
    let pool = PgPool::connect(&db.owner_url).await.expect("connect");
    sqlx::raw_sql("create table parcels (id int); insert into parcels values (1), (1)")
        .execute(&pool)
        .await
        .unwrap();
    let options = Options::default();
    // CONCURRENTLY fails inside a transaction block: sqlx's marker keeps it out of one.
    let concurrent = migrator(&[(
        "1_parcels_by_id.sql",
        "-- no-transaction\ncreate index concurrently if not exists parcels_by_id on parcels (id);",
    )])
    .await;
    assert!(concurrent.iter().all(|m| m.no_tx));
    let applied = migrate::run(&concurrent, &pool, options)
        .await
        .expect("it runs");
    assert_eq!(applied.len(), 1);
    let valid: Option<bool> = sqlx::query_scalar(
        "select indisvalid from pg_index where indexrelid = 'parcels_by_id'::regclass",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(valid, Some(true));
    assert!(recorded(&pool, 1).await);

    // A concurrent build that failed part-way leaves an INVALID index, which
    // IF NOT EXISTS takes for done: the migration is refused, not recorded.
    let failed = sqlx::raw_sql("create unique index concurrently parcels_unique on parcels (id)")
        .execute(&pool)
        .await;
    assert!(failed.is_err(), "the duplicate ids fail the build");
    let again = migrator(&[
        (
            "1_parcels_by_id.sql",
            "-- no-transaction\ncreate index concurrently if not exists parcels_by_id on parcels (id);",
        ),
        (
            "2_parcels_unique.sql",
            "-- no-transaction\ncreate unique index concurrently if not exists parcels_unique on parcels (id);",
        ),
    ])
    .await;
    let err = migrate::run(&again, &pool, options)
        .await
        .expect_err("an invalid index stops it");
    assert!(
        matches!(&err, MigrationError::InvalidIndexes { version: 2, indexes } if indexes == &["parcels_unique"]),
        "{err}"
    );
    assert!(!recorded(&pool, 2).await);
}

#[tokio::test]
async fn a_no_transaction_migration_runs_its_statements_one_at_a_time_and_can_run_again() {
    let db = TestDatabase::create().await;
    let pool = PgPool::connect(&db.owner_url).await.expect("connect");
    sqlx::raw_sql("create table parcels (id int)")
        .execute(&pool)
        .await
        .unwrap();
    // Sent together, the two CONCURRENTLY builds would run in one implicit
    // transaction block, which PostgreSQL refuses.
    let sql = "-- no-transaction\n\
               alter table parcels add column if not exists note text default 'a;b';\n\
               create index concurrently if not exists parcels_by_id on parcels (id);\n\
               create index concurrently if not exists parcels_by_note on parcels (note);\n";
    assert_eq!(migrate::statements(sql).len(), 3);
    let files = [("1_parcels.sql", sql)];
    let applied = migrate::run(&migrator(&files).await, &pool, Options::default())
        .await
        .expect("the statements run one by one");
    assert_eq!(applied.len(), 1);
    assert!(column_exists(&pool, "parcels", "note").await);
    // As after a crash between its SQL and its record: it runs again unharmed.
    sqlx::raw_sql("delete from _sqlx_migrations where version = 1")
        .execute(&pool)
        .await
        .unwrap();
    migrate::run(&migrator(&files).await, &pool, Options::default())
        .await
        .expect("runs again");
    assert!(recorded(&pool, 1).await);
    let indexes: i64 =
        sqlx::query_scalar("select count(*) from pg_indexes where tablename = 'parcels'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(indexes, 2);
}

#[tokio::test]
async fn a_database_migrated_by_sqlx_itself_is_taken_as_it_is() {
    let db = TestDatabase::create().await;
    let pool = owner_pool(&db).await;
    // sqlx sends a file whole, so it can run every migration before the first
    // `-- no-transaction` file of several statements (0024), not that one.
    let by_sqlx: Vec<_> = MIGRATOR
        .iter()
        .take_while(|m| !m.no_tx || migrate::statements(&m.sql).len() <= 1)
        .cloned()
        .collect();
    let ran_by_sqlx = by_sqlx.len();
    let sqlx_alone = Migrator {
        migrations: by_sqlx.into(),
        ..Migrator::DEFAULT
    };
    sqlx_alone.run(&pool).await.expect("sqlx migrates");
    let applied = migrate::run(&MIGRATOR, &pool, Options::default())
        .await
        .expect("the same checksums");
    let rest: Vec<i64> = MIGRATOR
        .iter()
        .skip(ran_by_sqlx)
        .map(|m| m.version)
        .collect();
    assert_eq!(applied.iter().map(|a| a.version).collect::<Vec<_>>(), rest);
}
