//! `mercato migrate <plan> <command>`: an alias of the `pgshift` command
//! line (`pgshift::cli`), with Mercato's connection set-up.

use std::path::Path;

use anyhow::Context;
use pgshift::cli;
use pgshift::{Migrator, Plan};

/// The phases of a plan: pgshift's own subcommands.
pub use pgshift::cli::Command;

pub async fn run(database_url: &str, plan_path: &Path, command: Command) -> anyhow::Result<()> {
    // A plan that does not parse stops here, before any connection is made.
    let plan = Plan::load(plan_path)?;
    let opts = database_url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let pool = crate::db::connect(opts, 4).await?;
    let mut migrator = Migrator::open(pool, plan).await?;
    migrator.progress = true;
    cli::run(&migrator, command, &mut std::io::stdout()).await?;
    Ok(())
}
