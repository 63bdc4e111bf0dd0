//! Failed authentications per client address: each key the database refuses
//! counts against its address's bucket (the same GCRA the merchants' rate
//! limits use, `quotas::gcra`); an address over it is answered 429 before its
//! next unknown key reaches the database. Keys already verified (or already
//! refused) cost no query and are never held here, so a merchant's working
//! key from the same address keeps working. Logins throttle the same way
//! (`Throttle`, keyed by address and by account).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::quotas::{gcra, Rate};

/// Failed lookups an address may make at once, then per second: far above a
/// client with a mistyped key, far below a scan.
const FAILURES: Rate = Rate {
    per_second: 2.0,
    burst: 10,
};
/// Addresses tracked; past it, those whose bucket is full again go first.
const MAX_ADDRESSES: usize = 10_000;

/// Failures per key (an address, an account): each tracked key's
/// theoretical arrival time, in seconds since `epoch`.
pub struct Throttle<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, f64>>,
}

/// Keys the database refused, per client address.
pub type AuthFailures = Throttle<IpAddr>;

impl Default for AuthFailures {
    fn default() -> Self {
        Throttle::new(FAILURES)
    }
}

fn now() -> f64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

impl<K: Hash + Eq> Throttle<K> {
    /// Failures allowed at once (`burst`), then per second.
    pub fn new(rate: Rate) -> Self {
        Throttle {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// `Err(seconds)` to wait when `address` has no failure left.
    pub fn check(&self, address: &K) -> Result<(), u64> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tat) = buckets.get(address) else {
            return Ok(());
        };
        let decision = gcra(self.rate, Some(*tat), now());
        if decision.allowed {
            Ok(())
        } else {
            Err(decision.retry_after_seconds.ceil().max(1.0) as u64)
        }
    }

    /// Records a failure (a key the database refused, a wrong password) of `address`.
    pub fn failed(&self, address: K) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&address) {
            buckets.retain(|_, tat| *tat > now);
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        let tat = buckets.get(&address).copied();
        let next = gcra(self.rate, tat, now).tat;
        buckets.insert(address, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_after_its_burst_of_failures_and_others_are_not() {
        let failures = AuthFailures::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        for _ in 0..FAILURES.burst {
            assert_eq!(failures.check(&a), Ok(()));
            failures.failed(a);
        }
        assert_eq!(failures.check(&a), Err(1));
        assert_eq!(failures.check(&b), Ok(()));
    }
}
