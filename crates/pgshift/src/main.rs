//! `pgshift <plan> <phase>`: one phase of a zero-downtime migration plan
//! against `DATABASE_URL`. Parsing only; the work is in `pgshift::cli`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pgshift::cli;

#[derive(Parser)]
#[command(
    name = "pgshift",
    version,
    about = "Zero-downtime schema and data migrations for a live PostgreSQL",
    long_about = "Zero-downtime schema and data migrations for a live PostgreSQL.\n\n\
        A plan (TOML) runs phase by phase, in order: lint, expand, backfill, switch, \
        validate, contract (or abort, before contract). State lives in the database \
        (schema pgshift), so any phase can be interrupted and run again. \
        See crates/pgshift/README.md for the plan format."
)]
struct Args {
    /// The plan (TOML), e.g. examples/walkthrough.toml
    plan: PathBuf,
    #[command(subcommand)]
    phase: cli::Command,
    /// PostgreSQL URL of the role that runs the migration (it owns the tables it changes).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// Seconds between progress lines when stderr is not a terminal (backfill, validate, contract).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, global = true, value_parser = positive_seconds)]
    progress_every: f64,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err("must be a number of seconds above 0".into()),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version print on stdout as usual.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e.to_string(), 2),
    };
    init_tracing();
    let Some(url) = args.database_url else {
        return fail(
            "DATABASE_URL (or --database-url) must name the database to migrate",
            1,
        );
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    let result = runtime.block_on(cli::run_url(
        &url,
        &args.plan,
        args.phase,
        Duration::from_secs_f64(args.progress_every),
        &mut std::io::stdout(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&cli::one_line(&e), 1),
    }
}

/// One line on stderr; never panics, even with stderr closed.
fn fail(message: &str, code: u8) -> ExitCode {
    let line = message
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    let _ = writeln!(std::io::stderr(), "pgshift: {line}");
    ExitCode::from(code)
}

/// Warnings (lock timeouts retried, …) on stderr; RUST_LOG overrides.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}
