//! Hostile cases: roles (see `hostile/mod.rs`). What whoever runs SQL as a
//! service role (a stolen pool, an injected query) or reads the logs gets.

use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

use mercato::db::{APP_ROLE, MOVER_ROLE, WORKER_ROLE};

/// Everything a tracing subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A private cluster that asks every connection for its password (SCRAM).
struct PasswordCluster {
    pg: localpg::LocalPg,
    dir: std::path::PathBuf,
}

impl PasswordCluster {
    fn start() -> PasswordCluster {
        let dir = std::env::temp_dir().join(format!("mercato-roles-{}", Uuid::now_v7().simple()));
        let pg = localpg::LocalPg::start_ephemeral(&dir).expect("a private cluster starts");
        PasswordCluster { pg, dir }
    }
}

impl Drop for PasswordCluster {
    fn drop(&mut self) {
        let _ = self.pg.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 35 item 6: the service roles carried the owner's password (on the
/// embedded default, the superuser's), set by a statement the owner's pool
/// wrote to the log in clear on every start.
#[tokio::test]
async fn service_roles_have_their_own_secret_and_the_owners_password_never_reaches_the_log() {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("sqlx=debug"))
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let cluster = PasswordCluster::start();
    let owner_url = cluster.pg.url("postgres");
    let owner_opts: PgConnectOptions = owner_url.parse().expect("owner URL");
    let owner_password = url_password(&owner_url);

    let db = mercato::db::prepare(&owner_url, 2).await.expect("prepare");
    // The cluster asks for passwords: the pools logged in with the roles' own.
    for (pool, role) in [(&db.app, APP_ROLE), (&db.worker, WORKER_ROLE)] {
        let user: String = sqlx::query_scalar("select current_user::text")
            .fetch_one(pool)
            .await
            .expect("the role logs in with its own secret");
        assert_eq!(user, role);
    }

    // The mover's pools are made apart (`cells::mover::Pools::of_owners`),
    // from the same derivation.
    let mover = PgPool::connect_with(mercato::db::service_role_options(&owner_opts, MOVER_ROLE))
        .await
        .expect("the mover role logs in with its own secret");
    let user: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(&mover)
        .await
        .expect("current_user");
    assert_eq!(user, MOVER_ROLE);
    mover.close().await;

    let owner = PgPool::connect(&owner_url).await.expect("owner connects");
    let stored: Vec<(String, Option<String>)> = sqlx::query_as(
        "select rolname::text, rolpassword from pg_authid where rolname = any ($1) order by 1",
    )
    .bind(vec![APP_ROLE, WORKER_ROLE, MOVER_ROLE])
    .fetch_all(&owner)
    .await
    .expect("pg_authid");
    assert_eq!(stored.len(), 3);
    for (role, verifier) in &stored {
        let verifier = verifier.as_deref().unwrap_or_default();
        assert!(
            verifier.starts_with("SCRAM-SHA-256$4096:"),
            "{role} keeps a SCRAM verifier, not {verifier:?}"
        );
        assert!(!verifier.contains(&owner_password), "{role}");
    }
    for (i, (role, verifier)) in stored.iter().enumerate() {
        for (other, theirs) in &stored[i + 1..] {
            assert_ne!(
                verifier, theirs,
                "{role} and {other} each have their own secret"
            );
        }
    }
    for role in [APP_ROLE, WORKER_ROLE, MOVER_ROLE] {
        let with_owners = PgConnection::connect_with(&owner_opts.clone().username(role)).await;
        assert!(
            with_owners.is_err(),
            "{role} must not log in with the owner's password"
        );
    }

    let text = logs.text();
    assert!(
        text.contains("sqlx::query") && text.contains("create role"),
        "the capture sees the owner pool's statements:\n{text}"
    );
    assert!(
        !text.contains(&owner_password),
        "the owner's password is in the log:\n{text}"
    );
    db.app.close().await;
    db.worker.close().await;
    owner.close().await;
}

fn url_password(url: &str) -> String {
    let opts: PgConnectOptions = url.parse().expect("URL");
    let url = opts.to_url_lossy();
    let password = url
        .password()
        .expect("the private cluster's URL has a password");
    assert!(password.len() >= 16, "a password worth looking for");
    password.to_owned()
}

/// What each service role may do on each table of the schemas Mercato uses
/// (issue 35 item 7): the design, which the database is held to below.
/// Tenant tables (row-level security forced, with a policy; or a view that
/// reads them as its invoker, so their RLS binds it) are not listed:
/// every role has SELECT, INSERT, UPDATE, DELETE on each (but those in
/// `TENANT_TABLE_DENIED`), and RLS decides which rows. A platform table has
/// no RLS: a grant on it reaches every merchant's rows, so each one is
/// written out here.
const PLATFORM_ALLOWED: &[(&str, &str, &[&str])] = &[
    // Creating a merchant, its settings (admin routes), a slug, a key's merchant.
    (
        "public.merchants",
        APP_ROLE,
        &[
            "SELECT",
            "INSERT",
            "UPDATE(rate_limits,status,status_changed_at,status_reason,stock_strategy)",
        ],
    ),
    // The analytics export names merchants in its marts; the senders skip
    // suspended ones.
    ("public.merchants", WORKER_ROLE, &["SELECT(id,name,slug,status)"]),
    // Logins: a person found, made (an invitation accepted), their password
    // or second factor changed; never deleted (the trail names them).
    (
        "public.people",
        APP_ROLE,
        &[
            "SELECT",
            "INSERT",
            "UPDATE(operator,password_changed_at,password_hash,totp_secret)",
        ],
    ),
    // Sessions: opened, read on each request, revoked.
    (
        "public.sessions",
        APP_ROLE,
        &["SELECT", "INSERT", "UPDATE(revoked_at)"],
    ),
    // `mercato_absent` in the worker's policies.
    ("public.cell_absent", WORKER_ROLE, &["SELECT"]),
    // A live migration's phase and read switch, and the shadow reads' record
    // (written, never read back: a mismatch holds any merchant's values).
    ("pgshift.migrations", APP_ROLE, &["SELECT"]),
    (
        "pgshift.shadow_counts",
        APP_ROLE,
        &["SELECT", "INSERT", "UPDATE"],
    ),
    ("pgshift.shadow_mismatches", APP_ROLE, &["INSERT"]),
    // The mover (issue 35 item 7): a merchant's row copied into the target
    // cell, and a slug resolved (`mercato tenants`).
    ("public.merchants", MOVER_ROLE, &["SELECT", "INSERT"]),
    // The merchant's directory entry: made, `moving` for the cutover, flipped.
    (
        "public.tenant_directory",
        MOVER_ROLE,
        &["SELECT", "INSERT", "UPDATE(cell,moving,updated_at)"],
    ),
    // The move records: started, advanced, counted, resumed.
    (
        "public.tenant_moves",
        MOVER_ROLE,
        &[
            "SELECT",
            "INSERT",
            "UPDATE(changes_applied,copy_after,copy_table,cutover,finished_at,last_error,pause_ms,phase,rows_cleaned,rows_copied,updated_at)",
        ],
    ),
    // The cell's fence.
    (
        "public.cell_absent",
        MOVER_ROLE,
        &["SELECT", "INSERT", "UPDATE", "DELETE"],
    ),
    // The captured keys: replayed, then forgotten.
    ("public.move_changes", MOVER_ROLE, &["SELECT", "DELETE"]),
    // Each cell's schema version, which a move must match.
    (
        "public._sqlx_migrations",
        MOVER_ROLE,
        &["SELECT(success,version)"],
    ),
];

const TENANT_TABLE_ALLOWED: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE"];

/// Tenant tables a role may not touch at all: API keys and staff stay in the
/// main database whatever cell serves their merchant, so no move reads them.
const TENANT_TABLE_DENIED: &[(&str, &str)] = &[
    ("public.api_keys", MOVER_ROLE),
    ("public.staff", MOVER_ROLE),
    ("public.staff_invitations", MOVER_ROLE),
    ("public.publishable_keys", MOVER_ROLE),
];

/// The `security definer` functions (they run as the owner) the mover may
/// call: the directory and moves as requests read them, the fence of a
/// tenant transaction, and the owner's steps of a move (migration 0023).
const MOVER_DEFINER_FUNCTIONS: &[&str] = &[
    "mercato_capture_off(regclass,uuid)",
    "mercato_capture_on(regclass,uuid)",
    "mercato_directory_entry(uuid)",
    "mercato_enter(uuid)",
    "mercato_forget_departed_merchant(uuid)",
    "mercato_moves_of(uuid)",
    "mercato_transactions_begun_before(timestamp with time zone)",
];

/// Every privilege a service role holds on a table or view of `public` or
/// `pgshift`: `PRIV` for the whole table, `PRIV(col,…)` for some columns.
async fn service_role_grants(owner: &PgPool) -> Vec<(String, String, bool, String)> {
    sqlx::query_as(
        "with t as (
             select c.oid, n.nspname || '.' || c.relname as name,
                    (c.relforcerowsecurity and exists (select 1 from pg_policy p where p.polrelid = c.oid))
                    or (c.relkind = 'v' and 'security_invoker=true' = any (c.reloptions)) as tenant
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname in ('public', 'pgshift') and c.relkind in ('r', 'p', 'v', 'm', 'f')
         ), held as (
             select t.name, r.role, t.tenant, p.priv,
                    has_table_privilege(r.role, t.oid, p.priv) as whole,
                    (select string_agg(a.attname, ',' order by a.attname)
                     from pg_attribute a
                     where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped
                       and p.priv in ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                       and has_column_privilege(r.role, t.oid, a.attnum, p.priv)) as columns
             from t,
                  unnest(array['mercato_app', 'mercato_worker', 'mercato_mover']) as r(role),
                  unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) as p(priv)
         )
         select name, role, tenant,
                case when whole then priv else priv || '(' || columns || ')' end
         from held where whole or columns is not null
         order by 1, 2, 4",
    )
    .fetch_all(owner)
    .await
    .expect("grants")
}

