//! Products and their variants (SKUs with a price).
//!
//! Owns tables `products` and `variants`. Other contexts ask it for prices
//! (`prices`) and whether a SKU exists (`sku_exists`).

pub mod http;
mod model;
mod store;

pub use model::{is_currency, Money, NewProduct, NewVariant, ProductPatch, Sku, MAX_PRICE};
pub use store::{
    create_product, delete_product, get_product, prices, product_facts, sku_exists, CatalogError,
    Price, Product, ProductFacts,
};
