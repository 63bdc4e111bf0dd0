//! The `mercato` command line. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mercato::app::DatabaseSource;
use mercato::{App, Config};

/// glibc malloc was about 12% of the server's CPU under the checkout benchmark
/// (perf); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mercato", version, about = "Multi-tenant e-commerce backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service. Without DATABASE_URL it starts a private PostgreSQL
    /// under --data-dir, migrates it and seeds a demo merchant.
    Serve(Box<Config>),
    /// Run a benchmark; prints ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run one phase of a zero-downtime migration plan (pgshift) against DATABASE_URL.
    Migrate(MigrateArgs),
    /// Demonstrations.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Price a stored order again: with its recorded calculator version and rule-set
    /// revision it reproduces what was charged; with others, what they would charge.
    Reprice(mercato::reprice::Options),
    /// Repair a pricing incident: open, scan, report, settle, status.
    Remediate(mercato::remediation::cli::Remediate),
    /// Which database (cell) serves each merchant; move one to another online.
    Tenants(mercato::cells::cli::Tenants),
    /// Cells of the embedded mode: private clusters beside the main one.
    Cells(mercato::cells::embedded::CellsArgs),
    /// The analytics marts: export the outbox to them by hand.
    Analytics(mercato::analytics::cli::AnalyticsArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The plan (TOML), e.g. crates/mercato/migrations/plans/orders_money_customers.toml
    plan: PathBuf,
    #[command(subcommand)]
    phase: mercato::shift::Command,
    #[command(flatten)]
    database: mercato::config::DatabaseUrlArg,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Seed legacy orders and migrate them online under live HTTP traffic; prints a JSON summary.
    Migration(mercato::bench::live_migration::Options),
    /// Seed a merchant whose orders a bad calculator version mis-priced in a window; prints the facts.
    Incident(mercato::demo::incident::Options),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Concurrent buyers reserve one hot SKU, then many SKUs, with each stock strategy.
    Checkout(mercato::bench::checkout::Options),
    /// Backfill rows/s under live load versus a plain INSERT … SELECT, and the load's p99.
    Migrate(mercato::bench::migrate::Options),
    /// The pure calculator on realistic carts (one core) versus quotes over HTTP.
    Pricing(mercato::bench::pricing::Options),
    /// Events from the outbox to a local receiver, against the receiver's own ceiling.
    Webhooks(mercato::bench::webhooks::Options),
    /// The remediation scan over stored orders versus the pure calculator on the same carts.
    Reprice(mercato::bench::reprice::Options),
    /// One merchant's latency alone, then while another floods at 20 times its plan.
    Neighbours(mercato::bench::neighbours::Options),
    /// A merchant with many orders moved to a cell on another cluster under live load.
    Move(mercato::bench::moves::Options),
    /// Order lines of many merchants exported to the analytics marts under load; reports from the marts vs PostgreSQL.
    Analytics(mercato::bench::analytics::Options),
    /// The order list's first page under each filter (and the customer search) over HTTP vs the same listing raw.
    Orders(mercato::bench::orders::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mercato::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Migrate(args) => migrate(args).await,
            Command::Demo(DemoCommand::Migration(opts)) => {
                mercato::bench::live_migration::run(opts).await.map(|_| ())
            }
            Command::Bench(BenchCommand::Migrate(opts)) => mercato::bench::migrate::run(opts).await,
            Command::Reprice(opts) => mercato::reprice::run(opts).await,
            Command::Remediate(args) => mercato::remediation::cli::run(args).await,
            Command::Tenants(args) => mercato::cells::cli::run(args).await,
            Command::Cells(args) => mercato::cells::embedded::run(args).await,
            Command::Analytics(args) => mercato::analytics::cli::run(args).await,
            Command::Demo(DemoCommand::Incident(opts)) => {
                mercato::demo::incident::run(opts).await.map(|_| ())
            }
            Command::Bench(BenchCommand::Pricing(opts)) => mercato::bench::pricing::run(opts).await,
            Command::Bench(BenchCommand::Reprice(opts)) => mercato::bench::reprice::run(opts).await,
            Command::Bench(BenchCommand::Move(opts)) => mercato::bench::moves::run(opts).await,
            Command::Bench(BenchCommand::Analytics(opts)) => {
                mercato::bench::analytics::run(opts).await
            }
            Command::Bench(BenchCommand::Neighbours(opts)) => {
                mercato::bench::neighbours::run(opts).await
            }
            Command::Bench(BenchCommand::Webhooks(opts)) => {
                mercato::bench::webhooks::run(opts).await
            }
            Command::Bench(BenchCommand::Checkout(opts)) => {
                mercato::bench::checkout::run(opts).await
            }
            Command::Bench(BenchCommand::Orders(opts)) => mercato::bench::orders::run(opts).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// One line on stderr: the error and each cause it does not already spell out.
fn fail(err: anyhow::Error) -> ExitCode {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    eprintln!("mercato: {}", line.replace('\n', " "));
    ExitCode::FAILURE
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let allow_internal = config.webhooks_allow_internal;
    let app = App::build(config).await?;
    let base = format!("http://{}", app.addr);
    println!("Mercato listening on {base}");
    match &app.database {
        DatabaseSource::Private { data_dir, port } => {
            println!("  database:     private PostgreSQL in {data_dir} (127.0.0.1:{port})")
        }
        DatabaseSource::External => println!("  database:     DATABASE_URL"),
    }
    let cells = app.cell_names();
    if cells.len() > 1 {
        println!("  cells:        {}", cells.join(", "));
    }
    if app.admin_token == mercato::config::ADMIN_TOKEN_OFF {
        println!("  admin token:  off (operators log in: POST /v1/sessions)");
    } else if app.admin_token_generated {
        println!("  admin token:  {}", app.admin_token);
    } else {
        // Never echo a secret the operator supplied.
        println!("  admin token:  as given (MERCATO_ADMIN_TOKEN / --admin-token)");
    }
    if let Some((email, password)) = &app.demo_login {
        println!("  demo login:   {email} / {password}  (POST /v1/sessions; docs/people.md)");
    }
    if let Some(key) = &app.demo_api_key {
        println!("  demo merchant API key: {key}");
        println!("  try: curl -H 'Authorization: Bearer {key}' {base}/v1/products");
    }
    if allow_internal {
        println!(
            "  WARNING:      --webhooks-allow-internal: any merchant's webhooks may reach \
             this machine and its network (loopback, private, metadata addresses)"
        );
    }
    println!("  metrics:      http://{}/metrics", app.metrics_addr);
    println!("  API docs:     {base}/openapi.json  (Ctrl-C stops)");
    app.serve(shutdown_signal()).await?;
    println!("Mercato stopped");
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args.database.database_url.ok_or_else(|| {
        anyhow::anyhow!("DATABASE_URL (or --database-url) must name the database to migrate")
    })?;
    mercato::shift::run(&url, &args.plan, args.phase).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
