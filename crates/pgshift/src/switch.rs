//! What the application reads: the migration's phase (which shapes to write)
//! and the read-switch percentage (which shape to read), cached briefly; and
//! the tally of shadow-read comparisons.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::state::Phase;

/// How long the application trusts its cached view. pgshift waits longer than
/// this after each phase change that writers must see before acting on it.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    pub percent: u8,
    pub shadow_percent: u8,
}

pub struct ReadSwitch {
    pool: PgPool,
    name: String,
    shadow_percent: u8,
    cached: Mutex<Option<(Instant, View)>>,
    compared: AtomicU64,
    mismatched: AtomicU64,
}

/// A stable bucket 0..100 for a key: the same key always reads the same shape
/// at a given percentage, and raising the percentage only moves keys to new.
pub fn bucket(key: &str) -> u8 {
    let digest = Sha256::digest(key.as_bytes());
    (u16::from_be_bytes([digest[0], digest[1]]) % 100) as u8
}

impl ReadSwitch {
    pub fn new(pool: PgPool, name: impl Into<String>, shadow_percent: u8) -> Self {
        ReadSwitch {
            pool,
            name: name.into(),
            shadow_percent,
            cached: Mutex::new(None),
            compared: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
        }
    }

    /// The current view, from cache when fresh. A migration not started yet
    /// (or pgshift's schema absent) reads as `Planned`, 0%.
    pub async fn view(&self) -> View {
        if let Some((at, view)) = *self.cached.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < CACHE_TTL {
                return view;
            }
        }
        let row: Result<Option<(String, i32)>, _> =
            sqlx::query_as("select phase, switch_percent from pgshift.migrations where name = $1")
                .bind(&self.name)
                .fetch_optional(&self.pool)
                .await;
        let view = match row {
            Ok(Some((phase, percent))) => View {
                phase: Phase::parse(&phase),
                percent: percent.clamp(0, 100) as u8,
                shadow_percent: self.shadow_percent,
            },
            Ok(None) => View {
                phase: Phase::Planned,
                percent: 0,
                shadow_percent: self.shadow_percent,
            },
            Err(err) => {
                // No pgshift schema yet means no migration yet; any other error:
                // keep serving on the last known view rather than fail requests.
                let undefined = matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"));
                if !undefined {
                    tracing::warn!(error = %err, "reading the migration state failed");
                }
                let last = self
                    .cached
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .map(|(_, v)| v);
                last.unwrap_or(View {
                    phase: Phase::Planned,
                    percent: 0,
                    shadow_percent: self.shadow_percent,
                })
            }
        };
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), view));
        view
    }
}

impl View {
    /// Whether reads of `key` go to the new shape.
    pub fn reads_new(&self, key: &str) -> bool {
        match self.phase {
            Phase::Contracting | Phase::Contracted => true,
            Phase::Backfilled | Phase::Validated => bucket(key) < self.percent,
            _ => false,
        }
    }

    /// Whether this read of `key` should also read the other shape and compare.
    pub fn shadows(&self, key: &str) -> bool {
        matches!(self.phase, Phase::Backfilled | Phase::Validated)
            && bucket(&format!("shadow:{key}")) < self.shadow_percent
    }
}

impl ReadSwitch {
    /// Counts one shadow comparison; a mismatch is also kept as a sample row.
    /// Counts reach the database on `flush` (one hot row must not serialise reads).
    pub async fn compare(&self, key: &str, old: &str, new: &str) -> Result<bool, sqlx::Error> {
        self.compared.fetch_add(1, Ordering::Relaxed);
        if old == new {
            return Ok(false);
        }
        self.mismatched.fetch_add(1, Ordering::Relaxed);
        sqlx::query(
            "insert into pgshift.shadow_mismatches (migration, key, old_value, new_value) values ($1, $2, $3, $4)",
        )
        .bind(&self.name)
        .bind(key)
        .bind(old)
        .bind(new)
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// Adds the comparisons counted since the last flush to `pgshift.shadow_counts`.
    pub async fn flush(&self) -> Result<(), sqlx::Error> {
        let compared = self.compared.swap(0, Ordering::Relaxed);
        let mismatched = self.mismatched.swap(0, Ordering::Relaxed);
        if compared == 0 {
            return Ok(());
        }
        let written = sqlx::query(
            "insert into pgshift.shadow_counts (migration, compared, mismatched) values ($1, $2, $3)
             on conflict (migration) do update set compared = shadow_counts.compared + excluded.compared,
                                                   mismatched = shadow_counts.mismatched + excluded.mismatched",
        )
        .bind(&self.name)
        .bind(compared as i64)
        .bind(mismatched as i64)
        .execute(&self.pool)
        .await;
        if written.is_err() {
            // Keep the counts for the next flush.
            self.compared.fetch_add(compared, Ordering::Relaxed);
            self.mismatched.fetch_add(mismatched, Ordering::Relaxed);
        }
        written.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("order-1"), bucket("order-1"));
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[(bucket(&i.to_string()) / 10) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn the_switch_only_moves_keys_forward() {
        let at = |percent| View {
            phase: Phase::Backfilled,
            percent,
            shadow_percent: 0,
        };
        for i in 0..1000 {
            let key = i.to_string();
            if at(10).reads_new(&key) {
                assert!(at(50).reads_new(&key));
            }
            assert!(at(100).reads_new(&key));
            assert!(!at(0).reads_new(&key));
        }
    }
}
