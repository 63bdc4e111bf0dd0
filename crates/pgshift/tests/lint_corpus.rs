//! Ground truth for lint: every statement of the corpus is run on PostgreSQL
//! against a populated table, and what it did is measured. The verdict comes
//! from the measurement, never from the statement's text; lint (and squawk, the
//! reference linter, on the same statements) must agree with it.
//!
//! Measured inside a transaction that is rolled back: the locks held
//! (`pg_locks`), rewrites (`relfilenode` of any table, index or materialized
//! view changed), rows read and written (`pg_stat_xact_user_tables`), what the
//! old shape loses (columns, relations, unique keys, enum labels, partitions)
//! and whether the catalog changed at all. Statements that cannot run in a
//! transaction (`CONCURRENTLY`, `VACUUM`) run on their own while another
//! session holds a writer's lock on every table (and a reader's on the view):
//! they block if they wait for a relation lock.
//!
//! A statement is **unsafe** when, on a live table, it
//! - fails (a migration that fails is not online), or
//! - loses part of the old shape (expand must keep it whole), or
//! - writes every row of a table in one statement, or
//! - holds a lock that blocks writers (readers, for a materialized view) while it
//!   rewrites or reads a table, or
//! - holds such a lock and changes nothing at all (an explicit `LOCK`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgshift::lint::{lint, Catalog};
use pgshift::Plan;
use sqlx::{Connection, PgConnection, PgPool};

const FIXTURE: &str = r#"
create type mood as enum ('happy', 'sad');
create domain posint as integer;
create table parent (id bigint primary key);
insert into parent select g from generate_series(1, 1000) g;
create table t (
    id bigint primary key,
    parent_id bigint,
    name varchar(20),
    note text,
    amount numeric(10, 2) default 0,
    feeling mood,
    qty posint,
    created timestamp
);
insert into t select g, 1 + g % 1000, 'n' || g, 'note ' || g, g / 10.0, 'happy', g % 100,
    '2026-01-01'::timestamp + g * interval '1 minute'
from generate_series(1, 10000) g;
create index t_name_idx on t (name);
create unique index t_name_uidx on t (name);
alter table t add constraint t_note_nn check (note is not null);
alter table t add constraint t_amount_nn check (amount is not null) not valid;
create table nopk (id bigint not null, v text);
insert into nopk select g, 'v' || g from generate_series(1, 10000) g;
create materialized view mv as select parent_id, count(*) as n from t group by parent_id;
create unique index mv_key on mv (parent_id);
create table p (id bigint, at date) partition by range (at);
create table p2025 partition of p for values from ('2025-01-01') to ('2026-01-01');
create table p2026 partition of p for values from ('2026-01-01') to ('2027-01-01');
insert into p select g, '2025-06-01'::date + (g % 400) from generate_series(1, 5000) g;
analyze;
"#;

