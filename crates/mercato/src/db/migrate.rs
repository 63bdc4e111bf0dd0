//! Mercato's own schema migrations (`migrations/*.sql`), applied by every
//! `serve` start to the main database and to each cell: so they run against
//! live tables, under the rules pgshift keeps for its DDL steps.
//!
//! A statement waiting for its lock queues every later query on the table
//! behind it. So each migration runs with a short `lock_timeout`
//! ([`LOCK_TIMEOUT`], pgshift's default per step) and, timed out (SQLSTATE
//! 55P03), backs off and tries again, a bounded number of times, instead of
//! waiting in the queue.
//!
//! The bookkeeping is sqlx's, unchanged: the `_sqlx_migrations` table and its
//! checksums, its advisory lock (taken before the timeout is set: waiting for
//! another starting instance to finish migrating blocks no query), and its
//! `apply`, which runs a migration and records it in one transaction.
//! Databases migrated by `Migrator::run` carry on as they were.
//!
//! A file whose first line is `-- no-transaction` runs outside a transaction
//! (sqlx's marker), for `CREATE INDEX CONCURRENTLY`: one statement per such
//! file, since PostgreSQL runs several sent together in one transaction. Its
//! SQL and its record are two commits, so it is written to run again (`IF NOT
//! EXISTS`). A concurrent build that fails part-way, on a lock timeout too,
//! leaves an INVALID index behind that `IF NOT EXISTS` would then take for
//! done: after such a migration, and before retrying one, any invalid index
//! stops the run with its name instead.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::{Executor, PgConnection, PgPool};

/// How long a migration's statement may wait for a lock before it gives up
/// and tries again later: pgshift's default per DDL step.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// How migrations are run: [`Options::default`] in production.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub lock_timeout: Duration,
    /// Attempts of one migration (its lock timeouts plus one) before it fails.
    pub max_attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lock_timeout: LOCK_TIMEOUT,
            max_attempts: 20,
        }
    }
}

/// A migration this run applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    /// 1 unless it timed out waiting for a lock and was tried again.
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Sqlx(#[from] MigrateError),
    #[error("migration {version} could not take its locks in {attempts} attempts of {lock_timeout:?} each: {source}")]
    LockTimeout {
        version: i64,
        attempts: u32,
        lock_timeout: Duration,
        source: MigrateError,
    },
    #[error("migration {version} ran outside a transaction and index(es) {} are INVALID (a concurrent build that failed part-way): drop them (DROP INDEX CONCURRENTLY …) and start again", .indexes.join(", "))]
    InvalidIndexes { version: i64, indexes: Vec<String> },
}

impl From<sqlx::Error> for MigrationError {
    fn from(err: sqlx::Error) -> Self {
        MigrationError::Sqlx(MigrateError::Execute(err))
    }
}

/// Applies `migrator`'s pending migrations to the database of `pool`, each
/// under `options.lock_timeout`, retrying those that time out on a lock.
pub fn run<'a>(
    migrator: &'a Migrator,
    pool: &'a PgPool,
    options: Options,
) -> BoxFuture<'a, Result<Vec<Applied>, MigrationError>> {
    // Boxed as `Send` here, where the compiler can prove it: left to infer it
    // through sqlx's executors, a caller that spawns this fails to compile.
    Box::pin(async move {
        let mut pooled = pool.acquire().await?;
        let conn: &mut PgConnection = &mut pooled;
        if migrator.locking {
            conn.lock().await?;
        }
        let result = run_locked(migrator, conn, options).await;
        let _ = conn.execute("reset lock_timeout").await;
        let unlocked = if migrator.locking {
            conn.unlock().await
        } else {
            Ok(())
        };
        // A failed migration's error says more than a failed unlock's.
        let applied = result?;
        unlocked?;
        Ok(applied)
    })
}

