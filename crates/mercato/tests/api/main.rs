//! Black-box tests: the real app on a random port, a fresh database per test.

mod analytics;
mod audit;
mod catalog;
mod cells;
mod checkout;
mod crash;
mod customers;
mod hardening;
mod health;
mod helpers;
mod hostile;
mod inventory;
mod migration;
pub mod orders;
mod people;
mod pricing;
mod quotas;
mod remediation;
mod rls;
mod rollout;
mod schema_migrations;
mod scopes;
mod states;
mod storefront;
mod tenancy;
pub mod webhooks;
