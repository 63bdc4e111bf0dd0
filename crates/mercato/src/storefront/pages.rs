//! Answers of the store's catalog, kept a moment per shop and URL: a hot
//! product page is read from the database once per `TTL`, whatever its
//! traffic, and a browser that has it already gets a 304 by its `ETag`.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::ttl::TtlMap;
use crate::db::MerchantId;

/// How long an answer is served from memory: availability shown is at
/// most this old (the checkout itself never oversells).
pub const TTL: Duration = Duration::from_secs(2);
/// What a browser or CDN may keep it for.
pub const MAX_AGE_SECONDS: u64 = 5;
const MAX_PAGES: usize = 10_000;

/// A page: its body and its entity tag.
#[derive(Clone)]
pub struct Page {
    pub body: axum::body::Bytes,
    pub etag: String,
}

impl Page {
    pub fn new(body: Vec<u8>) -> Page {
        let digest = Sha256::digest(&body);
        Page {
            etag: format!("\"{}\"", hex::encode(&digest[..12])),
            body: body.into(),
        }
    }
}

/// Pages by shop and URL.
pub struct PageCache(TtlMap<(MerchantId, String), Page>);

impl Default for PageCache {
    fn default() -> Self {
        PageCache(TtlMap::new(TTL, MAX_PAGES))
    }
}

impl PageCache {
    pub fn get(&self, merchant: MerchantId, url: &str) -> Option<Page> {
        self.0.get(&(merchant, url.to_owned()))
    }

    pub fn put(&self, merchant: MerchantId, url: &str, page: Page) {
        self.0.put((merchant, url.to_owned()), page);
    }
}
