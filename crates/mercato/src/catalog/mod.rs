//! Products and their variants (SKUs with a price and its history).
//!
//! Owns tables `products`, `variants` and `variant_prices`. Other contexts ask
//! it for prices (`prices`) and whether a SKU exists (`sku_exists`).

pub mod http;
mod model;
mod search;
mod store;
mod variants;

pub use model::{
    is_currency, Money, NewProduct, NewVariant, ProductPatch, ProductStatus, Sku, VariantPatch,
    MAX_PRICE,
};
pub use search::{list_products, upper_bound, ProductFilter};
pub use store::{
    create_product, delete_product, get_product, prices, product_facts, sku_exists, CatalogError,
    Price, Product, ProductFacts, Variant,
};
pub use variants::{
    add_variant, archive_variant, change_variant, variant_detail, PricePeriod, VariantDetail,
};
