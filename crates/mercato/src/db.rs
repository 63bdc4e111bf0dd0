//! Database set-up and the tenant-scoped transaction.
//!
//! Two roles: the *owner* (the `DATABASE_URL` user) runs migrations and owns every
//! table; the *app role* (`mercato_app`) owns nothing, is neither superuser nor
//! BYPASSRLS, and is the only role the service's request paths use. Row-level
//! security therefore applies to every query a request runs.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::tenancy::MerchantId;

pub const APP_ROLE: &str = "mercato_app";
/// The role of background workers that act across tenants, only where a policy names it.
pub const WORKER_ROLE: &str = "mercato_worker";
const SERVICE_ROLES: [&str; 2] = [APP_ROLE, WORKER_ROLE];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to the database at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

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
    sqlx::migrate!("./migrations").run(&owner).await?;
    grant_service_roles(&owner).await?;
    owner.close().await;
    let app = connect(owner_opts.clone().username(APP_ROLE), max_connections).await?;
    let worker = connect(owner_opts.username(WORKER_ROLE), 4).await?;
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
/// several databases on one server share them). They log in with the owner's
/// password when the server asks for one.
async fn ensure_service_roles(
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
        if let Some(password) = owner_password(owner_opts) {
            let escaped = password.replace('\'', "''");
            sqlx::query(&format!("alter role {role} password '{escaped}'"))
                .execute(owner)
                .await?;
        }
    }
    Ok(())
}

/// DML on this database's tables; row-level security decides which rows.
async fn grant_service_roles(owner: &PgPool) -> Result<(), DbError> {
    for role in SERVICE_ROLES {
        for grant in [
            format!("grant usage on schema public to {role}"),
            format!(
                "grant select, insert, update, delete on all tables in schema public to {role}"
            ),
            format!("revoke all on _sqlx_migrations from {role}"),
            format!("grant usage, select on all sequences in schema public to {role}"),
        ] {
            sqlx::query(&grant).execute(owner).await?;
        }
    }
    Ok(())
}

fn owner_password(opts: &PgConnectOptions) -> Option<String> {
    // PgConnectOptions keeps the password private; read it back from the URL form.
    let url = opts.to_url_lossy();
    url.password().map(str::to_owned)
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
        let mut tx = pool.begin().await?;
        sqlx::query("select set_config('app.merchant_id', $1, true)")
            .bind(merchant_id.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(TenantTx { tx, merchant_id })
    }

    pub fn merchant_id(&self) -> MerchantId {
        self.merchant_id
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// `true` when `err` is a unique violation of the named constraint.
pub fn violates(err: &sqlx::Error, constraint: &str) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some(constraint))
}
