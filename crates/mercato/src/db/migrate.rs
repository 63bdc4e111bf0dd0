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
//! (sqlx's marker), for `CREATE INDEX CONCURRENTLY`: its statements are sent
//! one at a time ([`statements`]), each its own commit, as `psql -f` runs a
//! file (PostgreSQL runs several statements sent together in one transaction,
//! which `CONCURRENTLY` refuses). Its SQL and its record are separate
//! commits, so every statement is written to run again (`IF NOT EXISTS`, a
//! constraint dropped `IF EXISTS` and added back in one `ALTER`). A concurrent build that fails part-way, on a lock timeout too,
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
pub async fn apply_outside_transaction(
    conn: &mut PgConnection,
    migration: &Migration,
) -> Result<(), MigrationError> {
    let started = Instant::now();
    for statement in statements(&migration.sql) {
        conn.execute(statement)
            .await
            .map_err(|e| MigrateError::ExecuteMigration(e, migration.version))?;
    }
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

/// The statements of a migration, each without its `;`, in order: split at
/// semicolons outside quotes ('…', "…", $tag$…$tag$) and comments (`--`,
/// nested `/* */`). A piece with nothing but comments and blanks is none.
pub fn statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut code) = (0, 0, false);
    while i < bytes.len() {
        let next = bytes.get(i + 1).copied();
        match bytes[i] {
            b'-' if next == Some(b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            b'/' if next == Some(b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    match (bytes[i], bytes.get(i + 1).copied()) {
                        (b'/', Some(b'*')) => (depth, i) = (depth + 1, i + 2),
                        (b'*', Some(b'/')) => (depth, i) = (depth - 1, i + 2),
                        _ => i += 1,
                    }
                    if depth == 0 {
                        break;
                    }
                }
                continue;
            }
            b';' => {
                if code {
                    out.push(sql[start..i].trim());
                }
                (start, i, code) = (i + 1, i + 1, false);
                continue;
            }
            b if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => {}
        }
        code = true;
        i = match bytes[i] {
            quote @ (b'\'' | b'"') => sql[i + 1..]
                .find(quote as char)
                .map_or(bytes.len(), |n| i + 1 + n + 1),
            b'$' => match dollar_tag(&sql[i..]) {
                Some(tag) => {
                    let body = i + tag.len();
                    sql[body..]
                        .find(tag)
                        .map_or(bytes.len(), |n| body + n + tag.len())
                }
                None => i + 1,
            },
            _ => i + 1,
        };
    }
    if code {
        out.push(sql[start..].trim());
    }
    out
}

/// The `$tag$` that opens a dollar-quoted string at the start of `text`.
fn dollar_tag(text: &str) -> Option<&str> {
    let rest = text.get(1..)?;
    let end = rest.find('$')?;
    let valid = rest[..end]
        .chars()
        .enumerate()
        .all(|(n, c)| c == '_' || c.is_alphabetic() || (n > 0 && c.is_ascii_digit()));
    valid.then(|| &text[..end + 2])
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let sql = "-- no-transaction\n-- a comment; still a comment\n\
                   create table a (x text default 'a;b');\n\
                   /* block; /* nested; */ */ alter table a add column \"y;\" int;\n\
                   do $$ begin perform 1; end $$;\n\
                   do $body$ begin perform ';'; end $body$;\n\
                   create index concurrently if not exists a_x on a (x)\n-- trailing;\n";
        let found = statements(sql);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].ends_with("default 'a;b')"));
        assert!(found[1].ends_with("\"y;\" int"));
        assert_eq!(found[2], "do $$ begin perform 1; end $$");
        assert_eq!(found[3], "do $body$ begin perform ';'; end $body$");
        assert!(found[4].starts_with("create index concurrently"));
    }
}