async fn run_locked(
    migrator: &Migrator,
    conn: &mut PgConnection,
    options: Options,
) -> Result<Vec<Applied>, MigrationError> {
    conn.ensure_migrations_table().await?;
    if let Some(version) = conn.dirty_version().await? {
        return Err(MigrateError::Dirty(version).into());
    }
    let applied: HashMap<i64, _> = conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    // What `Migrator::run` refuses, this refuses too.
    if !migrator.ignore_missing {
        let missing = applied.keys().copied().find(|v| {
            !migrator
                .iter()
                .any(|m| m.version == *v && !m.migration_type.is_down_migration())
        });
        if let Some(version) = missing {
            return Err(MigrateError::VersionMissing(version).into());
        }
    }
    let lock_timeout_ms = options.lock_timeout.as_millis().max(1);
    conn.execute(&*format!("set lock_timeout = {lock_timeout_ms}"))
        .await?;
    let mut done = Vec::new();
    for migration in migrator.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        let pending = match applied.get(&migration.version) {
            Some(checksum) if *checksum != migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into())
            }
            Some(_) => false,
            None => true,
        };
        if pending {
            done.push(apply(conn, migration, options).await?);
        }
    }
    if let Some(last) = done.last() {
        tracing::info!(
            applied = done.len(),
            version = last.version,
            "migrated the schema"
        );
    }
    Ok(done)
}

/// Applies one migration, retrying with backoff while it times out on a lock.
async fn apply(
    conn: &mut PgConnection,
    migration: &Migration,
    options: Options,
) -> Result<Applied, MigrationError> {
    let version = migration.version;
    let mut delay = Duration::from_millis(100);
    let mut attempts = 1;
    loop {
        let started = Instant::now();
        let result = if migration.no_tx {
            apply_outside_transaction(conn, migration).await
        } else {
            // In one transaction with its record; rolled back when it fails.
            conn.apply(migration).await.map(|_| ()).map_err(Into::into)
        };
        match result {
            Ok(()) => {
                // One line per file only when asked (RUST_LOG=…=debug): a
                // fresh start applies them all; `run_locked` sums them up.
                tracing::debug!(
                    version,
                    attempts,
                    elapsed = ?started.elapsed(),
                    "applied migration {}",
                    migration.description
                );
                return Ok(Applied { version, attempts });
            }
            Err(MigrationError::Sqlx(err)) if is_lock_timeout(&err) => {
                if migration.no_tx {
                    refuse_invalid_indexes(conn, version).await?;
                }
                if attempts >= options.max_attempts {
                    return Err(MigrationError::LockTimeout {
                        version,
                        attempts,
                        lock_timeout: options.lock_timeout,
                        source: err,
                    });
                }
                tracing::warn!(
                    version,
                    attempts,
                    "migration timed out waiting for a lock; retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempts += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// sqlx's `apply` for a `-- no-transaction` migration (the same record), with
/// the catalog checked between the SQL and its record.
async fn apply_outside_transaction(
    conn: &mut PgConnection,
    migration: &Migration,
) -> Result<(), MigrationError> {
    let started = Instant::now();
    conn.execute(&*migration.sql)
        .await
        .map_err(|e| MigrateError::ExecuteMigration(e, migration.version))?;
    refuse_invalid_indexes(conn, migration.version).await?;
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values ($1, $2, true, $3, $4)",
    )
    .bind(migration.version)
    .bind(migration.description.to_string())
    .bind(migration.checksum.to_vec())
    .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn refuse_invalid_indexes(
    conn: &mut PgConnection,
    version: i64,
) -> Result<(), MigrationError> {
    let indexes: Vec<String> = sqlx::query_scalar(
        "select i.indexrelid::regclass::text from pg_index i
         join pg_class c on c.oid = i.indexrelid
         join pg_namespace n on n.oid = c.relnamespace
         where not i.indisvalid and n.nspname not in ('pg_catalog', 'pg_toast')
         order by 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    if indexes.is_empty() {
        Ok(())
    } else {
        Err(MigrationError::InvalidIndexes { version, indexes })
    }
}

fn is_lock_timeout(err: &MigrateError) -> bool {
    let source = match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => e,
        _ => return false,
    };
    matches!(source, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}
