//! Merchants (tenants), their settings, their API keys and their people
//! (`people`: staff, operators, sessions).
//!
//! Owns tables `merchants` and `api_keys`; `people` owns its own.

mod auth;
mod auth_failures;
pub mod http;
mod key_cache;
pub mod keys_http;
mod model;
pub mod moves;
pub mod people;
pub mod rate_limit;
pub mod scopes;
mod store;
mod suspended;

pub use auth::{
    authenticate, bearer, client_address, request_tenant, session_token, unroutable, Admin, Caller,
    Origin, SessionPerson, Tenant, CSRF_HEADER, SESSION_COOKIE,
};
pub use auth_failures::{AuthFailures, Throttle};
pub use key_cache::{KeyCache, Principal};
pub use model::{in_turns, ApiKey, MerchantId, MerchantName, Rotation, Slug, Strategy};
pub use store::{
    authenticate_key, create_merchant, find_merchant_by_slug, issue_api_key, list_api_keys,
    list_merchants, merchant_exists, merchant_grant, merchant_name, merchant_names,
    merchant_settings, revoke_api_key, set_merchant_status, set_rate_limits, set_stock_strategy,
    suspended_merchants, ApiKeyInfo, CreateMerchantError, Created, CreationKey, IssuedKey,
    KeyGrant, MerchantFilter, MerchantListed,
};
pub use suspended::Suspended;
