//! Checkout: orders, and the saga that turns a cart into a paid order.

pub mod http;
mod model;
mod saga;
mod store;
pub mod worker;

pub use model::{CheckoutBody, NewCheckout};
pub use saga::{Checkout, CheckoutError, Driver};
pub use store::Order;
