//! Database set-up and the tenant-scoped transaction.
//!
//! The *owner* (the `DATABASE_URL` user) runs migrations and owns every table.
//! Three service roles do the work, each owning nothing, neither superuser nor
//! BYPASSRLS, so row-level security applies to every query they run:
//! - the *app role* (`mercato_app`), the only role request paths use;
//! - the *worker role* (`mercato_worker`), background work across tenants,
//!   only where a table's policy names it;
//! - the *mover role* (`mercato_mover`), online moves of a merchant between
//!   cells (`cells::mover`): the merchant's rows one tenant at a time, the
//!   directory, the move records, the cell's fence and the change capture's
//!   keys, and the capture triggers' DDL only through functions of the owner
//!   (migration 0023). No DDL, no sequences, no API keys.
//!
//! The service roles never carry the owner's password: each logs in with a
//! secret derived from it (HMAC-SHA-256 keyed by the owner's password, over
//! the role's name), so every process that holds the owner's URL computes the
//! same secret and none stores it. It reaches the server only as a SCRAM
//! verifier, on a connection that does not log its statements.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};

use uuid::Uuid;

pub mod migrate;

pub const APP_ROLE: &str = "mercato_app";
/// The role of background workers that act across tenants, only where a policy names it.
pub const WORKER_ROLE: &str = "mercato_worker";
/// The role of online moves between cells, on every cell (`cells::mover::Pools`).
pub const MOVER_ROLE: &str = "mercato_mover";
const SERVICE_ROLES: [&str; 3] = [APP_ROLE, WORKER_ROLE, MOVER_ROLE];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to the database at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] migrate::MigrationError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The service's schema, applied to the main database and to every cell
/// (by [`migrate::run`], under a lock timeout).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection pools of a running service.
#[derive(Clone, Debug)]
pub struct Db {
    /// Connections as the app role: subject to RLS. Request paths use only this.
    pub app: PgPool,
    /// Connections as the worker role, for cross-tenant background work.
    pub worker: PgPool,
}

/// Migrates the database as its owner, makes sure the app role exists with the
/// grants it needs, and opens the app role's pool.
pub async fn prepare(owner_url: &str, max_connections: u32) -> Result<Db, DbError> {
    let owner_opts: PgConnectOptions = owner_url.parse().map_err(DbError::Url)?;
    let owner = connect(owner_opts.clone(), 2).await?;
    // Roles first: migrations name the worker role in policies.
    ensure_service_roles(&owner, &owner_opts).await?;
    migrate::run(&MIGRATOR, &owner, migrate::Options::default()).await?;
    grant_service_roles(&owner).await?;
    owner.close().await;
    let app = connect(service_role_options(&owner_opts, APP_ROLE), max_connections).await?;
    // Expiry, recovery, anomaly checks and webhook deliveries (each in-flight
    // delivery records its attempt on one).
    let worker = connect(service_role_options(&owner_opts, WORKER_ROLE), 16).await?;
    Ok(Db { app, worker })
}

/// Opens a pool; a database that does not answer fails start-up within seconds.
pub async fn connect(opts: PgConnectOptions, max: u32) -> Result<PgPool, DbError> {
    let url = redacted_url(&opts);
    // One direct attempt first: a pool only says "timed out", this says why.
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&opts)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(source)) => return Err(DbError::Connect { url, source }),
        Err(_) => {
            return Err(DbError::Connect {
                url,
                source: sqlx::Error::PoolTimedOut,
            })
        }
    }
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        // Long statements are expected here (migrations, backfills): debug, not warn.
        .connect_with(
            opts.log_statements(tracing::log::LevelFilter::Debug)
                .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1)),
        )
        .await
        .map_err(|source| DbError::Connect { url, source })
}

fn redacted_url(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    )
}