#[tokio::test]
async fn service_roles_hold_only_the_grants_the_design_lists() {
    let app = crate::helpers::TestApp::spawn().await;
    // A live migration under way: pgshift's tables, with the app as reader.
    let plan = pgshift::Plan::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/plans/orders_money_customers.toml"),
    )
    .expect("plan");
    pgshift::Migrator::open(app.owner.clone(), plan)
        .await
        .expect("open")
        .expand()
        .await
        .expect("expand");

    let grants = service_role_grants(&app.owner).await;
    let mut refused = Vec::new();
    for (table, role, tenant, privilege) in &grants {
        let allowed = if *tenant {
            TENANT_TABLE_ALLOWED.contains(&privilege.as_str())
                && !TENANT_TABLE_DENIED.contains(&(table.as_str(), role.as_str()))
        } else {
            PLATFORM_ALLOWED
                .iter()
                .any(|(t, r, p)| t == table && r == role && p.contains(&privilege.as_str()))
        };
        if !allowed {
            refused.push(format!("{role}: {privilege} on {table}"));
        }
    }
    assert!(
        refused.is_empty(),
        "grants the design does not list:\n{}",
        refused.join("\n")
    );
    // The listing sees what it must judge: every platform grant the design
    // lists is held, and tenant tables are there.
    for (table, role, privileges) in PLATFORM_ALLOWED {
        for privilege in *privileges {
            assert!(
                grants
                    .iter()
                    .any(|(t, r, _, p)| t == table && r == role && p == privilege),
                "{role} is missing {privilege} on {table} (the design lists it): {grants:?}"
            );
        }
    }
    assert!(grants
        .iter()
        .any(|(t, _, tenant, _)| *tenant && t == "public.orders"));
    for role in [APP_ROLE, WORKER_ROLE, MOVER_ROLE] {
        assert!(
            grants
                .iter()
                .any(|(t, r, _, p)| t == "public.orders" && r == role && p == "UPDATE"),
            "{role} is listed with the tenant tables"
        );
    }

    // What runs as the owner on the mover's behalf: only the design's list.
    let definers: Vec<String> = sqlx::query_scalar(
        "select replace(p.oid::regprocedure::text, ', ', ',') from pg_proc p
         where p.pronamespace = 'public'::regnamespace and p.prosecdef
           and has_function_privilege($1, p.oid, 'EXECUTE')
         order by 1",
    )
    .bind(MOVER_ROLE)
    .fetch_all(&app.owner)
    .await
    .expect("functions");
    assert_eq!(
        definers, MOVER_DEFINER_FUNCTIONS,
        "the mover's definer functions"
    );
}

