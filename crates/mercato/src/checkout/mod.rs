//! Checkout: orders, and the saga that turns a cart into a paid order.
//!
//! Owns tables `orders` and `order_items`. Prices come from the catalog
//! (`catalog::prices`), units from inventory (`Inventory::reserve`,
//! `hold_for_order`, `settle_reservation`), money from a `PaymentProvider`.

pub mod http;
mod model;
mod saga;
mod store;
pub mod worker;

pub use model::{parse_promo, CheckoutBody, CustomerBody, NewCheckout};
pub use saga::{cart_for, Checkout, CheckoutError, Driver};
pub use store::{merchant_of_order, recorded_pricing, Order, OrderStatus, Step};
