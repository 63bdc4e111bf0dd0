//! Mercato: a multi-tenant e-commerce backend on PostgreSQL.

pub mod app;
pub mod bench;
pub mod catalog;
pub mod checkout;
pub mod config;
pub mod db;
pub mod demo;
pub mod http;
pub mod inventory;
pub mod legacy_orders;
pub mod payments;
pub mod shift;
pub mod telemetry;
pub mod tenancy;

pub use app::App;
pub use config::Config;
