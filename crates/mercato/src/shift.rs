//! `mercato migrate <plan> <command>`: pgshift's phases from the command line.

use std::path::Path;

use anyhow::Context;
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

pub async fn run(database_url: &str, plan_path: &Path, command: Command) -> anyhow::Result<()> {
    // A plan that does not parse stops here, before any connection is made.
    let plan = Plan::load(plan_path)?;
    let opts = database_url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let pool = crate::db::connect(opts, 4).await?;
    let mut migrator = Migrator::open(pool, plan).await?;
    migrator.progress = true;
    let name = migrator.plan().name.clone();
    match command {
        Command::Lint => {
            let findings = migrator.lint().await?;
            if !findings.is_empty() {
                return Err(pgshift::Error::Lint(findings).into());
            }
            println!("{name}: lint clean");
        }
        Command::Expand => {
            migrator.expand().await?;
            println!("{name}: expanded; writers dual-write from now on. Next: backfill");
        }
        Command::Backfill => {
            let report = tokio::select! {
                r = migrator.backfill() => r?,
                _ = tokio::signal::ctrl_c() => {
                    let status = migrator.status().await?;
                    anyhow::bail!(
                        "interrupted after {} rows (cursor {:?}); run backfill again to resume",
                        status.rows_backfilled,
                        status.backfill_cursor
                    );
                }
            };
            println!(
                "{name}: backfilled {} rows in {} batches, {:.1} s ({:.0} rows/s, throttled {} times). Next: switch --percent 10",
                report.rows,
                report.batches,
                report.seconds,
                report.rows as f64 / report.seconds.max(1e-9),
                report.throttled
            );
        }
        Command::Switch { percent } => {
            migrator.switch(percent).await?;
            println!("{name}: {percent}% of reads now use the new shape");
        }
        Command::Validate => {
            let report = migrator.validate().await?;
            println!(
                "{name}: validated {} rows in {} key ranges: all match",
                report.rows, report.ranges
            );
        }
        Command::Contract => {
            println!("{name}: contract drops the old shape. This cannot be undone.");
            migrator.contract().await?;
            println!("{name}: contracted");
        }
        Command::Abort => {
            migrator.abort().await?;
            println!("{name}: aborted; reads and writes are back on the old shape only");
        }
        Command::Status => {}
    }
    let s = migrator.status().await?;
    println!(
        "status: phase {}, rows backfilled {} (cursor {}), reads on new {}%{}, validated {}, shadow reads {} compared / {} mismatched",
        s.phase,
        s.rows_backfilled,
        s.backfill_cursor.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        s.switch_percent,
        s.full_switch_seconds
            .map(|t| format!(" (100% for {t:.0} s)"))
            .unwrap_or_default(),
        s.validated,
        s.shadow_compared,
        s.shadow_mismatched
    );
    Ok(())
}
