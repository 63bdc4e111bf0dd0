//! The `mercato` command line. Parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mercato::app::DatabaseSource;
use mercato::{App, Config};

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
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MERCATO_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the private PostgreSQL cluster (used when DATABASE_URL is unset).
    #[arg(long, env = "MERCATO_DATA_DIR", default_value = ".mercato")]
    data_dir: PathBuf,
    /// PostgreSQL URL of the schema owner; the service itself connects as role `mercato_app`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Platform admin token; generated and printed when unset.
    #[arg(long, env = "MERCATO_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Size of the database connection pool.
    #[arg(long, env = "MERCATO_DB_POOL", default_value_t = 32)]
    db_pool: u32,
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
            Command::Serve(args) => serve(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    eprintln!("mercato: {err:#}");
    ExitCode::FAILURE
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        admin_token: args.admin_token,
        max_connections: args.db_pool,
    };
    let app = App::build(config).await?;
    let base = format!("http://{}", app.addr);
    println!("Mercato listening on {base}");
    match &app.database {
        DatabaseSource::Private { data_dir, port } => {
            println!("  database:     private PostgreSQL in {data_dir} (127.0.0.1:{port})")
        }
        DatabaseSource::External => println!("  database:     DATABASE_URL"),
    }
    println!("  admin token:  {}", app.admin_token);
    if let Some(key) = &app.demo_api_key {
        println!("  demo merchant API key: {key}");
        println!("  try: curl -H 'Authorization: Bearer {key}' {base}/v1/products");
    }
    println!("  API docs:     {base}/openapi.json  (Ctrl-C stops)");
    app.serve(shutdown_signal()).await?;
    println!("Mercato stopped");
    Ok(())
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
