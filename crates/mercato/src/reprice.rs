//! `mercato reprice --order <id> [--version v] [--revision n]`: prices a stored
//! order again from its recorded inputs and prints both breakdowns as JSON.

use anyhow::Context;
use uuid::Uuid;

use crate::db::TenantTx;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// The order to re-price.
    #[arg(long)]
    pub order: Uuid,
    /// Calculator version to use (default: the one the order recorded).
    #[arg(long)]
    pub version: Option<String>,
    /// Rule-set revision to use (default: the one the order recorded).
    #[arg(long)]
    pub revision: Option<i64>,
    /// PostgreSQL URL of the schema owner (it reads across merchants).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let url = opts.database_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!("DATABASE_URL (or --database-url) must name the database")
    })?;
    let version = opts
        .version
        .as_deref()
        .map(str::parse::<::pricing::CalculatorVersion>)
        .transpose()?;
    let pool = crate::db::connect(
        url.parse()
            .context("DATABASE_URL is not a PostgreSQL URL")?,
        2,
    )
    .await?;
    let merchant = crate::checkout::merchant_of_order(&pool, opts.order)
        .await?
        .ok_or_else(|| anyhow::anyhow!("order {} not found", opts.order))?;
    let mut tx = TenantTx::begin(&pool, merchant).await?;
    let recorded = crate::checkout::recorded_pricing(&mut tx, opts.order).await?;
    let repriced =
        crate::pricing::reprice_order(&mut tx, opts.order, recorded, version, opts.revision)
            .await?;
    tx.commit().await?;
    println!("{}", serde_json::to_string_pretty(&repriced)?);
    Ok(())
}
