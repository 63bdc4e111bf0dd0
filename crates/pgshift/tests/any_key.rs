//! Any table, any key (issue 11, item C): backfill and validation walk
//! composite and UUID keys with row-value comparisons; a cursor an older
//! pgshift recorded (bigint) still resumes; deletes on the old shape during
//! the backfill reach the new one through the dual-write, and validation
//! fails when they do not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::{cli, Error, Migrator, Phase, Plan};
use sqlx::PgPool;

async fn cluster(name: &str, setup: &str) -> (localpg::LocalPg, PgPool, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pgshift-anykey-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let pool = PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(setup).execute(&pool).await.unwrap();
    (pg, pool, dir)
}

async fn scalar<T>(pool: &PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Waits until the running backfill has committed a batch.
async fn first_batch(pool: &PgPool, name: &str) {
    for _ in 0..2_000 {
        let done: Option<i64> =
            sqlx::query_scalar("select rows_backfilled from pgshift.migrations where name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
                .unwrap_or(None);
        if done.unwrap_or(0) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no batch committed");
}

// ---- Composite key (merchant_id uuid, id uuid), as Mercato's own tables.

const ORDERS: &str = "
create table orders (
    merchant_id uuid not null,
    id uuid not null,
    total numeric(12, 2) not null,
    primary key (merchant_id, id)
);
insert into orders (merchant_id, id, total)
select m.id, gen_random_uuid(), (g % 1000) / 10.0
from (select gen_random_uuid() as id from generate_series(1, 5)) m, generate_series(1, 800) g;";

const ORDERS_PLAN: &str = r#"
name = "orders_minor"

[[expand]]
name = "orders_v2"
sql = """
create table orders_v2 (
    merchant_id uuid not null,
    id uuid not null,
    total_minor bigint not null,
    primary key (merchant_id, id)
)"""

[[dual_write]]
name = "sync trigger"
sql = """
create function orders_sync() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        delete from orders_v2 where merchant_id = old.merchant_id and id = old.id;
        return old;
    end if;
    insert into orders_v2 (merchant_id, id, total_minor)
    values (new.merchant_id, new.id, round(new.total * 100)::bigint)
    on conflict (merchant_id, id) do update set total_minor = excluded.total_minor;
    return new;
end $$;
create trigger orders_sync after insert or update or delete on orders
    for each row execute function orders_sync();
"""

[backfill]
source = "orders"
key = ["merchant_id", "id"]
batch_size = 150
max_batch_size = 300
transform = """
insert into orders_v2 (merchant_id, id, total_minor)
select o.merchant_id, o.id, round(o.total * 100)::bigint
from orders o where {{key_range o}}
for key share
on conflict (merchant_id, id) do nothing
"""

[switch]
min_full_seconds = 1

[validate]
chunk_size = 700
source = """
select count(*), md5(string_agg(merchant_id || ':' || id || ':' || round(total * 100)::bigint, ',' order by merchant_id, id))
from orders where {{key_range}}
"""
target = """
select count(*), md5(string_agg(merchant_id || ':' || id || ':' || total_minor, ',' order by merchant_id, id))
from orders_v2 where {{key_range}}
"""

[[contract]]
name = "drop old table"
sql = "drop table orders"

[[abort]]
name = "drop new table"
sql = "drop table if exists orders_v2"
"#;

/// Inserts (at random places in the key space), updates and deletes orders
/// of the seeded merchants until stopped.
async fn order_writer(pool: PgPool, stop: Arc<AtomicBool>) -> u64 {
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        for sql in [
            "insert into orders (merchant_id, id, total)
             select merchant_id, gen_random_uuid(), 12.34 from orders tablesample bernoulli (1) limit 1",
            "update orders set total = total + 1
             where (merchant_id, id) = (select merchant_id, id from orders tablesample bernoulli (1) limit 1)",
            "delete from orders
             where (merchant_id, id) = (select merchant_id, id from orders tablesample bernoulli (1) limit 1)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
            writes += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writes
}

#[tokio::test]
async fn a_composite_uuid_key_backfills_resumes_and_validates_under_writes() {
    let (_pg, pool, dir) = cluster("composite", ORDERS).await;
    let migrator = Migrator::open(pool.clone(), Plan::parse(ORDERS_PLAN).unwrap())
        .await
        .unwrap();
    assert_eq!(migrator.lint().await.unwrap(), []);
    migrator.expand().await.unwrap();

    // Interrupted after the first batches (the future is dropped mid-run).
    tokio::select! {
        r = migrator.backfill() => panic!("the backfill finished before it was interrupted: {r:?}"),
        () = first_batch(&pool, "orders_minor") => {}
    }
    // The interrupted run is gone, and its connections with it: a connection
    // whose transaction was dropped mid-statement must not serve the writer
    // below, whose statements would then run inside that open transaction
    // (seen once: a writer's delete held its row locks, idle in transaction,
    // and the resumed backfill waited on it for ever).
    drop(migrator);
    pool.close().await;
    let pool = PgPool::connect(&_pg.url("postgres")).await.unwrap();
    let migrator = Migrator::open(pool.clone(), Plan::parse(ORDERS_PLAN).unwrap())
        .await
        .unwrap();
    let (int, key, done): (Option<i64>, Option<Vec<String>>, i64) = sqlx::query_as(
        "select backfill_cursor, backfill_cursor_key, rows_backfilled from pgshift.migrations",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let key = key.expect("a cursor of both key columns");
    assert_eq!((int, key.len()), (None, 2));
    assert!(done > 0 && done < 4000, "interrupted mid-way: {done}");
    // Each batch commits with its cursor: the new shape holds exactly the rows up to it.
    let (copied, below): (i64, i64) = sqlx::query_as(
        "select (select count(*) from orders_v2),
                (select count(*) from orders where (merchant_id, id) <= ($1::uuid, $2::uuid))",
    )
    .bind(&key[0])
    .bind(&key[1])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((copied, done), (below, below));
    let status = migrator.status().await.unwrap();
    assert_eq!(status.backfill_cursor.as_ref(), Some(&key));
    assert!(
        cli::status_line(&status).contains(&format!("(cursor ({}, {}))", key[0], key[1])),
        "{}",
        cli::status_line(&status)
    );

    // Resumed while a writer inserts, updates and deletes all over the key space.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(order_writer(pool.clone(), stop.clone()));
    let report = migrator.backfill().await.unwrap();
    assert!(report.rows > 0 && report.batches > 1, "{report:?}");
    migrator.validate().await.expect("both shapes agree");
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);
    let report = migrator.validate().await.unwrap();
    let rows: i64 = scalar(&pool, "select count(*) from orders").await;
    assert_eq!(report.rows, rows);
    assert!(report.ranges > 5, "{report:?}");

    // A row the new shape got wrong fails its range, named by both columns.
    sqlx::query(
        "update orders_v2 set total_minor = total_minor + 1
         where (merchant_id, id) = (select merchant_id, id from orders_v2 order by merchant_id desc, id desc limit 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = migrator.validate().await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Validation(_)), "{message}");
    assert!(
        message.contains("1 of ") && message.contains(")]") && message.contains("(("),
        "{message}"
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- A cursor recorded by an older pgshift (bigint only) resumes.

const ACCOUNTS: &str = "
create table accounts (id bigserial primary key, balance numeric(12, 2) not null);
insert into accounts (balance) select (g % 1000) / 10.0 from generate_series(1, 5000) g;";

const ACCOUNTS_PLAN: &str = r#"
name = "accounts_cents"

[[expand]]
name = "accounts_v2"
sql = "create table accounts_v2 (id bigint primary key, balance_cents bigint not null)"

[backfill]
source = "accounts"
key = "id"
batch_size = 300
transform = """
insert into accounts_v2 (id, balance_cents)
select id, round(balance * 100)::bigint from accounts where id > $1 and id <= $2
on conflict (id) do nothing
"""

[validate]
chunk_size = 700
source = "select count(*), md5(string_agg(id || ':' || round(balance * 100)::bigint, ',' order by id)) from accounts where id > $1 and id <= $2"
target = "select count(*), md5(string_agg(id || ':' || balance_cents, ',' order by id)) from accounts_v2 where id > $1 and id <= $2"

[[abort]]
name = "drop new table"
sql = "drop table if exists accounts_v2"
"#;

#[tokio::test]
async fn a_bigint_cursor_recorded_by_an_older_pgshift_resumes() {
    let (_pg, pool, dir) = cluster("old-cursor", ACCOUNTS).await;
    let migrator = Migrator::open(pool.clone(), Plan::parse(ACCOUNTS_PLAN).unwrap())
        .await
        .unwrap();
    migrator.expand().await.unwrap();
    // The state as an older pgshift left it mid-backfill: no text cursor
    // column, the bigint cursor at 2500 and the rows up to it copied.
    sqlx::raw_sql(
        "alter table pgshift.migrations drop column backfill_cursor_key;
         insert into accounts_v2 (id, balance_cents)
         select id, round(balance * 100)::bigint from accounts where id <= 2500;
         update pgshift.migrations set backfill_cursor = 2500, rows_backfilled = 2500;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let status = migrator.status().await.expect("status reads the old state");
    assert_eq!(status.backfill_cursor, Some(vec!["2500".to_owned()]));

    let report = migrator.backfill().await.unwrap();
    assert_eq!(report.rows, 2500, "only the rows past the old cursor");
    let (int, key, done): (Option<i64>, Option<Vec<String>>, i64) = sqlx::query_as(
        "select backfill_cursor, backfill_cursor_key, rows_backfilled from pgshift.migrations",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (int, key, done),
        (Some(5000), Some(vec!["5000".to_owned()]), 5000),
        "the state column is back, and the bigint cursor is still kept"
    );
    migrator.validate().await.unwrap();
    assert_eq!(migrator.status().await.unwrap().phase(), Phase::Validated);
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Deletes during the backfill (a UUID key of one column).

const ITEMS: &str = "
create table items (id uuid primary key, price numeric(10, 2) not null);
insert into items select gen_random_uuid(), (g % 500) / 4.0 from generate_series(1, 4000) g;";

/// The plan; its trigger copies deletes only when `deletes` is on.
fn items_plan(deletes: bool) -> Plan {
    let (events, on_delete) = if deletes {
        (
            "insert or update or delete",
            "if tg_op = 'DELETE' then
        delete from items_v2 where id = old.id;
        return old;
    end if;",
        )
    } else {
        ("insert or update", "")
    };
    let text = format!(
        r#"
name = "items_cents"

[[expand]]
name = "items_v2"
sql = "create table items_v2 (id uuid primary key, price_cents bigint not null)"

[[dual_write]]
name = "sync trigger"
sql = """
create function items_sync() returns trigger language plpgsql as $$
begin
    {on_delete}
    insert into items_v2 (id, price_cents) values (new.id, round(new.price * 100)::bigint)
    on conflict (id) do update set price_cents = excluded.price_cents;
    return new;
end $$;
create trigger items_sync after {events} on items for each row execute function items_sync();
"""

[backfill]
source = "items"
key = "id"
batch_size = 100
max_batch_size = 100
duty_cycle = 0.5
transform = """
insert into items_v2 (id, price_cents)
select id, round(price * 100)::bigint from items where {{{{key_range}}}}
for key share
on conflict (id) do nothing
"""

[validate]
chunk_size = 500
source = "select count(*), md5(string_agg(id || ':' || round(price * 100)::bigint, ',' order by id)) from items where {{{{key_range}}}}"
target = "select count(*), md5(string_agg(id || ':' || price_cents, ',' order by id)) from items_v2 where {{{{key_range}}}}"

[[abort]]
name = "drop new table"
sql = "drop table if exists items_v2"
"#
    );
    Plan::parse(&text).unwrap()
}

/// Deletes rows all over the key space, one at a time, from the first batch
/// until `stop`; returns how many.
async fn deleter(pool: PgPool, stop: Arc<AtomicBool>) -> u64 {
    first_batch(&pool, "items_cents").await;
    let mut deleted = 0;
    while !stop.load(Ordering::Relaxed) {
        let done = sqlx::query(
            "delete from items where id = (select id from items tablesample bernoulli (2) limit 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        deleted += done.rows_affected();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    deleted
}

/// Backfills while rows are deleted; how many rows the new shape still has
/// that the old one deleted.
async fn backfill_while_deleting(pool: &PgPool, migrator: &Migrator) -> i64 {
    migrator.expand().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let deletes = tokio::spawn(deleter(pool.clone(), stop.clone()));
    migrator.backfill().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(
        deletes.await.unwrap() > 20,
        "rows were deleted during the backfill"
    );
    scalar(
        pool,
        "select count(*) from items_v2 n where not exists (select 1 from items o where o.id = n.id)",
    )
    .await
}

#[tokio::test]
async fn deletes_during_the_backfill_must_reach_the_new_shape_or_validation_fails() {
    let (_pg, pool, dir) = cluster("deletes", ITEMS).await;

    // A dual-write that forgets deletes: rows deleted behind the cursor stay
    // in the new shape, and validation says where.
    let forgetful = Migrator::open(pool.clone(), items_plan(false))
        .await
        .unwrap();
    let stale = backfill_while_deleting(&pool, &forgetful).await;
    assert!(stale > 0, "some deletes hit rows already copied");
    let err = forgetful.validate().await.unwrap_err();
    assert!(
        matches!(&err, Error::Validation(m) if m.contains("key ranges differ")),
        "{err}"
    );
    forgetful.abort().await.unwrap();

    // The trigger copies deletes (and the transform reads FOR KEY SHARE, so a
    // delete racing the batch that copies its row waits for that batch):
    // nothing deleted is left, and validation passes.
    let careful = Migrator::open(pool.clone(), items_plan(true))
        .await
        .unwrap();
    assert_eq!(careful.lint().await.unwrap(), []);
    let stale = backfill_while_deleting(&pool, &careful).await;
    assert_eq!(stale, 0, "every delete reached the new shape");
    let report = careful.validate().await.unwrap();
    assert_eq!(
        report.rows,
        scalar::<i64>(&pool, "select count(*) from items").await
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Lint and plan checks for keys.

#[tokio::test]
async fn lint_checks_the_key_against_the_live_table() {
    let setup = "
        create table docs (id uuid primary key, body jsonb, note text, kind json not null);
        create table nums (id bigint primary key, n int);";
    let (_pg, pool, dir) = cluster("lint", setup).await;
    let plan = |key: &str, range: &str| {
        Plan::parse(&format!(
            r#"
name = "docs_v2"
[backfill]
source = "docs"
key = {key}
transform = "insert into docs_v2 select * from docs where {range} on conflict do nothing"
[validate]
source = "select count(*), null::text from docs where {range}"
target = "select count(*), null::text from docs_v2 where {range}"
"#
        ))
        .unwrap()
    };
    let rules = |plan: Plan| {
        let pool = pool.clone();
        async move {
            let findings = Migrator::open(pool, plan)
                .await
                .unwrap()
                .lint()
                .await
                .unwrap();
            findings
                .into_iter()
                .map(|f| (f.rule, f.step))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(rules(plan(r#""id""#, "{{key_range}}")).await, []);
    assert_eq!(
        rules(plan(r#""id""#, "id > $1 and id <= $2")).await,
        [
            ("key-not-integer", "backfill.transform[0]".to_owned()),
            ("key-not-integer", "validate.source".to_owned()),
            ("key-not-integer", "validate.target".to_owned()),
        ]
    );
    assert_eq!(
        rules(plan(r#"["id", "note"]"#, "{{key_range}}")).await,
        [("key-nullable", "backfill.key note".to_owned())]
    );
    assert_eq!(
        rules(plan(r#""kind""#, "{{key_range}}")).await,
        [("key-not-orderable", "backfill.key".to_owned())]
    );
    assert_eq!(
        rules(plan(r#""nope""#, "{{key_range}}")).await,
        [("missing-column", "backfill.key nope".to_owned())]
    );
    assert_eq!(
        rules(plan(r#""id""#, "true")).await.len(),
        3,
        "no-key-range: a statement that selects no range"
    );
    let mut bigint = plan(r#""id""#, "id > $1 and id <= $2");
    bigint.backfill.source = "nums".into();
    assert_eq!(rules(bigint).await, [], "$1/$2 with one integer key column");

    // Unknown placeholders and a column named twice are refused when the plan is read.
    let unknown = ACCOUNTS_PLAN.replace("where id > $1 and id <= $2\non", "where {{range}}\non");
    assert_ne!(unknown, ACCOUNTS_PLAN);
    let err = Plan::parse(&unknown).unwrap_err().to_string();
    assert!(
        err.contains("backfill.transform[0]") && err.contains("unknown placeholder {{range}}"),
        "{err}"
    );
    let twice = ACCOUNTS_PLAN.replace(r#"key = "id""#, r#"key = ["id", "id"]"#);
    assert!(Plan::parse(&twice)
        .unwrap_err()
        .to_string()
        .contains("named twice"));
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}
