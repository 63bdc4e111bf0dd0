//! Legacy orders: the data Mercato migrates online with pgshift (plan
//! `migrations/plans/orders_money_customers.toml`). The write path dual-writes
//! as the migration's phase says; reads follow the percentage switch, with
//! shadow reads comparing both shapes on a sample.

pub mod http;
mod store;

pub use store::LegacyOrder;

/// The pgshift plan this module follows.
pub const MIGRATION: &str = "orders_money_customers";
/// The plan itself, shipped with the binary for `mercato demo migration` and benches.
pub const PLAN: &str = include_str!("../../migrations/plans/orders_money_customers.toml");
