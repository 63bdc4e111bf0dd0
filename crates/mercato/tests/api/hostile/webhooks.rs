//! Hostile cases: webhooks (see `hostile/mod.rs`).
