//! Checkout: orders, and the saga that turns a cart into a paid order.
//!
//! Owns tables `orders` and `order_items`. Prices come from the catalog
//! (`catalog::prices`), units from inventory (`Inventory::reserve`,
//! `hold_for_order`, `settle_reservation`), money from a `PaymentProvider`.

mod cancel;
mod facts;
mod filters;
mod fulfillment;
mod fulfillment_http;
pub mod fulfillment_provider;
mod fulfillment_store;
pub mod http;
mod listing;
mod model;
mod quote;
mod read_models;
mod refund;
mod refund_http;
mod refund_store;
mod refund_summary;
mod return_store;
mod returns;
mod saga;
mod store;
pub mod worker;

pub use cancel::CancelError;
pub use facts::PricedOrderFacts;
pub use filters::{OrderFilter, RawOrderFilter};
pub use fulfillment::{FulfillError, NewFulfillment};
pub use fulfillment_provider::{
    FulfillmentProvider, FulfillmentProviders, Shipment, ShipmentError, ShipmentRequest,
};
pub use fulfillment_store::StoredFulfillment;
pub use listing::explain_order_ids;
pub use model::{
    parse_country, parse_promo, parse_refund, CheckoutBody, CustomerBody, NewCheckout, RefundBody,
    RefundRequest,
};
pub use read_models::{
    confirmed_orders_between, count_confirmed_between, merchant_of_order, order_facts,
    recorded_pricing, LineFacts, OrderFacts, PricedOrderRow,
};
pub use refund::RefundError;
pub use refund_store::{stalled_refunds, StoredRefund};
pub use refund_summary::{RefundStatus, RefundSummary};
pub use returns::ReturnError;
pub use saga::{cart_for, Checkout, CheckoutError, Driver};
pub use store::{stalled_orders, FulfillmentStatus, Order, OrderStatus, Step};
