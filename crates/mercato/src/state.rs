//! What every request handler can reach: the services `App::build` wires up.
//! Authentication says who is calling (`tenancy::Tenant`); this says with
//! what: the platform-wide services, and each cell's.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cells::{Cells, MerchantDb};
use crate::checkout::Checkout;
use crate::db::Db;
use crate::inventory::Inventory;
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

/// The services bound to one cell's pools: stock admission (its queues hold
/// that database's rows), the checkout saga and its payment provider, and
/// the online migration of legacy orders as that database has it.
pub struct CellServices {
    pub inventory: Inventory,
    pub checkout: Checkout,
    /// Which shapes of legacy orders to write and read in this cell.
    pub migration: Arc<pgshift::ReadSwitch>,
}

pub struct Services {
    /// The main database: the tenant directory (merchants, API keys), and
    /// the cell `main`.
    pub db: Db,
    /// The bootstrap admin token; `None`: turned off (operators log in).
    pub admin_token: Option<Arc<str>>,
    /// Where people reach Mercato (the links in invitations), no trailing `/`.
    pub public_url: Arc<str>,
    /// The store API's shops, cached pages and host names.
    pub storefront: crate::storefront::Storefront,
    /// The suspended merchants (the workers skip them).
    pub suspended: crate::tenancy::Suspended,
    /// Failed logins, per account and address.
    pub logins: crate::tenancy::people::LoginThrottles,
    pub keys: KeyCache,
    /// Keys the database refused, per client address (429 past a burst).
    pub auth_failures: crate::tenancy::AuthFailures,
    /// The tenant directory: which cell serves each merchant (`MerchantDb`).
    pub cells: Cells,
    /// Each cell's services, by cell name (every cell of `cells` has them).
    pub cell_services: HashMap<String, Arc<CellServices>>,
    /// How webhooks are delivered (and which receiver URLs are accepted).
    pub webhooks: crate::events::worker::DeliveryConfig,
    /// Per-merchant rate limits, in process.
    pub limiter: crate::quotas::Limiter,
    /// The analytics marts the reports read.
    pub analytics: crate::analytics::Layout,
    /// Checkout's orders as pricing reads them (the anomaly check).
    pub order_facts: Arc<dyn crate::pricing::OrderFacts>,
    /// Drives the moves started from the admin API.
    pub moves: Arc<crate::cells::driver::MoveDriver>,
}

impl Services {
    /// The services of the cell serving a merchant's database.
    pub fn serving(&self, db: &MerchantDb) -> &CellServices {
        self.cell_services
            .get(db.cell_name())
            .map(Arc::as_ref)
            .expect("App::build gives every cell its services")
    }
}
