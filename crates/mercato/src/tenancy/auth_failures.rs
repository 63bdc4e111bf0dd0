//! Failed authentications per client address: each key the database refuses
//! takes a token from its address's bucket; an address with none left is
//! answered 429 before its next unknown key reaches the database. Keys
//! already verified (or already refused) cost no query and are never held
//! here, so a merchant's working key from the same address keeps working.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Failed lookups an address may make at once,
const BURST: f64 = 10.0;
/// and then per second: far above a client with a mistyped key, far below a
/// scan.
const PER_SECOND: f64 = 2.0;
/// Addresses tracked; past it, the full buckets (same as untracked) go first.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct AuthFailures(Mutex<HashMap<IpAddr, Bucket>>);

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.at = now;
    }
}

impl AuthFailures {
    /// `Err(seconds)` to wait when `address` has no failed lookup left.
    pub fn check(&self, address: IpAddr) -> Result<(), u64> {
        let mut buckets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = buckets.get_mut(&address) else {
            return Ok(());
        };
        bucket.refill(Instant::now());
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / PER_SECOND).ceil().max(1.0) as u64)
        }
    }

    /// Records a key the database refused for `address`.
    pub fn failed(&self, address: IpAddr) {
        let mut buckets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&address) {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < BURST
            });
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(address).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.refill(now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_after_its_burst_of_failures_and_others_are_not() {
        let failures = AuthFailures::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        for _ in 0..BURST as usize {
            assert_eq!(failures.check(a), Ok(()));
            failures.failed(a);
        }
        assert_eq!(failures.check(a), Err(1));
        assert_eq!(failures.check(b), Ok(()));
    }
}