/// Single statements as they would appear in an expand step.
const CORPUS: &[&str] = &[
    // Indexes.
    "create index t_note_idx on t (note)",
    "create unique index t_note_uq on t (note)",
    "create index concurrently t_note_idx on t (note)",
    "create unique index concurrently t_note_uq on t (note)",
    "create index t_name_lower on t (lower(name)) where amount > 0",
    "drop index t_name_idx",
    "drop index concurrently t_name_idx",
    "reindex table t",
    "reindex index t_name_idx",
    "reindex table concurrently t",
    "reindex index concurrently t_name_idx",
    // Constraints.
    "alter table t add constraint t_amount_pos check (amount >= 0)",
    "alter table t add check (amount >= 0)",
    "alter table t add constraint t_amount_pos check (amount >= 0) not valid",
    "alter table t add constraint t_parent_fk foreign key (parent_id) references parent (id)",
    "alter table t add foreign key (parent_id) references parent (id)",
    "alter table t add constraint t_parent_fk foreign key (parent_id) references parent (id) not valid",
    "alter table t validate constraint t_amount_nn",
    "alter table t add constraint t_note_key unique (note)",
    "alter table t add unique (note)",
    "alter table t add constraint t_name_uidx unique using index t_name_uidx",
    "alter table nopk add primary key (id)",
    "alter table t add constraint t_ex exclude using btree (note with =)",
    "alter table t drop constraint t_pkey",
    "alter table t drop constraint t_note_nn",
    "alter table t rename constraint t_note_nn to t_note_present",
    "alter domain posint add constraint posint_pos check (value >= 0)",
    "alter domain posint add check (value >= 0)",
    "alter domain posint add constraint posint_pos check (value >= 0) not valid",
    // NOT NULL.
    "alter table t alter column amount set not null",
    "alter table t alter column note set not null",
    "alter table t add column n int not null",
    "alter table t add column n int not null default 0",
    // Columns.
    "alter table t add column c int",
    "alter table t add column c text default 'lock table t'",
    "alter table t add column c timestamptz default now()",
    "alter table t add column c uuid default gen_random_uuid()",
    "alter table t add column c float8 default random()",
    "alter table t add column c timestamptz default clock_timestamp()",
    "alter table t add column c text generated always as (upper(note)) stored",
    "alter table t add column c bigserial",
    "alter table t add column c serial",
    "alter table t add column c bigint generated always as identity",
    "alter table t add column c bigint references parent (id)",
    "alter table t add column c int check (c > 0)",
    "alter table t add column c int -- create index i on t (c)",
    "alter table t alter column amount set default 1",
    "alter table t alter column amount drop default",
    "alter table t alter column note set statistics 500",
    "alter table t rename column note to remark",
    "alter table t drop column note",
    "alter table t drop note",
    // Types.
    "alter table t alter column id type integer",
    "alter table t alter column amount type numeric(12, 3)",
    "alter table t alter column name type varchar(10)",
    "alter table t alter column note type varchar(100)",
    "alter table t alter column name type varchar(50)",
    "alter table t alter column name type text",
    "alter table t alter column amount type numeric(12, 2)",
    "alter table t alter column amount type numeric",
    "alter table t alter column name type varchar(30)",
    "alter type mood rename value 'sad' to 'blue'",
    "alter type mood add value 'calm'",
    // Tables.
    "alter table t rename to t2",
    "drop table nopk",
    "truncate t",
    "truncate table p",
    "alter table t set unlogged",
    "alter table t set (fillfactor = 90)",
    "alter table p detach partition p2025",
    "alter table p detach partition p2026 concurrently",
    "create table audit (id bigint primary key, at timestamptz)",
    "create view v as select id, note from t",
    "comment on column t.note is 'free text'",
    "alter table t enable row level security",
    // Maintenance.
    "lock table t",
    "lock t in share mode",
    "lock table only t in exclusive mode",
    "vacuum full t",
    "vacuum (full) t",
    "vacuum (full, analyze) t",
    "vacuum t",
    "vacuum (analyze) t",
    "analyze t",
    "cluster t using t_pkey",
    "refresh materialized view mv",
    "refresh materialized view concurrently mv",
    // Data.
    "update t set amount = 0",
    "delete from t",
    "update t set amount = 0 where id = 1",
    "delete from t where id = 1",
    "insert into parent values (5000)",
    "select 1",
];

#[derive(Debug, Default)]
struct Measured {
    error: Option<String>,
    /// Relations whose storage was replaced.
    rewritten: BTreeSet<String>,
    /// Tables whose rows were read.
    scanned: BTreeSet<String>,
    /// Relation → the locks held on it that block writers (readers, for a view).
    blocking: BTreeMap<String, String>,
    /// What the old shape lost.
    lost: BTreeSet<String>,
    /// Tables of which every row was updated or deleted.
    wrote_all: BTreeSet<String>,
    catalog_changed: bool,
    data_changed: bool,
    /// Run outside a transaction (CONCURRENTLY, VACUUM): locks probed by blocking.
    outside_transaction: bool,
}

impl Measured {
    fn is_unsafe(&self) -> bool {
        let blocks = !self.blocking.is_empty();
        self.error.is_some()
            || !self.lost.is_empty()
            || !self.wrote_all.is_empty()
            || (blocks && (!self.rewritten.is_empty() || !self.scanned.is_empty()))
            || (blocks && !self.catalog_changed && !self.data_changed)
    }

    fn why(&self) -> String {
        let mut why = Vec::new();
        if let Some(e) = &self.error {
            why.push(format!("fails: {e}"));
        }
        if !self.lost.is_empty() {
            why.push(format!("loses {:?}", self.lost));
        }
        if !self.wrote_all.is_empty() {
            why.push(format!("writes every row of {:?}", self.wrote_all));
        }
        if !self.blocking.is_empty() {
            why.push(format!("blocks with {:?}", self.blocking));
        }
        if !self.rewritten.is_empty() {
            why.push(format!("rewrites {:?}", self.rewritten));
        }
        if !self.scanned.is_empty() {
            why.push(format!("reads {:?}", self.scanned));
        }
        if self.outside_transaction {
            why.push("outside a transaction".into());
        }
        if why.is_empty() {
            why.push("catalog only".into());
        }
        why.join(", ")
    }
}