/// The capture of a moving merchant's writes skips the mover's own writes,
/// marked `mercato.mover = on`. Any role may set such a setting: the request
/// role could write uncaptured, and the target cell would never get the row.
#[tokio::test]
async fn the_request_role_cannot_turn_change_capture_off() {
    let app = crate::helpers::TestApp::spawn().await;
    let skipped = "select set_config('mercato.mover', 'on', true), mercato_mover_writes()";
    let mut tx = app.app_pool.begin().await.expect("begin");
    let (_, as_app): (String, bool) = sqlx::query_as(skipped)
        .fetch_one(&mut *tx)
        .await
        .expect("as the app role");
    assert!(!as_app, "the app role's writes are captured, mover or not");
    drop(tx);
    let mut tx = app.app_pool.begin().await.expect("begin");
    let denied = sqlx::query("select * from move_changes")
        .fetch_all(&mut *tx)
        .await
        .expect_err("move_changes holds customers' keys");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    drop(tx);
    let owner_opts: PgConnectOptions = app.db.owner_url.parse().expect("owner URL");
    let worker = PgPool::connect_with(mercato::db::service_role_options(&owner_opts, WORKER_ROLE))
        .await
        .expect("the worker role logs in");
    let mut tx = worker.begin().await.expect("begin");
    let (_, as_worker): (String, bool) = sqlx::query_as(skipped)
        .fetch_one(&mut *tx)
        .await
        .expect("as the worker role");
    assert!(
        !as_worker,
        "the worker role's writes are captured, mover or not"
    );
    drop(tx);
    // The mover role is heard, and the owner still (an older mover).
    let mover = PgPool::connect_with(mercato::db::service_role_options(&owner_opts, MOVER_ROLE))
        .await
        .expect("the mover role logs in");
    for (pool, who) in [(&mover, MOVER_ROLE), (&app.owner, "the owner")] {
        let mut tx = pool.begin().await.expect("begin");
        let (_, heard): (String, bool) = sqlx::query_as(skipped)
            .fetch_one(&mut *tx)
            .await
            .expect(who);
        assert!(
            heard,
            "{who}: the mover's own writes are not captured again"
        );
    }
}

