//! `mercato analytics export`: the export `serve` runs, by hand, with a
//! progress bar. Interrupted (Ctrl-C, kill -9), it leaves the marts as they
//! were; the next run exports the same events again, once.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Exporter, Layout};

#[derive(Debug, clap::Args)]
pub struct AnalyticsArgs {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub database: crate::config::CommandDatabaseArgs,
    /// Where the marts are (default: `analytics` in the data directory).
    #[arg(long, env = "MERCATO_ANALYTICS_DIR", global = true)]
    pub analytics_dir: Option<PathBuf>,
    /// Object storage the marts are mirrored to, as `serve` is given it:
    /// `s3://bucket/prefix` or `file:///directory`.
    #[arg(long, env = "MERCATO_ANALYTICS_STORE", global = true)]
    pub analytics_store: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Export what the outbox holds beyond the marts' position, in every cell.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Events per batch (1 to 100000).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
    /// The share of the time the export works (it rests the remainder, so
    /// the OLTP database keeps its latency); 1: flat out.
    #[arg(long, default_value_t = super::export::DEFAULT_DUTY_CYCLE, value_parser = duty_cycle)]
    pub duty_cycle: f64,
}

fn duty_cycle(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(d) if (0.05..=1.0).contains(&d) => Ok(d),
        _ => Err("must be a number from 0.05 to 1".into()),
    }
}

struct Bar(ProgressBar);

impl super::ExportProgress for Bar {
    fn total(&self, events: u64) {
        self.0.set_length(events);
    }
    fn done(&self, events: u64) {
        self.0.inc(events);
    }
}

pub async fn run(args: AnalyticsArgs) -> anyhow::Result<()> {
    let Command::Export(export) = args.command;
    let layout = Layout::new(
        args.analytics_dir
            .clone()
            .unwrap_or_else(|| args.database.data_dir.join("analytics")),
    );
    let mirror = args
        .analytics_store
        .as_deref()
        .map(super::Mirror::open)
        .transpose()?;
    let cells = crate::cells::cli::command_cells(&args.database, 2).await?;
    for (name, owner) in &cells.owners {
        // The worker role reads across merchants, as `serve`'s export does.
        let opts = crate::db::service_role_options(
            owner.connect_options().as_ref(),
            crate::db::WORKER_ROLE,
        );
        let pool = crate::db::connect(opts, 2)
            .await
            .with_context(|| format!("cell {name}"))?;
        let Some(_lock) = super::hold_export(&pool).await? else {
            anyhow::bail!(
                "cell {name} is being exported by another process (a running `serve`); its marts stay fresh without this command"
            );
        };
        let mut exporter = Exporter::new(name, pool.clone(), layout.clone());
        exporter.batch = export.batch;
        exporter.duty_cycle = export.duty_cycle;
        exporter.mirror = mirror.clone();
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.clone());
        let summary = exporter.run_once(&Bar(bar.clone())).await?;
        bar.finish_and_clear();
        println!(
            "{name}: {} events exported ({} rows, {} files), marts at position {}",
            summary.events, summary.rows, summary.files, summary.to
        );
        if let Some(mirror) = &mirror {
            println!("{name}: mirrored to {}", mirror.url);
        }
    }
    Ok(())
}