const RELFILENODES: &str = "select c.relname::text, c.relfilenode::bigint from pg_class c
    where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'i', 'm')";
const ROWS: &str = "select relname::text, (seq_tup_read + coalesce(idx_tup_fetch, 0))::bigint,
    (n_tup_upd + n_tup_del)::bigint, (n_tup_ins + n_tup_upd + n_tup_del)::bigint
    from pg_stat_xact_user_tables where schemaname = 'public'";
const SHAPE: &str = "
    select 'column ' || c.relname || '.' || a.attname from pg_attribute a join pg_class c on c.oid = a.attrelid
    where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'm', 'v') and a.attnum > 0 and not a.attisdropped
    union all select 'relation ' || relname from pg_class where relnamespace = 'public'::regnamespace and relkind in ('r', 'p', 'm', 'v', 'i')
    union all select 'label ' || t.typname || '.' || e.enumlabel from pg_enum e join pg_type t on t.oid = e.enumtypid
    union all select 'key ' || conname from pg_constraint where connamespace = 'public'::regnamespace and contype in ('u', 'p', 'x')
    union all select 'partition ' || inhrelid::regclass::text || ' of ' || inhparent::regclass::text from pg_inherits";
const CATALOG: &str = "select md5(coalesce(string_agg(x, ',' order by x), '')) from (
    select concat_ws('/', c.relname, c.relfilenode, c.relnatts, c.relkind, c.relpersistence, c.reloptions, c.relrowsecurity) as x
        from pg_class c where c.relnamespace = 'public'::regnamespace
    union all select concat_ws('/', conname, convalidated) from pg_constraint where connamespace = 'public'::regnamespace
    union all select concat_ws('/', c.relname, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.atthasdef, a.attstattarget)
        from pg_attribute a join pg_class c on c.oid = a.attrelid where c.relnamespace = 'public'::regnamespace
    union all select typname::text from pg_type where typnamespace = 'public'::regnamespace
    union all select concat_ws('/', adrelid, adnum, pg_get_expr(adbin, adrelid)) from pg_attrdef
    union all select enumlabel::text from pg_enum
    union all select coalesce(description, '') from pg_description) s";
const LOCKS: &str = "select c.relname::text, c.relkind::text, l.mode from pg_locks l join pg_class c on c.oid = l.relation
    where l.pid = pg_backend_pid() and l.locktype = 'relation' and c.relnamespace = 'public'::regnamespace";

/// Lock modes that conflict with a writer's ROW EXCLUSIVE.
fn blocks_writers(mode: &str) -> bool {
    matches!(
        mode,
        "ShareLock" | "ShareRowExclusiveLock" | "ExclusiveLock" | "AccessExclusiveLock"
    )
}

struct Snapshot {
    relfilenodes: BTreeMap<String, i64>,
    rows: BTreeMap<String, (i64, i64, i64)>,
    shape: BTreeSet<String>,
    catalog: String,
}

async fn snapshot(conn: &mut PgConnection) -> Snapshot {
    let relfilenodes = sqlx::query_as::<_, (String, i64)>(RELFILENODES)
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let rows = sqlx::query_as::<_, (String, i64, i64, i64)>(ROWS)
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(t, read, upd, all)| (t, (read, upd, all)))
        .collect();
    let shape = sqlx::query_scalar::<_, String>(SHAPE)
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let catalog = sqlx::query_scalar::<_, String>(CATALOG)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    Snapshot {
        relfilenodes,
        rows,
        shape,
        catalog,
    }
}

fn compare(before: &Snapshot, after: &Snapshot, m: &mut Measured, sizes: &BTreeMap<String, i64>) {
    for (rel, node) in &before.relfilenodes {
        if after.relfilenodes.get(rel).is_some_and(|n| n != node) {
            m.rewritten.insert(rel.clone());
        }
    }
    for (table, (read, upd, all)) in &after.rows {
        let (r0, u0, a0) = before.rows.get(table).copied().unwrap_or_default();
        if read - r0 > 0 {
            m.scanned.insert(table.clone());
        }
        let size = sizes.get(table).copied().unwrap_or(i64::MAX);
        if upd - u0 >= size && size > 0 {
            m.wrote_all.insert(table.clone());
        }
        if all - a0 > 0 {
            m.data_changed = true;
        }
    }
    m.lost = before.shape.difference(&after.shape).cloned().collect();
    m.catalog_changed = before.catalog != after.catalog;
}

