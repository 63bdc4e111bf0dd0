//! Products and their variants (SKUs with a price).

pub mod http;
mod model;
mod store;

pub use model::{Money, NewProduct, NewVariant, ProductPatch, Sku};
pub use store::{create_product, CatalogError};
