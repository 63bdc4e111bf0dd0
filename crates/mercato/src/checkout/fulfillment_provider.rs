//! The seam to whoever ships an order's units: a `FulfillmentProvider`
//! chosen per merchant by configuration (`fulfillment_settings`; none set:
//! `manual`), as pricing's `TaxProvider` is chosen by the merchant's pricing
//! settings. `manual` is built in: the merchant ships, and says with what
//! carrier and tracking number. Others are plugged in when the app is built
//! (`app::Plugins`), by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::tenancy::MerchantId;

/// The name of the built-in provider, every merchant's until they choose another.
pub const MANUAL: &str = "manual";

/// Units to ship for an order.
#[derive(Debug, Clone)]
pub struct ShipmentRequest<'a> {
    pub merchant: MerchantId,
    pub order_id: Uuid,
    /// The fulfilment this shipment becomes.
    pub fulfillment_id: Uuid,
    /// The request's Idempotency-Key, for a provider that deduplicates.
    pub idempotency_key: Option<&'a str>,
    /// (sku, quantity)
    pub lines: &'a [(String, i64)],
    pub carrier: Option<&'a str>,
    pub tracking_number: Option<&'a str>,
}

/// What the provider says of a shipment it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipmentError {
    /// The provider will not ship these units (nothing was shipped).
    #[error("{0}")]
    Refused(String),
    /// The provider did not answer; nothing is recorded, retry.
    #[error("{0}")]
    Unavailable(String),
}

pub trait FulfillmentProvider: Send + Sync {
    /// The name merchants choose it by.
    fn name(&self) -> &str;
    fn ship<'a>(
        &'a self,
        request: ShipmentRequest<'a>,
    ) -> BoxFuture<'a, Result<Shipment, ShipmentError>>;
}

/// The merchant ships the units: the shipment is what they say it is.
pub struct Manual;

impl FulfillmentProvider for Manual {
    fn name(&self) -> &str {
        MANUAL
    }

    fn ship<'a>(
        &'a self,
        request: ShipmentRequest<'a>,
    ) -> BoxFuture<'a, Result<Shipment, ShipmentError>> {
        Box::pin(async move {
            Ok(Shipment {
                carrier: request.carrier.map(str::to_owned),
                tracking_number: request.tracking_number.map(str::to_owned),
            })
        })
    }
}

/// The providers a merchant may choose from, by name: `manual` and those plugged in.
#[derive(Clone)]
pub struct FulfillmentProviders(Arc<BTreeMap<String, Arc<dyn FulfillmentProvider>>>);

impl FulfillmentProviders {
    /// `manual` and `plugged` (a plugged-in provider named `manual` replaces it).
    pub fn new(plugged: &[Arc<dyn FulfillmentProvider>]) -> Self {
        let manual: Arc<dyn FulfillmentProvider> = Arc::new(Manual);
        let all = std::iter::once(manual)
            .chain(plugged.iter().cloned())
            .map(|p| (p.name().to_owned(), p))
            .collect();
        FulfillmentProviders(Arc::new(all))
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn FulfillmentProvider>> {
        self.0.get(name).cloned()
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Default for FulfillmentProviders {
    fn default() -> Self {
        FulfillmentProviders::new(&[])
    }
}
