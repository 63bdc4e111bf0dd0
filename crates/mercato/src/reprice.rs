//! `mercato reprice --order <id> [--version v] [--revision n]`: prices a stored
//! order again from its recorded inputs and prints both breakdowns as JSON.
//! It takes the databases as every command does (`--database-url` or the
//! embedded cluster, and `--cell`) and reads the order in its merchant's cell.

use uuid::Uuid;

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
    /// The main database and the cells, as `serve` has them: the order is
    /// read in the cell that serves its merchant.
    #[command(flatten)]
    pub database: crate::config::CommandDatabaseArgs,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let version = opts
        .version
        .as_deref()
        .map(str::parse::<::pricing::CalculatorVersion>)
        .transpose()?;
    let opened = crate::cells::cli::command_cells(&opts.database, 2).await?;
    let cells = crate::cells::Cells::of_owners(opened.main.owner.clone(), opened.owners.clone());
    let order = opts.order;
    let found = cells
        .merchant_db_holding(|pool| async move {
            crate::checkout::merchant_of_order(&pool, order).await
        })
        .await?;
    let db = found.ok_or_else(|| anyhow::anyhow!("order {} not found", opts.order))?;
    let mut tx = db.begin().await?;
    let recorded = crate::checkout::recorded_pricing(&mut tx, opts.order).await?;
    let repriced =
        crate::pricing::reprice_order(&mut tx, opts.order, recorded, version, opts.revision)
            .await?;
    tx.commit().await?;
    println!("{}", serde_json::to_string_pretty(&repriced)?);
    Ok(())
}
