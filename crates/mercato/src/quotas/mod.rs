//! Per-merchant rate limits: each merchant's plan (a rate and a burst per route
//! class, kept on the merchant by `tenancy`), and the limiter that checks a
//! request against it. The arithmetic is GCRA (`model::gcra`), pure. The
//! buckets (one arrival time per merchant and class) live in this process, or,
//! with `MERCATO_REDIS_URL`, in Redis, so that several instances share one
//! limit (`shared`).
//!
//! Owns no table: plans are stored with the merchant (`merchants.rate_limits`).

mod model;
mod shared;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub use model::{gcra, Decision, Plan, Rate, RouteClass};
pub use shared::SharedBuckets;

use crate::db::MerchantId;

/// Keys kept per shard before idle ones are swept: a key whose bucket has
/// refilled is the same as no key, so dropping it changes no decision.
const SWEEP_AT: usize = 4_096;
const SHARDS: usize = 16;

/// Where the buckets are: in this process, or shared in Redis; and each
/// merchant's bulkhead (requests in flight), always in process.
#[derive(Default)]
pub struct Limiter {
    local: LocalBuckets,
    shared: Option<SharedBuckets>,
    bulkheads: Bulkheads,
    daily: Mutex<HashMap<(MerchantId, i64), u32>>,
}

impl Limiter {
    /// In Redis at `redis_url` when given (failing open while it does not answer),
    /// else in process.
    pub fn new(redis_url: Option<&str>) -> Result<Limiter, redis::RedisError> {
        Ok(Limiter {
            local: LocalBuckets::default(),
            shared: redis_url.map(SharedBuckets::new).transpose()?,
            bulkheads: Bulkheads::default(),
            daily: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for one of `merchant`'s `bound` places in flight; the request holds
    /// it until it is answered. Other merchants never wait on it.
    pub async fn enter(
        &self,
        merchant: MerchantId,
        bound: u32,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.bulkheads.enter(merchant, bound).await
    }

    /// Counts one checkout of `merchant` today (UTC day `day`) against `limit`:
    /// `Some(used)` when admitted, `None` over the quota.
    pub async fn count_daily(&self, merchant: MerchantId, day: i64, limit: u32) -> Option<u32> {
        if let Some(shared) = &self.shared {
            return shared.count_daily(merchant, day, limit).await;
        }
        let mut counts = self.daily.lock().unwrap_or_else(|p| p.into_inner());
        counts.retain(|(_, d), _| *d >= day);
        let used = counts.entry((merchant, day)).or_insert(0);
        if *used >= limit {
            return None;
        }
        *used += 1;
        Some(*used)
    }

    /// Counts one request of `merchant` in `class` against `rate`.
    pub async fn check(&self, merchant: MerchantId, class: RouteClass, rate: Rate) -> Decision {
        match &self.shared {
            Some(shared) => shared.check(merchant, class, rate).await,
            None => self.local.check(merchant, class, rate),
        }
    }

    /// Buckets held in this process (for tests and metrics).
    pub fn local_keys(&self) -> usize {
        self.local.keys()
    }
}

/// One semaphore per merchant with a concurrency bound.
#[derive(Default)]
struct Bulkheads(Mutex<HashMap<MerchantId, (u32, std::sync::Arc<tokio::sync::Semaphore>)>>);

impl Bulkheads {
    async fn enter(
        &self,
        merchant: MerchantId,
        bound: u32,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= SWEEP_AT {
                // Idle merchants (every place free) hold nothing worth keeping.
                map.retain(|_, (n, s)| s.available_permits() < *n as usize);
            }
            let entry = map.entry(merchant).or_insert_with(|| {
                (
                    bound,
                    std::sync::Arc::new(tokio::sync::Semaphore::new(bound as usize)),
                )
            });
            if entry.0 != bound {
                // A changed plan: a new bulkhead; requests inside the old one finish there.
                *entry = (
                    bound,
                    std::sync::Arc::new(tokio::sync::Semaphore::new(bound as usize)),
                );
            }
            entry.1.clone()
        };
        // `None` only if the semaphore were closed, which it never is.
        semaphore.acquire_owned().await.ok()
    }
}

/// The in-process buckets: one GCRA arrival time per (merchant, route class).
pub struct LocalBuckets {
    started: Instant,
    shards: Vec<Mutex<HashMap<(MerchantId, RouteClass), f64>>>,
}

impl Default for LocalBuckets {
    fn default() -> Self {
        LocalBuckets {
            started: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl LocalBuckets {
    /// Counts one request of `merchant` in `class` against `rate`.
    pub fn check(&self, merchant: MerchantId, class: RouteClass, rate: Rate) -> Decision {
        let now = self.started.elapsed().as_secs_f64();
        let shard = &self.shards[shard_of(merchant, class)];
        let mut keys = shard.lock().unwrap_or_else(|p| p.into_inner());
        let decision = gcra(rate, keys.get(&(merchant, class)).copied(), now);
        if decision.allowed {
            if keys.len() >= SWEEP_AT {
                keys.retain(|_, tat| *tat > now);
            }
            keys.insert((merchant, class), decision.tat);
        }
        decision
    }

    /// Keys held (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

fn shard_of(merchant: MerchantId, class: RouteClass) -> usize {
    let bytes = merchant.0.as_bytes();
    (usize::from(bytes[15]) + class as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_keys_are_swept_so_memory_stays_bounded_with_many_merchants() {
        let limiter = LocalBuckets::default();
        let rate = Rate {
            per_second: 1_000_000.0,
            burst: 1,
        };
        for _ in 0..200_000 {
            let d = limiter.check(MerchantId::new(), RouteClass::Reads, rate);
            assert!(d.allowed);
        }
        // Each key's bucket refills within a microsecond: sweeps keep every shard small.
        assert!(
            limiter.keys() <= SHARDS * SWEEP_AT,
            "{} keys",
            limiter.keys()
        );
    }

    #[test]
    fn classes_and_merchants_are_counted_apart() {
        let limiter = LocalBuckets::default();
        let rate = Rate {
            per_second: 1.0,
            burst: 2,
        };
        let (a, b) = (MerchantId::new(), MerchantId::new());
        assert!(limiter.check(a, RouteClass::Writes, rate).allowed);
        assert!(limiter.check(a, RouteClass::Writes, rate).allowed);
        assert!(!limiter.check(a, RouteClass::Writes, rate).allowed);
        assert!(limiter.check(a, RouteClass::Reads, rate).allowed);
        assert!(limiter.check(b, RouteClass::Writes, rate).allowed);
    }
}
