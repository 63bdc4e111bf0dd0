//! `mercato tenants move|resume|abort|rollback|cleanup|status`: which cell serves each
//! merchant, and moving one online. Every command takes the main database
//! (`--database-url`, or the embedded cluster of `--data-dir`) and the same
//! `--cell NAME=URL` list as `serve`.

use std::collections::BTreeMap;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::mover::{self, Move, Phase, Pools, Progress};
use super::MAIN;
use crate::config::CommandDatabaseArgs;

#[derive(Debug, clap::Args)]
pub struct Tenants {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub database: CommandDatabaseArgs,
    /// The share of the time the copy and the cleanup work (they rest the
    /// remainder, so the cells' other merchants keep their latency); 1: flat out.
    #[arg(long, default_value_t = mover::DEFAULT_DUTY_CYCLE, value_parser = duty_cycle, global = true)]
    pub duty_cycle: f64,
}

fn duty_cycle(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(d) if (0.05..=1.0).contains(&d) => Ok(d),
        _ => Err("must be a number from 0.05 to 1".into()),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Move a merchant (id or slug) to another cell while it keeps trading.
    Move(MoveArgs),
    /// Carry on a move that was interrupted (crash, Ctrl-C).
    Resume(ResumeArgs),
    /// Abandon a move before its cutover: the source stays the only copy.
    Abort(MerchantArg),
    /// Undo the merchant's last move (made with --keep-source, not cleaned
    /// up), with every write made since its cutover, while it trades.
    Rollback(ResumeArgs),
    /// Delete what a move made with --keep-source left in its source (after
    /// this, no rollback).
    Cleanup(MerchantArg),
    /// Each merchant's cell and every move in progress.
    Status,
}

#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    pub merchant: String,
    /// The cell to move to (`main` or a --cell name).
    #[arg(long)]
    pub to: String,
    /// Keep the source's copy, and the reverse stream that lets
    /// `mercato tenants rollback` undo the move, until `mercato tenants cleanup`.
    #[arg(long)]
    pub keep_source: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    pub merchant: String,
    /// As for `move`: stop before deleting the source's copy.
    #[arg(long)]
    pub keep_source: bool,
}

#[derive(Debug, clap::Args)]
pub struct MerchantArg {
    pub merchant: String,
}

/// Every cell a command works on, as the schema owner: `main` (the
/// command's database), the data directory's embedded cells and `--cell`s.
/// Moves do not run on these pools but on the mover role's (`mover_pools`).
/// The clusters this process started live as long as it.
pub struct CommandCells {
    pub main: crate::db::CommandDatabase,
    /// By name, `main` included.
    pub owners: BTreeMap<String, sqlx::PgPool>,
    _embedded: Vec<super::embedded::EmbeddedCell>,
}

pub async fn command_cells(
    database: &CommandDatabaseArgs,
    max_connections: u32,
) -> anyhow::Result<CommandCells> {
    let specs = &database.cells;
    let main = crate::db::command_database(
        database.database.database_url.as_deref(),
        &database.data_dir,
        max_connections,
    )
    .await?;
    let mut owners = BTreeMap::new();
    owners.insert(MAIN.to_owned(), main.owner.clone());
    // Embedded, the data directory's cells (those a running `serve` keeps, or started now).
    let embedded = match &database.database.database_url {
        None => super::embedded::open(&database.data_dir, true).await?,
        Some(_) => Vec::new(),
    };
    for spec in embedded.iter().map(|c| &c.spec).chain(specs) {
        let opts = spec
            .url
            .parse()
            .map_err(crate::db::DbError::Url)
            .with_context(|| format!("cell {}", spec.name))?;
        let pool = crate::db::connect(opts, max_connections)
            .await
            .with_context(|| format!("cell {}", spec.name))?;
        owners.insert(spec.name.clone(), pool);
    }
    Ok(CommandCells {
        main,
        owners,
        _embedded: embedded,
    })
}

pub async fn run(args: Tenants) -> anyhow::Result<()> {
    let cells = command_cells(&args.database, 4).await?;
    command(
        args.command,
        &Pools {
            duty_cycle: args.duty_cycle,
            ..mover_pools(&cells)
        },
    )
    .await
}

/// The mover role's pools on every cell of the command (the owners' are
/// for migrating, not for moving).
fn mover_pools(cells: &CommandCells) -> Pools {
    let options = |pool: &sqlx::PgPool| pool.connect_options().as_ref().clone();
    Pools::of_owners(
        &options(&cells.main.owner),
        cells
            .owners
            .iter()
            .map(|(name, owner)| (name.clone(), options(owner))),
        4,
    )
}

