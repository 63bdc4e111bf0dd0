//! The audit trail: who changed what of a merchant's, when and from where,
//! with the columns that changed. Records are written in the transaction of
//! the change by the triggers of migration 0034, for every transaction that
//! names who it acts for (`db::TenantTx::act_for`, `Tenant::begin_audited`,
//! `MerchantDb::acting_for`); this context owns `audit_log` and reads it.
//! The service roles may add records and read them, never change or delete
//! them.

pub mod http;
mod model;
mod store;

pub use model::{AuditFilter, AuditRecord, RawAuditFilter};
pub use store::{committed_between, list, unpositioned, ExportedRecord};