/// Creates the service roles if they are missing (roles are cluster-wide, so
/// several databases on one server share them) and sets each one's password:
/// its own secret derived from the owner's ([`service_role_options`]), or none
/// when the owner has none (trust or peer authentication).
pub async fn ensure_service_roles(
    owner: &PgPool,
    owner_opts: &PgConnectOptions,
) -> Result<(), DbError> {
    for role in SERVICE_ROLES {
        let create = format!(
            "do $$ begin
                 create role {role} login nosuperuser nobypassrls nocreatedb nocreaterole;
             exception when duplicate_object or unique_violation then null;
             end $$"
        );
        sqlx::query(&create).execute(owner).await?;
    }
    // The owner's pool logs statements (at debug); this connection does not,
    // and what it sends is a verifier, never a password.
    let mut quiet =
        PgConnection::connect_with(&owner_opts.clone().disable_statement_logging()).await?;
    for role in SERVICE_ROLES {
        let password = match owner_password(owner_opts) {
            Some(owner) => {
                let salt: [u8; 16] = rand::random();
                let verifier =
                    scram_sha256_verifier(&service_role_secret(&owner, role), &salt, 4096);
                format!("'{verifier}'")
            }
            None => "null".to_owned(),
        };
        sqlx::query(&format!("alter role {role} password {password}"))
            .execute(&mut quiet)
            .await?;
    }
    quiet.close().await?;
    Ok(())
}

/// The connection options of a service role on the owner's database: the
/// owner's host and database, the role's name and its secret (derived from
/// the owner's password, so every process computes the same one).
pub fn service_role_options(owner_opts: &PgConnectOptions, role: &str) -> PgConnectOptions {
    let opts = owner_opts.clone().username(role);
    match owner_password(owner_opts) {
        Some(owner) => opts.password(&service_role_secret(&owner, role)),
        None => opts,
    }
}

