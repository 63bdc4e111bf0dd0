//! `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not
//! know the macro reads that directory: without this, a new migration file
//! is left out of an incremental build until something else changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
