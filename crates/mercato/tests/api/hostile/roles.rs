//! Hostile cases: roles (see `hostile/mod.rs`).
