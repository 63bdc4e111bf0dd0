//! `mercato migrate <plan> <command>`: an alias of the `pgshift` command
//! line (`pgshift::cli`), with Mercato's connection set-up.

use std::path::Path;

use anyhow::Context;
use pgshift::cli;
use pgshift::{Migrator, Plan};

/// The phases of a plan, each one command.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Command {
    /// Check the plan against the rules for live tables; runs nothing.
    Lint,
    /// Create the new shape; writers dual-write from here on.
    Expand,
    /// Copy the old rows in throttled, resumable batches.
    Backfill,
    /// Serve this percentage of reads from the new shape (0 rolls back).
    Switch {
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
    },
    /// Compare counts and checksums of both shapes, range by range.
    Validate,
    /// Drop the old shape (irreversible; needs validation and 100% reads for a while).
    Contract,
    /// Where the migration stands.
    Status,
    /// Roll back to the old shape (before contract only).
    Abort,
}

impl From<Command> for cli::Command {
    fn from(command: Command) -> Self {
        match command {
            Command::Lint => cli::Command::Lint,
            Command::Expand => cli::Command::Expand,
            Command::Backfill => cli::Command::Backfill,
            Command::Switch { percent } => cli::Command::Switch { percent },
            Command::Validate => cli::Command::Validate,
            Command::Contract => cli::Command::Contract,
            Command::Status => cli::Command::Status,
            Command::Abort => cli::Command::Abort,
        }
    }
}

pub async fn run(database_url: &str, plan_path: &Path, command: Command) -> anyhow::Result<()> {
    // A plan that does not parse stops here, before any connection is made.
    let plan = Plan::load(plan_path)?;
    let opts = database_url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let pool = crate::db::connect(opts, 4).await?;
    let mut migrator = Migrator::open(pool, plan).await?;
    migrator.progress = true;
    cli::run(&migrator, command.into(), &mut std::io::stdout()).await?;
    Ok(())
}
