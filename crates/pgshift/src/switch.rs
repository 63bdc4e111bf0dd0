//! What the application reads: the migration's phase (which shapes to write)
//! and the read-switch percentage (which shape to read), cached briefly; and
//! the tally of shadow-read comparisons.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::state::{self, Phase};

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
    /// `pgshift.migrations` has been seen; until then each refresh asks
    /// whether it exists instead of querying it (and logging an error).
    table_seen: AtomicBool,
    /// An unknown phase has been warned about (once, until a known one is read).
    warned_unknown: AtomicBool,
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
            table_seen: AtomicBool::new(false),
            warned_unknown: AtomicBool::new(false),
            compared: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
        }
    }

    /// The current view, from cache when fresh. A migration not started yet
    /// (or pgshift's schema absent) reads as `Planned`, 0%. An unknown phase
    /// or a failed read keeps the last view. Never fails, never panics.
    pub async fn view(&self) -> View {
        if let Some((at, view)) = *self.cached.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < CACHE_TTL {
                return view;
            }
        }
        let not_started = View {
            phase: Phase::Planned,
            percent: 0,
            shadow_percent: self.shadow_percent,
        };
        // The view is as old as the read's start: a read that straddles a phase
        // change must not make an old phase look fresh for a whole TTL more
        // (contract counts on every process seeing `contracting` within SETTLE).
        let read_at = Instant::now();
        let view = match self.read_state().await {
            Ok(Some((phase, percent))) => match Phase::parse(&phase) {
                Ok(phase) => {
                    self.warned_unknown.store(false, Ordering::Relaxed);
                    View {
                        phase,
                        percent: percent.clamp(0, 100) as u8,
                        shadow_percent: self.shadow_percent,
                    }
                }
                Err(unknown) => {
                    // A phase this build does not know (a newer pgshift wrote it,
                    // or someone edited the row). Keep doing what this process
                    // last did: jumping to `Planned` mid-migration would stop the
                    // dual-writes and leave the new shape silently behind. With no
                    // view yet, `Planned`: the old shape only, which exists until
                    // contract, is the one safe guess.
                    if !self.warned_unknown.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            migration = %self.name,
                            "{unknown} in pgshift.migrations; keeping the last known view"
                        );
                    }
                    self.last_view().unwrap_or(not_started)
                }
            },
            Ok(None) => not_started,
            Err(err) => {
                // Any error: keep serving on the last known view rather than fail requests.
                tracing::warn!(error = %err, "reading the migration state failed");
                self.last_view().unwrap_or(not_started)
            }
        };
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((read_at, view));
        view
    }

    fn last_view(&self) -> Option<View> {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, v)| v)
    }

    /// The raw phase and percentage; `None` when there is no migration (yet).
    async fn read_state(&self) -> Result<Option<(String, i32)>, sqlx::Error> {
        if !self.table_seen.load(Ordering::Relaxed) {
            if !state::migrations_table_exists(&self.pool).await? {
                return Ok(None);
            }
            self.table_seen.store(true, Ordering::Relaxed);
        }
        match state::read_switch(&self.pool, &self.name).await {
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                // Dropped since (pgshift's schema removed): no migration again.
                self.table_seen.store(false, Ordering::Relaxed);
                Ok(None)
            }
            other => other,
        }
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
        state::record_shadow_mismatch(&self.pool, &self.name, key, old, new).await?;
        Ok(true)
    }

    /// Adds the comparisons counted since the last flush to `pgshift.shadow_counts`.
    pub async fn flush(&self) -> Result<(), sqlx::Error> {
        let compared = self.compared.swap(0, Ordering::Relaxed);
        let mismatched = self.mismatched.swap(0, Ordering::Relaxed);
        if compared == 0 {
            return Ok(());
        }
        let written =
            state::add_shadow_counts(&self.pool, &self.name, compared as i64, mismatched as i64)
                .await;
        if written.is_err() {
            // Keep the counts for the next flush.
            self.compared.fetch_add(compared, Ordering::Relaxed);
            self.mismatched.fetch_add(mismatched, Ordering::Relaxed);
        }
        written
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
