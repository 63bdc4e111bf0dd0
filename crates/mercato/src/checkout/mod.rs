//! Checkout: orders, the saga that turns a cart into a paid order, and the
//! order's life after it: refunds (of units or amounts), cancellation,
//! fulfilments through the merchant's `FulfillmentProvider`, returns, the
//! filtered order list and the timeline.
//!
//! Owns tables `orders`, `order_items`, `order_refunds`, `order_refund_lines`,
//! `order_fulfillments`, `order_fulfillment_lines`, `order_returns`,
//! `order_return_lines` and `fulfillment_settings`. Prices come from the
//! catalog (`catalog::prices`), units from inventory (`Inventory::reserve`,
//! `hold_for_order`, `settle_reservation`, `restock`), money from a
//! `PaymentProvider`, store credit from the wallet; every change is told
//! through the events outbox (`events::emit`), which the timeline reads.

mod cancel;
mod facts;
mod filters;
mod fulfillment;
mod fulfillment_http;
pub mod fulfillment_provider;
mod fulfillment_store;
pub mod http;
mod listing;
mod messages;
mod model;
pub mod privacy;
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
pub use listing::{explain_order_ids, list_orders};
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
