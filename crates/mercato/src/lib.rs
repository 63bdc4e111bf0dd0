//! Mercato: a multi-tenant e-commerce backend on PostgreSQL.
//!
//! ## Where things are
//! - A request enters through `routes::router` (every route, mounted with its
//!   OpenAPI docs), passes the tower layers of `http::with_plumbing` (request id,
//!   tracing, timeout, idempotency keys), and reaches a handler in a context's
//!   `http.rs`. Handlers authenticate (`tenancy::Tenant` / `Admin`: who is
//!   calling, and the merchant's database handle), take services from the
//!   application state, parse the body into domain types (`validation`), and
//!   call the context's functions.
//! - `app.rs` wires config → database → router → background workers; `main.rs`
//!   is only the command line.
//! - Each context keeps the same files: `model.rs` (types and rules, no I/O, no
//!   HTTP), `store.rs` (its SQL), `http.rs` (its routes), `worker.rs` (its loops).
//!   Contexts call each other through the functions their `mod.rs` exports,
//!   never by querying another context's tables.
//!
//! ## Who owns which tables
//! | context | tables |
//! |---|---|
//! | `tenancy` | `merchants`, `api_keys` |
//! | `storefront` | `publishable_keys` |
//! | `tenancy::people` | `people`, `sessions`, `staff`, `staff_invitations` |
//! | `catalog` | `products`, `variants`, `variant_prices` |
//! | `inventory` | `stock`, `reservations`, `reservation_items`, `stock_sales` |
//! | `checkout` | `orders`, `order_items`, `order_refunds`, `order_refund_lines`, `order_fulfillments`, `order_fulfillment_lines`, `order_returns`, `order_return_lines`, `fulfillment_settings` |
//! | `payments` (sandbox provider) | `payments`, `payment_refunds` |
//! | `pricing` | `pricing_settings`, `pricing_rule_revisions`, `pricing_rule_usage`, `pricing_customer_usage`, `pricing_order_uses`, `pricing_rollouts`, `pricing_rollout_orders`, `pricing_alerts` |
//! | `events` | `events`, `webhook_endpoints`, `webhook_deliveries`, `webhook_attempts` |
//! | `remediation` | `remediation_incidents`, `order_adjustments`, `remediation_effects` |
//! | `customers` | `customers` |
//! | `wallet` | `wallets`, `wallet_entries` |
//! | `mail` | `mail_outbox`, `mail_settings` |
//! | `legacy_orders` | `legacy_orders`, `legacy_order_id_key`, `order_records`, `legacy_customers` (the pgshift demo migration) |
//! | `cells` | `tenant_directory`, `tenant_moves`, `cell_absent`, `move_changes` |
//! | `idempotency` | `idempotency_keys` |
//! | `audit` | `audit_log` (written by triggers on the audited tables, migration 0034) |
//!
//! `analytics` owns no table: it reads `events` by commit position and keeps
//! its marts in the analytics directory.
//!
//! pgshift keeps its own state in schema `pgshift`. The pure pricing arithmetic
//! is the `pricing` crate (`::pricing`); `crate::pricing` is its service.

pub mod analytics;
pub mod app;
pub mod audit;
pub mod bench;
pub mod catalog;
pub mod cells;
pub mod checkout;
pub mod config;
pub mod customers;
pub mod db;
pub mod demo;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod inventory;
pub mod legacy_orders;
pub mod mail;
pub mod pagination;
pub mod payments;
pub mod pricing;
pub mod privacy;
pub mod quotas;
pub mod remediation;
pub mod reprice;
pub mod routes;
pub mod shift;
pub mod state;
pub mod storefront;
pub mod team;
pub mod telemetry;
pub mod tenancy;
pub mod validation;
pub mod wallet;

pub use app::App;
pub use config::Config;
