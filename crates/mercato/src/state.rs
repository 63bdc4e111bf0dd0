//! What every request handler can reach: the services `App::build` wires up.

use std::sync::Arc;

use crate::cells::Cells;
use crate::db::Db;
use crate::tenancy::KeyCache;

/// Cloned for every request and extractor, so it is one reference-counted pointer.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    /// The main database: the tenant directory (merchants, API keys), and
    /// the cell `main`.
    pub db: Db,
    pub admin_token: Arc<str>,
    pub keys: KeyCache,
    /// Every cell with its services (stock admission, checkout); a request
    /// reaches its merchant's through `Tenant`.
    pub cells: Cells,
    /// The online migration of legacy orders: which shapes to write and read.
    pub migration: Arc<pgshift::ReadSwitch>,
    /// How webhooks are delivered (and which receiver URLs are accepted).
    pub webhooks: crate::events::worker::DeliveryConfig,
    /// Per-merchant rate limits, in process.
    pub limiter: crate::quotas::Limiter,
    /// The analytics marts the reports read.
    pub analytics: crate::analytics::Layout,
    /// Drives the moves started from the admin API.
    pub moves: Arc<crate::cells::driver::MoveDriver>,
}
