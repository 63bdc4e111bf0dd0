//! Hostile cases: inputs (see `hostile/mod.rs`).
