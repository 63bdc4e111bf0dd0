//! What the application reads: the migration's phase (which shapes to write)
//! and the read-switch percentage (which shape to read), cached briefly; and
//! where it reports shadow-read comparisons.

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
                // Keep serving on the last known view rather than fail requests.
                tracing::warn!(error = %err, "reading the migration state failed");
                if let Some((_, view)) = *self.cached.lock().unwrap_or_else(|p| p.into_inner()) {
                    return view;
                }
                View {
                    phase: Phase::Planned,
                    percent: 0,
                    shadow_percent: self.shadow_percent,
                }
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

/// Records one shadow comparison (and a sample of the values when they differ).
pub async fn record_shadow(
    pool: &PgPool,
    name: &str,
    key: &str,
    old: &str,
    new: &str,
) -> Result<bool, sqlx::Error> {
    let mismatch = old != new;
    sqlx::query(
        "insert into pgshift.shadow_counts (migration, compared, mismatched) values ($1, 1, $2)
         on conflict (migration) do update set compared = shadow_counts.compared + 1,
                                               mismatched = shadow_counts.mismatched + excluded.mismatched",
    )
    .bind(name)
    .bind(i64::from(mismatch))
    .execute(pool)
    .await?;
    if mismatch {
        sqlx::query("insert into pgshift.shadow_mismatches (migration, key, old_value, new_value) values ($1, $2, $3, $4)")
            .bind(name)
            .bind(key)
            .bind(old)
            .bind(new)
            .execute(pool)
            .await?;
    }
    Ok(mismatch)
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