async fn reset(pool: &PgPool) {
    sqlx::raw_sql("drop schema if exists public cascade; create schema public;")
        .execute(pool)
        .await
        .unwrap();
    sqlx::raw_sql(FIXTURE).execute(pool).await.unwrap();
}

async fn table_sizes(pool: &PgPool) -> BTreeMap<String, i64> {
    let mut sizes = BTreeMap::new();
    for table in ["t", "parent", "nopk", "p2025", "p2026"] {
        let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        sizes.insert(table.to_owned(), n);
    }
    sizes
}

/// Runs `sql` in a transaction that is rolled back, measuring what it did;
/// `None` when it cannot run in a transaction.
async fn measure_in_transaction(
    url: &str,
    sql: &str,
    sizes: &BTreeMap<String, i64>,
) -> Option<Measured> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("begin").execute(&mut conn).await.unwrap();
    let before = snapshot(&mut conn).await;
    let mut m = Measured::default();
    sqlx::raw_sql("savepoint s")
        .execute(&mut conn)
        .await
        .unwrap();
    match sqlx::raw_sql(sql).execute(&mut conn).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25001") => return None,
        Err(e) => {
            m.error = Some(e.to_string());
            sqlx::raw_sql("rollback to savepoint s")
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Ok(_) => {
            for (rel, kind, mode) in sqlx::query_as::<_, (String, String, String)>(LOCKS)
                .fetch_all(&mut conn)
                .await
                .unwrap()
            {
                let blocks = if kind == "m" {
                    mode == "AccessExclusiveLock"
                } else {
                    blocks_writers(&mode)
                };
                if blocks {
                    m.blocking.insert(rel, mode);
                }
            }
            let after = snapshot(&mut conn).await;
            compare(&before, &after, &mut m, sizes);
        }
    }
    sqlx::raw_sql("rollback").execute(&mut conn).await.unwrap();
    Some(m)
}

/// Runs `sql` on its own while another session holds a writer's lock on every
/// table and a reader's on the view: blocking means waiting for a relation lock.
async fn measure_outside_transaction(
    pool: &PgPool,
    url: &str,
    sql: &str,
    sizes: &BTreeMap<String, i64>,
) -> Measured {
    let mut m = Measured {
        outside_transaction: true,
        ..Measured::default()
    };
    let mut holder = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "begin; lock table t, parent, nopk, p, p2025, p2026 in row exclusive mode; select count(*) from mv;",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let mut conn = PgConnection::connect(url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let before = snapshot(&mut conn).await;
    let statement = async { sqlx::raw_sql(sql).execute(&mut conn).await.map(|_| ()) };
    let probe = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let waiting: Vec<(String, String)> = sqlx::query_as(
            "select c.relname::text, l.mode from pg_locks l join pg_class c on c.oid = l.relation
             where l.pid = $1 and l.locktype = 'relation' and not l.granted",
        )
        .bind(pid)
        .fetch_all(pool)
        .await
        .unwrap();
        sqlx::raw_sql("commit").execute(&mut holder).await.unwrap();
        waiting
    };
    let (result, waiting) = tokio::join!(statement, probe);
    for (rel, mode) in waiting {
        m.blocking.insert(rel, mode);
    }
    if let Err(e) = result {
        m.error = Some(e.to_string());
    }
    let after = snapshot(&mut conn).await;
    compare(&before, &after, &mut m, sizes);
    // Outside a transaction the rows-read counters are not this statement's alone.
    m.scanned.clear();
    m
}

/// pgshift's verdict: the statement as the only expand step of a plan.
fn pgshift_flags(sql: &str, catalog: &Catalog) -> Vec<&'static str> {
    let plan = format!(
        "name = \"corpus\"\n[backfill]\nsource = \"t\"\nkey = \"id\"\ntransform = \"select 1\"\n\
         [validate]\nsource = \"s\"\ntarget = \"t\"\n[[expand]]\nname = \"step\"\nsql = '''{sql}'''\n"
    );
    let plan = Plan::parse(&plan).expect("corpus plan parses");
    lint(&plan, catalog).into_iter().map(|f| f.rule).collect()
}

