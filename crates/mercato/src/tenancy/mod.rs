//! Merchants (tenants), their settings and their API keys.
//!
//! Owns tables `merchants` and `api_keys`.

mod auth;
mod auth_failures;
pub mod http;
mod key_cache;
pub mod keys_http;
mod model;
pub mod moves;
pub mod rate_limit;
pub mod scopes;
mod store;

pub use auth::{authenticate, request_tenant, unroutable, Admin, Tenant};
pub use auth_failures::AuthFailures;
pub use key_cache::{KeyCache, Principal};
pub use model::{in_turns, ApiKey, MerchantId, MerchantName, Rotation, Slug, Strategy};
pub use store::{
    authenticate_key, create_merchant, find_merchant_by_slug, issue_api_key, list_api_keys,
    merchant_exists, merchant_name, merchant_names, merchant_settings, revoke_api_key,
    set_rate_limits, set_stock_strategy, ApiKeyInfo, CreateMerchantError, Created, CreationKey,
    IssuedKey, KeyGrant,
};