async fn command(command: Command, pools: &Pools) -> anyhow::Result<()> {
    let bars = Bars::default();
    match command {
        Command::Move(a) => {
            let merchant = mover::find_merchant(&pools.main, &a.merchant).await?;
            let mv = mover::start(pools, merchant, &a.to).await?;
            record(pools, &mv, "merchant.move", "tenants move").await?;
            eprintln!("moving {} from {} to {}", merchant, mv.source, mv.target);
            finish(pools, mv, a.keep_source, &bars).await
        }
        Command::Resume(a) => {
            let merchant = mover::find_merchant(&pools.main, &a.merchant).await?;
            let Some(mv) = mover::running(&pools.main, merchant).await? else {
                // Killed just after its cutover: only the tidying is left.
                let done = mover::settle_cut_over(pools, merchant)
                    .await?
                    .ok_or(mover::MoveError::NotMoving(merchant))?;
                println!(
                    "the move of {merchant} to {} had cut over already; nothing else to resume (mercato tenants cleanup deletes the copy left in {})",
                    done.target, done.source
                );
                return Ok(());
            };
            eprintln!(
                "resuming the move of {} to {} at {}",
                merchant, mv.target, mv.phase
            );
            finish(pools, mv, a.keep_source, &bars).await
        }
        Command::Abort(a) => {
            let merchant = mover::find_merchant(&pools.main, &a.merchant).await?;
            mover::abort(pools, merchant, &bars).await?;
            bars.done();
            println!("aborted: {merchant} stays where it was");
            Ok(())
        }
        Command::Rollback(a) => {
            let merchant = mover::find_merchant(&pools.main, &a.merchant).await?;
            let mv = mover::rollback(pools, merchant).await?;
            record(pools, &mv, "merchant.move_rollback", "tenants rollback").await?;
            eprintln!(
                "rolling {} back from {} to {}",
                merchant, mv.source, mv.target
            );
            finish(pools, mv, a.keep_source, &bars).await
        }
        Command::Cleanup(a) => {
            let merchant = mover::find_merchant(&pools.main, &a.merchant).await?;
            let n = mover::cleanup_source(pools, merchant, &bars).await?;
            bars.done();
            println!("deleted {n} rows of {merchant} from its old cell");
            Ok(())
        }
        Command::Status => status(pools).await,
    }
}

/// The move started, in the merchant's audit trail (by the shell's user).
async fn record(
    pools: &Pools,
    mv: &Move,
    action: &'static str,
    command: &str,
) -> anyhow::Result<()> {
    crate::db::TenantTx::record_audit_alone(
        &pools.main,
        mv.merchant,
        &crate::db::Acting::command(action, command),
        ("tenant_moves", &mv.id.to_string()),
        &serde_json::json!({"from": mv.source, "to": mv.target}),
    )
    .await?;
    Ok(())
}

async fn finish(pools: &Pools, mv: Move, keep_source: bool, bars: &Bars) -> anyhow::Result<()> {
    let mv = mover::drive(pools, mv, keep_source, bars).await?;
    bars.done();
    let pause: Option<f64> = sqlx::query_scalar("select pause_ms from tenant_moves where id = $1")
        .bind(mv.id)
        .fetch_one(&pools.main)
        .await?;
    println!(
        "{} now lives in {} ({}; write pause {:.0} ms)",
        mv.merchant,
        mv.target,
        mv.phase,
        pause.unwrap_or(0.0)
    );
    Ok(())
}

/// A move as `status` lists it: merchant, source, target, phase, rows
/// copied, changes applied, rows cleaned, write pause.
type MoveLine = (String, String, String, String, i64, i64, i64, Option<f64>);

async fn status(pools: &Pools) -> anyhow::Result<()> {
    // MOVING names a running move's phase (the directory's `moving` flag
    // marks only its cutover).
    let placed: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select m.slug, coalesce(d.cell, 'main'),
                (select t.target || ', ' || t.phase from tenant_moves t
                 where t.merchant_id = m.id and t.phase in ('copying', 'catching_up', 'cutting_over'))
         from merchants m left join tenant_directory d on d.merchant_id = m.id
         order by m.slug",
    )
    .fetch_all(&pools.main)
    .await?;
    println!("{:<32} {:<12} MOVING TO", "MERCHANT", "CELL");
    for (slug, cell, moving) in placed {
        println!("{slug:<32} {cell:<12} {}", moving.unwrap_or_default());
    }
    let moves: Vec<MoveLine> = sqlx::query_as(
        "select m.slug, t.source, t.target, t.phase, t.rows_copied, t.changes_applied, t.rows_cleaned, t.pause_ms
         from tenant_moves t join merchants m on m.id = t.merchant_id
         order by t.started_at desc limit 20",
    )
    .fetch_all(&pools.main)
    .await?;
    if !moves.is_empty() {
        println!("\nMOVES (newest first)");
        for (slug, source, target, phase, copied, applied, cleaned, pause) in moves {
            println!(
                "{slug:<32} {source} → {target}: {phase}; {copied} rows copied, {applied} changes applied, {cleaned} cleaned{}",
                pause.map(|p| format!(", write pause {p:.0} ms")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Progress bars on stderr: one for the copy, one for the cleanup.
#[derive(Default)]
struct Bars {
    copy: std::sync::Mutex<Option<ProgressBar>>,
    clean: std::sync::Mutex<Option<ProgressBar>>,
}

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = match len {
        Some(_) => format!("{what} [{{bar:40}}] {{pos}}/{{len}} rows ({{per_sec}}, eta {{eta}})"),
        None => format!("{what} {{pos}} rows ({{per_sec}})"),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl Bars {
    fn done(&self) {
        for slot in [&self.copy, &self.clean] {
            if let Some(b) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                b.finish();
            }
        }
    }
}

impl Progress for Bars {
    fn phase(&self, phase: Phase) {
        if phase != Phase::Copying {
            if let Some(b) = self.copy.lock().unwrap_or_else(|p| p.into_inner()).take() {
                b.finish();
            }
        }
        eprintln!("phase: {phase}");
    }
    fn copy_total(&self, rows: u64) {
        *self.copy.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar(Some(rows), "copy"));
    }
    fn copied(&self, rows: u64) {
        if let Some(b) = &*self.copy.lock().unwrap_or_else(|p| p.into_inner()) {
            b.inc(rows);
        }
    }
    fn cleaned(&self, rows: u64) {
        let mut slot = self.clean.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| bar(None, "cleanup")).inc(rows);
    }
}
