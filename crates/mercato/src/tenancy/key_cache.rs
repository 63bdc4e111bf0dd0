//! Verified API keys, cached so the hot path costs no query for authentication;
//! and keys the database refused, cached briefly so a client repeating one
//! costs no query either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{MerchantId, Strategy};

/// How long a verified key is trusted without asking the database again.
/// A revoked key stops working within this time.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_MAX: usize = 10_000;
/// How long a refused key is refused without asking the database again. A
/// key is random and stored before it is ever shown, so a hash the database
/// did not know never becomes valid: the time only bounds the memory.
const REFUSED_TTL: Duration = Duration::from_secs(5);
const REFUSED_MAX: usize = 10_000;

/// What a verified key stands for: its merchant and the merchant's settings.
#[derive(Clone, Debug)]
pub struct Principal {
    pub merchant: MerchantId,
    pub strategy: Strategy,
    /// The merchant's rate limits; `None`: not limited.
    pub plan: Option<Arc<crate::quotas::Plan>>,
    /// What the key may do.
    pub access: super::scopes::Access,
    /// When the key stops working (checked on every use, cached or not).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The platform suspended the merchant (403; `forget` on a change).
    pub suspended: bool,
}

/// Verified key hashes, so the hot path costs no query for authentication.
#[derive(Default)]
pub struct KeyCache(
    Mutex<HashMap<Vec<u8>, (Principal, Instant)>>,
    /// Refused key hashes, and when.
    Mutex<HashMap<Vec<u8>, Instant>>,
);

impl KeyCache {
    /// Whether the database refused this key hash in the last few seconds.
    pub fn refused(&self, hash: &[u8]) -> bool {
        let refused = self.1.lock().unwrap_or_else(|p| p.into_inner());
        refused
            .get(hash)
            .is_some_and(|at| at.elapsed() < REFUSED_TTL)
    }

    pub fn put_refused(&self, hash: Vec<u8>) {
        let mut refused = self.1.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= REFUSED_MAX {
            refused.retain(|_, at| at.elapsed() < REFUSED_TTL);
            if refused.len() >= REFUSED_MAX {
                refused.clear();
            }
        }
        refused.insert(hash, Instant::now());
    }

    pub fn get(&self, hash: &[u8]) -> Option<Principal> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(hash)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    /// Drops a merchant's cached keys, so its next request reads its settings afresh.
    pub fn forget(&self, merchant: MerchantId) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (p, _)| p.merchant != merchant);
    }

    pub fn put(&self, hash: Vec<u8>, principal: Principal) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEY_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(hash, (principal, Instant::now()));
    }
}