/// squawk's verdict with its default rules, less those about style (column
/// types, `IF NOT EXISTS`, name length, timeouts, transaction shape), which
/// say nothing about what a statement locks.
fn squawk_flags(sql: &str) -> Vec<String> {
    use squawk_linter::{Linter, Rule};
    let style = [
        Rule::PreferBigintOverInt,
        Rule::PreferBigintOverSmallint,
        Rule::PreferIdentity,
        Rule::PreferTextField,
        Rule::PreferTimestampTz,
        Rule::BanCharField,
        Rule::PreferRobustStmts,
        Rule::IdentifierTooLong,
        Rule::RequireTimeoutSettings,
        Rule::RequireLockTimeout,
        Rule::RequireStatementTimeout,
        Rule::TransactionNesting,
        Rule::BanUncommittedTransaction,
        Rule::UnusedIgnore,
        Rule::RequireTableSchema,
    ];
    let mut linter = Linter::with_rules(&[], &style);
    let parsed = squawk_syntax::SourceFile::parse(sql);
    linter
        .lint(&parsed, sql)
        .into_iter()
        .map(|v| format!("{:?}", v.code))
        .collect()
}

#[tokio::test]
async fn lint_agrees_with_what_postgres_does() {
    let dir = std::env::temp_dir().join(format!("pgshift-corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = localpg::LocalPg::start_ephemeral(&dir).expect("private cluster");
    let url = pg.url("postgres");
    let pool = PgPool::connect(&url).await.unwrap();

    let mut rows = Vec::new();
    for sql in CORPUS {
        reset(&pool).await;
        let sizes = table_sizes(&pool).await;
        let catalog = Catalog::load(&pool).await.unwrap();
        let flags = pgshift_flags(sql, &catalog);
        let squawk = squawk_flags(sql);
        let measured = match measure_in_transaction(&url, sql, &sizes).await {
            Some(m) => m,
            None => {
                reset(&pool).await;
                measure_outside_transaction(&pool, &url, sql, &sizes).await
            }
        };
        rows.push((*sql, measured, flags, squawk));
    }

    let (mut unsafe_n, mut safe_n) = (0, 0);
    let (mut ours_unsafe, mut ours_safe, mut squawk_unsafe, mut squawk_safe) = (0, 0, 0, 0);
    let mut disagreements = Vec::new();
    for (sql, m, flags, squawk) in &rows {
        let truth = m.is_unsafe();
        let ours = !flags.is_empty();
        let theirs = !squawk.is_empty();
        if truth {
            unsafe_n += 1;
            ours_unsafe += usize::from(ours);
            squawk_unsafe += usize::from(theirs);
        } else {
            safe_n += 1;
            ours_safe += usize::from(!ours);
            squawk_safe += usize::from(!theirs);
        }
        println!(
            "{:<7} pgshift {:<6} squawk {:<6} {sql}\n        measured: {}\n        pgshift: {flags:?}\n        squawk: {squawk:?}",
            if truth { "UNSAFE" } else { "safe" },
            if ours == truth { "agrees" } else { "WRONG" },
            if theirs == truth { "agrees" } else { "WRONG" },
            m.why(),
        );
        if ours != truth {
            disagreements.push(format!(
                "{sql}: measured {} ({}), pgshift {flags:?}",
                if truth { "unsafe" } else { "safe" },
                m.why()
            ));
        }
    }
    let pct = |a: usize, n: usize| 100.0 * a as f64 / n.max(1) as f64;
    println!(
        "\ncorpus: {} statements, {unsafe_n} unsafe and {safe_n} safe as measured on PostgreSQL",
        rows.len()
    );
    println!(
        "pgshift: {ours_unsafe}/{unsafe_n} unsafe caught ({:.1} %), {ours_safe}/{safe_n} safe passed ({:.1} %)",
        pct(ours_unsafe, unsafe_n),
        pct(ours_safe, safe_n)
    );
    println!(
        "squawk:  {squawk_unsafe}/{unsafe_n} unsafe caught ({:.1} %), {squawk_safe}/{safe_n} safe passed ({:.1} %)",
        pct(squawk_unsafe, unsafe_n),
        pct(squawk_safe, safe_n)
    );
    assert!(
        pct(ours_unsafe, unsafe_n) >= 95.0 && pct(ours_safe, safe_n) >= 95.0,
        "lint disagrees with PostgreSQL:\n{}",
        disagreements.join("\n")
    );
    // The corpus is balanced enough for both figures to mean something.
    assert!(
        unsafe_n >= 30 && safe_n >= 30,
        "{unsafe_n} unsafe, {safe_n} safe"
    );
    drop(pool);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