/// HMAC-SHA-256 keyed by the owner's password over the role's name, in hex:
/// knowing it tells nothing of the owner's password or another role's secret.
fn service_role_secret(owner_password: &str, role: &str) -> String {
    hex::encode(hmac_sha256(
        owner_password.as_bytes(),
        &[b"mercato service role ", role.as_bytes()],
    ))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes a key of any length")
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802,
/// RFC 7677): `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
/// Sent in `ALTER ROLE … PASSWORD`, the server keeps it as it is. `password`
/// must be ASCII without controls (SASLprep leaves it unchanged), as a hex
/// secret is.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    // PBKDF2-HMAC-SHA-256, one block (the output is as long as the hash).
    let mut u = hmac_sha256(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac_sha256(password.as_bytes(), &[&u]);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let stored_key = Sha256::digest(hmac_sha256(&salted, &[b"Client Key"]));
    let server_key = hmac_sha256(&salted, &[b"Server Key"]);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

/// Platform tables: no row-level security, so a grant on one reaches every
/// merchant's rows. The service roles get on them only what is listed in
/// [`PLATFORM_GRANTS`]. Requests reach the directory and a merchant's moves
/// through `security definer` functions (migration 0021); the mover, whose
/// records they are, through grants, and what only the owner may do through
/// functions again (migration 0023).
const PLATFORM_TABLES: [&str; 9] = [
    "_sqlx_migrations",
    // Logins: the persons (their password hashes) and their sessions.
    "people",
    "sessions",
    // The key that hides order volume in legacy-order ids (read by its function).
    "legacy_order_id_key",
    "merchants",
    "tenant_directory",
    "tenant_moves",
    "cell_absent",
    "move_changes",
];

/// What each service role may do on a platform table (the design;
/// `tests/api/hostile/roles.rs` holds the database to it).
const PLATFORM_GRANTS: [(&str, &str); 15] = [
    // Creating a merchant and its settings (admin routes), resolving a slug,
    // authenticating a key (joins its merchant).
    (APP_ROLE, "select, insert on merchants"),
    (
        APP_ROLE,
        "update (stock_strategy, rate_limits, status, status_reason, status_changed_at) on merchants",
    ),
    // The analytics export names merchants in its marts; the senders skip
    // suspended ones.
    (WORKER_ROLE, "select (id, slug, name, status) on merchants"),
    // A login finds its person; an invitation accepted makes one; a new
    // password or second factor changes one. Nobody is deleted (the trail
    // names them).
    (APP_ROLE, "select, insert on people"),
    (
        APP_ROLE,
        "update (password_hash, totp_secret, password_changed_at, operator) on people",
    ),
    // Sessions: made at login, read on each request, revoked.
    (APP_ROLE, "select, insert, update (revoked_at) on sessions"),
    // `mercato_absent` in the worker's policies: merchants this cell does not serve.
    (WORKER_ROLE, "select on cell_absent"),
    // A move copies the merchant's row into the target (its rows' foreign
    // keys point at it); the CLI resolves a slug and lists merchants. The
    // copy's row is deleted by `mercato_forget_departed_merchant()`.
    (MOVER_ROLE, "select, insert on merchants"),
    // The merchant's entry: made at the start, `moving` for the cutover,
    // flipped to the target.
    (MOVER_ROLE, "select, insert on tenant_directory"),
    (
        MOVER_ROLE,
        "update (cell, moving, updated_at) on tenant_directory",
    ),
    // The move records: started, advanced, counted, resumed (`serve` looks
    // for the moves it drives across merchants).
    (MOVER_ROLE, "select, insert on tenant_moves"),
    (
        MOVER_ROLE,
        "update (phase, updated_at, finished_at, last_error, rows_copied, copy_table, \
         copy_after, changes_applied, rows_cleaned, pause_ms, cutover) on tenant_moves",
    ),
    // The cell's fence: `arriving`, `departed`, lifted.
    (MOVER_ROLE, "select, insert, update, delete on cell_absent"),
    // The captured keys: replayed, then forgotten (the capture's trigger
    // function writes them, as the owner).
    (MOVER_ROLE, "select, delete on move_changes"),
    // Each cell's schema version, which a move must match.
    (MOVER_ROLE, "select (version, success) on _sqlx_migrations"),
];

/// DML on this database's tenant tables (row-level security decides which
/// rows), on the platform tables only [`PLATFORM_GRANTS`]. One transaction:
/// no other session sees the broad grant before its revoke.
async fn grant_service_roles(owner: &PgPool) -> Result<(), DbError> {
    let platform = PLATFORM_TABLES.join(", ");
    let mut tx = owner.begin().await?;
    for role in SERVICE_ROLES {
        for grant in [
            format!("grant usage on schema public to {role}"),
            format!(
                "grant select, insert, update, delete on all tables in schema public to {role}"
            ),
            format!("revoke all on {platform} from {role}"),
        ] {
            sqlx::query(&grant).execute(&mut *tx).await?;
        }
    }
    for role in [APP_ROLE, WORKER_ROLE] {
        for grant in [
            format!("grant usage, select on all sequences in schema public to {role}"),
            // Its raw value counts every merchant's legacy orders; requests get
            // ids through `next_legacy_order_id()` (migration 0022).
            format!("revoke all on sequence legacy_orders_id_seq from {role}"),
        ] {
            sqlx::query(&grant).execute(&mut *tx).await?;
        }
    }
    // The mover writes every column of the rows it carries (ids included):
    // it draws from no sequence. A merchant's API keys stay in the main
    // database (the directory's), so a move never touches them.
    for revoke in [
        format!("revoke all on all sequences in schema public from {MOVER_ROLE}"),
        format!("revoke all on api_keys from {MOVER_ROLE}"),
        format!("revoke all on staff, staff_invitations, publishable_keys from {MOVER_ROLE}"),
    ] {
        sqlx::query(&revoke).execute(&mut *tx).await?;
    }
    // The audit trail is append-only for the service: records are added
    // (by the triggers) and read, never changed or removed. The mover
    // keeps DELETE: a move carries a merchant's records to its new cell.
    for role in [APP_ROLE, WORKER_ROLE] {
        sqlx::query(&format!(
            "revoke update, delete, truncate on audit_log from {role}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    for (role, grant) in PLATFORM_GRANTS {
        sqlx::query(&format!("grant {grant} to {role}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn owner_password(opts: &PgConnectOptions) -> Option<String> {
    // PgConnectOptions keeps the password private; read it back from the URL form.
    let url = opts.to_url_lossy();
    url.password().map(str::to_owned)
}

/// The tenant every tenant-owned row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct MerchantId(pub Uuid);

impl MerchantId {
    pub fn new() -> Self {
        MerchantId(Uuid::now_v7())
    }
}

impl Default for MerchantId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for MerchantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A transaction on which `app.merchant_id` is set (transaction-locally, so a
/// pooled connection never carries a tenant into the next request). Every
/// tenant-owned query takes one, so none can be written without a tenant.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    merchant_id: MerchantId,
}

impl TenantTx {
    pub async fn begin(pool: &PgPool, merchant_id: MerchantId) -> Result<Self, sqlx::Error> {
        // The cell's fence (`mercato_enter` refuses a merchant this database
        // does not serve now: SQLSTATE MC001, see `served_elsewhere`), BEGIN
        // and the tenant in one round trip: every request's transactions
        // start here. The fence comes first, in the implicit transaction
        // that BEGIN then takes in: refused there, the connection goes back
        // to the pool idle. Refused after BEGIN, it would go back inside an
        // aborted transaction (sqlx rolls back only a BEGIN that succeeded)
        // and fail every later user. Inlining is safe: a `Uuid` prints only
        // hex digits and hyphens.
        let tx = pool
            .begin_with(format!(
                "select mercato_enter('{0}'); begin; select set_config('app.merchant_id', '{0}', true)",
                merchant_id.0
            ))
            .await?;
        Ok(TenantTx { tx, merchant_id })
    }

    /// A tenant transaction on the tenant directory (the main database's
    /// merchants and API keys), which serves every merchant wherever its
    /// other rows live: no cell fence.
    pub async fn begin_in_directory(
        pool: &PgPool,
        merchant_id: MerchantId,
    ) -> Result<Self, sqlx::Error> {
        Self::begin_unfenced(pool, merchant_id, "").await
    }

    /// `begin_in_directory` reading from one snapshot (repeatable read, read
    /// only): what several statements read agrees, e.g. every child row
    /// read has its parent among the rows read.
    pub async fn begin_snapshot_in_directory(
        pool: &PgPool,
        merchant_id: MerchantId,
    ) -> Result<Self, sqlx::Error> {
        Self::begin_unfenced(
            pool,
            merchant_id,
            " isolation level repeatable read read only",
        )
        .await
    }

    async fn begin_unfenced(
        pool: &PgPool,
        merchant_id: MerchantId,
        mode: &str,
    ) -> Result<Self, sqlx::Error> {
        let tx = pool
            .begin_with(format!(
                "begin{mode}; select set_config('app.merchant_id', '{}', true)",
                merchant_id.0
            ))
            .await?;
        Ok(TenantTx { tx, merchant_id })
    }

    pub fn merchant_id(&self) -> MerchantId {
        self.merchant_id
    }

    /// Names who this transaction acts for and what they asked: every row
    /// of an audited table it changes is then recorded in `audit_log`, in
    /// this transaction (migration 0034's triggers read `app.audit`).
    pub async fn act_for(&mut self, acting: &Acting) -> Result<(), sqlx::Error> {
        let context =
            serde_json::to_string(acting).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query("select set_config('app.audit', $1, true)")
            .bind(context)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Records in the merchant's audit trail what no audited row's change
    /// tells (a login, a move started): one record, in this transaction
    /// (migration 0037's `mercato_audit_event`, the audit context's).
    pub async fn record_audit(
        &mut self,
        acting: &Acting,
        target: (&str, &str),
        changes: &serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("select mercato_audit_event($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9)")
            .bind(acting.action)
            .bind(acting.actor_kind.as_str())
            .bind(&acting.actor)
            .bind(target.0)
            .bind(target.1)
            .bind(changes.to_string())
            .bind(&acting.address)
            .bind(&acting.user_agent)
            .bind(&acting.request_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// `record_audit` in a transaction of its own, in the directory's
    /// database (`pool`): for what happened beside any row change.
    pub async fn record_audit_alone(
        pool: &PgPool,
        merchant_id: MerchantId,
        acting: &Acting,
        target: (&str, &str),
        changes: &serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        let mut tx = Self::begin_in_directory(pool, merchant_id).await?;
        tx.record_audit(acting, target, changes).await?;
        tx.commit().await
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// `true` when a cell refused a transaction because the merchant has moved
/// to (or is arriving from) another cell.
pub fn served_elsewhere(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("MC001"))
}

/// `true` when `err` is a unique violation of the named constraint.
pub fn violates(err: &sqlx::Error, constraint: &str) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some(constraint))
}

/// Text from the database that names no value of the enum it should decode to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

/// Declares a state enum stored as `text` (each table backs it with a CHECK
/// constraint listing the same values). Text that names no variant is an
/// error, in Rust and in SQL alike, never a silent default.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses input, with a message that lists the values allowed.
            #[allow(dead_code)]
            pub fn parse(raw: &str) -> Result<Self, String> {
                raw.parse().map_err(|_| {
                    let all: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("must be one of {}", all.join(", "))
                })
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::db::UnknownValue;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::db::UnknownValue {
                        kind: stringify!($name),
                        value: raw.to_owned(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let raw = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(raw.parse::<$name>()?)
            }
        }
    };
}
pub(crate) use text_enum;

/// One round trip to the database: does it answer?
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("select 1")
        .fetch_one(pool)
        .await
        .map(|_| ())
}

/// A private cluster (embedded mode) that would not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivateClusterError {
    #[error("private PostgreSQL in {dir}: {source}")]
    LocalPg { dir: String, source: localpg::Error },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Starts (or restarts) the private cluster and makes sure database `mercato` exists.
pub async fn start_private_cluster(
    data_dir: &std::path::Path,
) -> Result<localpg::LocalPg, PrivateClusterError> {
    let dir = data_dir.to_path_buf();
    let pg = tokio::task::spawn_blocking(move || localpg::LocalPg::start(&dir))
        .await
        .map_err(|e| PrivateClusterError::LocalPg {
            dir: data_dir.display().to_string(),
            source: localpg::Error::Command {
                step: "start",
                detail: e.to_string(),
            },
        })?
        .map_err(|source| PrivateClusterError::LocalPg {
            dir: data_dir.display().to_string(),
            source,
        })?;
    let admin_opts = pg.url("postgres").parse().map_err(DbError::Url)?;
    let admin = connect(admin_opts, 1).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = 'mercato')")
            .fetch_one(&admin)
            .await
            .map_err(DbError::Sql)?;
    if !exists {
        sqlx::query("create database mercato")
            .execute(&admin)
            .await
            .map_err(DbError::Sql)?;
    }
    admin.close().await;
    Ok(pg)
}

/// A database for a command (`remediate`, `demo incident`): `DATABASE_URL`'s,
/// else the embedded cluster of `data_dir`, joined while a `serve` runs on it
/// or started (and migrated) for the command's duration.
pub struct CommandDatabase {
    /// The schema owner's pool (superuser on the embedded cluster).
    pub owner: sqlx::PgPool,
    /// Keeps a cluster this command started alive until it ends.
    _localpg: Option<localpg::LocalPg>,
}

pub async fn command_database(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
    max_connections: u32,
) -> Result<CommandDatabase, PrivateClusterError> {
    let (url, localpg) = match database_url {
        Some(url) => (url.to_owned(), None),
        None => {
            match localpg::attach(data_dir, "mercato").map_err(|source| {
                PrivateClusterError::LocalPg {
                    dir: data_dir.display().to_string(),
                    source,
                }
            })? {
                Some(url) => (url, None),
                None => {
                    let pg = start_private_cluster(data_dir).await?;
                    (pg.url("mercato"), Some(pg))
                }
            }
        }
    };
    // Migrated (and the service roles made) like `serve` does, so a command may run first.
    let db = prepare(&url, 2).await?;
    db.app.close().await;
    db.worker.close().await;
    let owner = connect(url.parse().map_err(DbError::Url)?, max_connections).await?;
    Ok(CommandDatabase {
        owner,
        _localpg: localpg,
    })
}

/// Who a change is made for, what they asked and from where: the audit
/// trail's context (`TenantTx::act_for`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Acting {
    /// The action as the API names it (`product.update`, `stock.set`, …).
    pub action: &'static str,
    pub actor_kind: ActorKind,
    /// A key's fingerprint (`key:…`), `admin`, a person's id, a command's name.
    pub actor: String,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Acting {
    /// A command run at a shell (`mercato remediate settle`, `mercato
    /// tenants move`): the operator is the OS user who ran it.
    pub fn command(action: &'static str, command: &str) -> Acting {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".to_owned());
        Acting {
            action,
            actor_kind: ActorKind::Operator,
            actor: format!("cli:{user}"),
            address: None,
            user_agent: Some(format!("mercato {command}")),
            request_id: None,
        }
    }
}

text_enum! {
    /// What kind of actor made a change.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ActorKind {
        /// A merchant's API key.
        Key = "key",
        /// The platform admin token.
        Admin = "admin",
        /// A platform operator's account.
        Operator = "operator",
        /// A merchant's staff member.
        Person = "person",
        /// A command or a background job.
        System = "system",
    }
}
