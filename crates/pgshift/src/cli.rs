//! The command line's work, without its parsing: the `pgshift` binary and
//! any program embedding pgshift's phases (Mercato's `mercato migrate`) call
//! [`run`] with a [`Command`] they parsed their own way.
//!
//! Output is lines for a person on the writer given (stdout), then one
//! `status:` line. Progress (backfill, validation) goes to stderr: a bar on a
//! terminal, otherwise a plain line every [`Migrator::progress_every`]. A
//! reader that goes away (`pgshift plan.toml status | head -1`) is not an
//! error: the phase still runs to its end, and the lines nobody reads are
//! dropped.

use std::fmt::Display;
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::{Error, Migrator, Plan, Status};

/// The phases of a plan, each one command (the `pgshift` binary's and
/// `mercato migrate`'s subcommands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Check the plan against the rules for live tables and the live catalog; runs nothing.
    Lint,
    /// Create the new shape (and the dual_write triggers); writers dual-write from here on.
    Expand,
    /// Copy the old rows in throttled, resumable keyset batches (Ctrl-C or kill -9 safe).
    Backfill,
    /// Serve this percentage of reads from the new shape (0 rolls back at once).
    Switch {
        /// Share of reads on the new shape, 0-100.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
    },
    /// Compare counts and checksums of both shapes, key range by key range
    /// (throttled; an interrupted run resumes where it stopped).
    Validate {
        /// Start over instead of resuming an interrupted validation.
        #[arg(long)]
        restart: bool,
    },
    /// Drop the old shape (irreversible; needs a passed validation and 100% reads for a while).
    Contract,
    /// Where the migration stands; only reads.
    Status,
    /// Roll back to the old shape and remove the new one (before contract only).
    Abort,
}

/// Reads the plan (before any connection: a plan that does not parse stops
/// here), connects to `database_url` and runs `command`: what the `pgshift`
/// binary does.
pub async fn run_url(
    database_url: &str,
    plan_path: &Path,
    command: Command,
    progress_every: Duration,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let plan = Plan::load(plan_path)?;
    let pool = connect(database_url).await?;
    let mut migrator = Migrator::open(pool, plan).await?;
    migrator.progress = true;
    migrator.progress_every = progress_every;
    let result = run(&migrator, command, out).await;
    migrator.pool.close().await;
    result
}

/// A small pool on `database_url`. A server that does not answer fails
/// within seconds, with the reason (a pool alone only says it timed out).
pub async fn connect(database_url: &str) -> Result<PgPool, Error> {
    let opts: PgConnectOptions = database_url
        .parse()
        .map_err(|e| Error::Connect(format!("the database URL is not a PostgreSQL URL: {e}")))?;
    let target = format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    );
    let failed = |e: &dyn Display| Error::Connect(format!("cannot connect to {target}: {e}"));
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&opts)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(failed(&e)),
        Err(_) => return Err(failed(&"no answer within 10 s")),
    }
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| failed(&e))
}

/// Runs one phase with `migrator` and reports on `out`: a line saying what
/// was done and what comes next, then the `status:` line.
pub async fn run(
    migrator: &Migrator,
    command: Command,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let mut out = Lines { out, gone: false };
    let name = migrator.plan().name.clone();
    match command {
        Command::Lint => {
            let findings = migrator.lint().await?;
            if !findings.is_empty() {
                return Err(Error::Lint(findings));
            }
            out.say(format_args!("{name}: lint clean"))?;
        }
        Command::Expand => {
            migrator.expand().await?;
            out.say(format_args!(
                "{name}: expanded; writers dual-write from now on. Next: backfill"
            ))?;
        }
        Command::Backfill => {
            let report = tokio::select! {
                r = migrator.backfill() => r?,
                _ = tokio::signal::ctrl_c() => {
                    let status = migrator.status().await?;
                    return Err(Error::Interrupted(format!(
                        "interrupted after {} rows (cursor {}); run backfill again to resume",
                        status.rows_backfilled,
                        cursor_text(&status)
                    )));
                }
            };
            out.say(format_args!(
                "{name}: backfilled {} rows in {} batches, {:.1} s ({:.0} rows/s, throttled {} times){}. Next: {}",
                report.rows,
                report.batches,
                report.seconds,
                report.rows as f64 / report.seconds.max(1e-9),
                report.throttled,
                if report.vacuumed.is_empty() {
                    String::new()
                } else {
                    format!("; vacuumed {} in {:.1} s", report.vacuumed.join(", "), report.vacuum_seconds)
                },
                if migrator.needs_switch() { "switch --percent 10" } else { "validate" },
            ))?;
        }
        Command::Switch { percent } => {
            migrator.switch(percent).await?;
            out.say(format_args!(
                "{name}: {percent}% of reads now use the new shape"
            ))?;
        }
        Command::Validate { restart } => {
            if restart {
                migrator.restart_validation().await?;
            }
            let report = tokio::select! {
                r = migrator.validate() => r?,
                _ = tokio::signal::ctrl_c() => {
                    return Err(Error::Interrupted(
                        "validation interrupted; run validate again to resume (or validate --restart)".into(),
                    ));
                }
            };
            out.say(format_args!(
                "{name}: validated {} rows in {} key ranges{}: all match (throttled {} times)",
                report.rows,
                report.ranges,
                if report.resumed {
                    ", resuming an interrupted run"
                } else {
                    ""
                },
                report.throttled
            ))?;
        }
        Command::Contract => {
            out.say(format_args!(
                "{name}: contract drops the old shape. This cannot be undone."
            ))?;
            migrator.contract().await?;
            out.say(format_args!("{name}: contracted"))?;
        }
        Command::Abort => {
            migrator.abort().await?;
            out.say(format_args!(
                "{name}: aborted; reads and writes are back on the old shape only"
            ))?;
        }
        Command::Status => {}
    }
    let status = migrator.status().await?;
    out.say(status_line(&status))
}

/// The `status:` line.
pub fn status_line(s: &Status) -> String {
    format!(
        "status: phase {}, rows backfilled {} (cursor {}), reads on new {}%{}, validated {}, shadow reads {} compared / {} mismatched",
        s.phase,
        s.rows_backfilled,
        cursor_text(s),
        s.switch_percent,
        s.full_switch_seconds
            .map(|t| format!(" (100% for {t:.0} s)"))
            .unwrap_or_default(),
        s.validated,
        s.shadow_compared,
        s.shadow_mismatched
    )
}

fn cursor_text(s: &Status) -> String {
    s.backfill_cursor
        .as_deref()
        .map(crate::key::show)
        .unwrap_or_else(|| "-".into())
}

/// An error as one line: its message and each cause it does not already
/// spell out, newlines folded.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !line.contains(&cause_text) {
            line = format!("{line}: {cause_text}");
        }
        source = cause.source();
    }
    line.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lines for a person. Once the reader has gone (a closed pipe), the rest
/// are dropped rather than failing the phase.
struct Lines<'a> {
    out: &'a mut (dyn Write + Send),
    gone: bool,
}

impl Lines<'_> {
    fn say(&mut self, line: impl Display) -> Result<(), Error> {
        if self.gone {
            return Ok(());
        }
        match writeln!(self.out, "{line}").and_then(|()| self.out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            Err(e) => Err(Error::Output(e)),
        }
    }
}
