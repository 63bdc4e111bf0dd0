//! Merchants (tenants) and their API keys.

pub mod http;
mod model;
mod store;

pub use model::{ApiKey, MerchantId, MerchantName, Slug};
pub use store::{
    authenticate_key, create_merchant, find_merchant_by_slug, issue_api_key, set_stock_strategy,
    CreateMerchantError,
};
