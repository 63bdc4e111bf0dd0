//! Customers as records: one per e-mail address (case-insensitive) and
//! merchant, made by the first checkout that names the address or by the
//! merchant; found by e-mail or name prefix; their store credit (the wallet
//! context keeps the ledger, by e-mail) read and given here.
//!
//! Owns table `customers`. Checkout calls [`link`] for each order.

pub mod http;
mod model;
mod store;

pub use model::{
    email_key, Address, CustomerPatch, CustomerQuery, NewCredit, NewCustomer, MAX_ADDRESSES,
};
pub use store::{create, erase, find, link, list, update, Customer, CustomerError};