/// Issue 35 item 7: moves ran as the schema's owner (a superuser on the
/// embedded cluster). The mover role reaches a merchant's rows only in a
/// transaction that names the merchant, and does nothing a move does not:
/// no DDL (the capture triggers go through the owner's functions, on tenant
/// tables only), no API keys, no sequences, no merchant deleted or renamed.
#[tokio::test]
async fn the_mover_role_does_moves_and_nothing_else() {
    let app = crate::helpers::TestApp::spawn().await;
    let a = app.merchant_with_stock("mover-a", "MUG", 10).await;
    let b = app.merchant_with_stock("mover-b", "MUG", 10).await;
    let owner_opts: PgConnectOptions = app.db.owner_url.parse().expect("owner URL");
    let mover = PgPool::connect_with(mercato::db::service_role_options(&owner_opts, MOVER_ROLE))
        .await
        .expect("the mover role logs in");
    held_to_moves(&app.owner, &mover, a.id.0, b.id.0).await;
}

/// What `mover` must be refused, and what it sees of merchants `a` and `b`.
async fn held_to_moves(owner: &PgPool, mover: &PgPool, a: Uuid, b: Uuid) {
    let (powerful, create_here): (bool, bool) = sqlx::query_as(
        "select rolsuper or rolbypassrls or rolcreaterole or rolcreatedb,
                has_schema_privilege('public', 'CREATE')
         from pg_roles where rolname = current_user",
    )
    .fetch_one(mover)
    .await
    .expect("its own role");
    assert!(!powerful, "no superuser, BYPASSRLS, CREATEROLE or CREATEDB");
    assert!(!create_here, "no CREATE on schema public");

    // DDL, and what DDL-like powers a table's owner has: each refused (in a
    // transaction rolled back, should one pass).
    for ddl in [
        "create table public.mover_probe (id int)",
        "alter table stock add column probe int",
        "alter table stock disable row level security",
        "create index mover_probe on stock (merchant_id)",
        "create trigger mover_probe after insert on orders for each row execute function mercato_capture_change()",
        "drop trigger if exists events_position on events",
        "truncate stock",
        "drop table stock",
        "create function mover_probe() returns int language sql as 'select 1'",
    ] {
        let mut tx = mover.begin().await.expect("begin");
        let refused = sqlx::query(ddl).execute(&mut *tx).await;
        let err = refused.expect_err(ddl).to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{ddl}: {err}"
        );
    }
    // The capture's DDL, through the owner's functions: tenant tables only.
    for table in ["move_changes", "merchants", "cell_absent", "tenant_moves"] {
        for function in ["mercato_capture_on", "mercato_capture_off"] {
            let sql = format!("select {function}('{table}'::regclass, $1)");
            let err = sqlx::query(&sql)
                .bind(a)
                .execute(mover)
                .await
                .expect_err(&sql)
                .to_string();
            assert!(err.contains("is not a tenant table"), "{sql}: {err}");
        }
    }

    // Rows: none without a merchant named, only that merchant's with one.
    let stock_rows = "select count(*) from stock";
    let all: i64 = sqlx::query_scalar(stock_rows)
        .fetch_one(owner)
        .await
        .expect("owner");
    assert!(all >= 2, "both merchants have stock");
    let unnamed: i64 = sqlx::query_scalar(stock_rows)
        .fetch_one(mover)
        .await
        .expect("mover");
    assert_eq!(
        unnamed, 0,
        "outside a move's step the mover sees no merchant's rows"
    );
    let mut tx = mover.begin().await.expect("begin");
    sqlx::query("select set_config('app.merchant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .expect("tenant");
    let seen: Vec<Uuid> = sqlx::query_scalar("select distinct merchant_id from stock")
        .fetch_all(&mut *tx)
        .await
        .expect("a's stock");
    assert_eq!(seen, vec![a], "a step for merchant a sees a's rows only");
    let touched = sqlx::query("update stock set on_hand = on_hand + 1 where merchant_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .expect("update")
        .rows_affected();
    assert_eq!(touched, 0, "nor writes b's");
    let moved = sqlx::query("update stock set merchant_id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .expect_err("a's rows handed to b")
        .to_string();
    assert!(moved.contains("row-level security"), "{moved}");
    drop(tx);

    // API keys stay in the main database: a move never reads them.
    let mut tx = mover.begin().await.expect("begin");
    sqlx::query("select set_config('app.merchant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .expect("tenant");
    let keys = sqlx::query("select key_hash from api_keys")
        .fetch_all(&mut *tx)
        .await
        .expect_err("api keys")
        .to_string();
    assert!(keys.contains("permission denied"), "{keys}");
    drop(tx);

    // The rows it writes carry their ids: no sequence, no id of its own.
    for sql in [
        "select nextval('legacy_orders_id_seq')",
        "select next_legacy_order_id()",
    ] {
        let err = sqlx::query(sql)
            .execute(mover)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }

    // Merchants: copied into a cell, never renamed or deleted, and a cell's
    // copy forgotten only where the merchant has departed.
    for sql in [
        "update merchants set name = 'taken' where id = $1",
        "delete from merchants where id = $1",
    ] {
        let err = sqlx::query(sql)
            .bind(b)
            .execute(mover)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    let kept = sqlx::query("select mercato_forget_departed_merchant($1)")
        .bind(b)
        .execute(mover)
        .await
        .expect_err("b is served here")
        .to_string();
    assert!(kept.contains("has not departed"), "{kept}");
    let there: i64 = sqlx::query_scalar("select count(*) from merchants where id = $1")
        .bind(b)
        .fetch_one(owner)
        .await
        .expect("merchants");
    assert_eq!(there, 1);
}
