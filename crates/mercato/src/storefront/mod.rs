//! The shopper's side (issue 38): the store API under `/store/v1`, which a
//! shop's web page calls with a publishable key (`pk_…`) or on the shop's
//! own host name (`{slug}.{--store-domain}`). So far: publishable keys,
//! tenant resolution, CORS and the catalog for shoppers (cached: a hot
//! product page costs no query). Carts and customer accounts come next.
//!
//! Owns table `publishable_keys`.

pub mod http;
pub mod model;
mod pages;
pub mod shop;
mod store;
mod ttl;

pub use shop::{Shop, ShopDirectory};
pub use store::PublishableKeyView;

/// The storefront's shared state.
pub struct Storefront {
    /// Shops by host name: `{slug}.{domain}`.
    pub domain: String,
    pub directory: ShopDirectory,
    pub pages: pages::PageCache,
}

impl Storefront {
    pub fn new(domain: &str) -> Storefront {
        Storefront {
            domain: domain.trim_matches('.').to_lowercase(),
            directory: ShopDirectory::default(),
            pages: pages::PageCache::default(),
        }
    }
}
