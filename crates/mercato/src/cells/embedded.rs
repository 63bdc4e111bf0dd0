//! Cells of the embedded mode (no `--database-url`): each a private cluster
//! of its own under `DATA_DIR/cells/NAME`, made by `mercato cells add NAME`
//! and started by `serve` with the main one (the `tenants` commands attach to
//! them, or start them when no `serve` runs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use localpg::LocalPg;

use crate::config::{cell_name, CellSpec};
use crate::db::{start_private_cluster, PrivateClusterError};

#[derive(Debug, clap::Args)]
pub struct CellsArgs {
    #[command(subcommand)]
    pub command: CellsCommand,
    /// Where `mercato serve` keeps its embedded cluster.
    #[arg(
        long,
        env = "MERCATO_DATA_DIR",
        default_value = crate::config::DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum CellsCommand {
    /// Make a cell: a private PostgreSQL cluster under DATA_DIR/cells/NAME,
    /// migrated; `mercato serve` (embedded) starts and serves it from its
    /// next start, and `mercato tenants move MERCHANT --to NAME` moves there.
    Add { name: String },
    /// The embedded cells of DATA_DIR.
    List,
}

/// A cell of the embedded mode, running for as long as this lives.
pub struct EmbeddedCell {
    pub spec: CellSpec,
    /// The cluster, when this process started it (else another process keeps it).
    _cluster: Option<LocalPg>,
}

fn cells_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cells")
}

/// Starts the cluster of cell `name`. When we are root its server runs as
/// `postgres`, which must pass DATA_DIR and DATA_DIR/cells to reach it: they
/// are handed to it as `serve` hands it DATA_DIR (the main cluster's
/// directory), since either may be one only root can enter (`mktemp -d`,
/// umask 077).
async fn start_cell(data_dir: &Path, name: &str) -> Result<LocalPg, PrivateClusterError> {
    let dir = cells_dir(data_dir).join(name);
    for on_the_way in [data_dir.to_path_buf(), cells_dir(data_dir)] {
        localpg::hand_over(&on_the_way).map_err(|source| PrivateClusterError::LocalPg {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    start_private_cluster(&dir).await
}

/// The names of DATA_DIR's cells, sorted.
pub fn names(data_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(cells_dir(data_dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("pgdata").is_dir() && cell_name(&name).is_ok() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Starts DATA_DIR's cells (`attach`: use the clusters a running `serve`
/// keeps, and start only the others).
pub async fn open(data_dir: &Path, attach: bool) -> Result<Vec<EmbeddedCell>, PrivateClusterError> {
    let local = |dir: &Path, source| PrivateClusterError::LocalPg {
        dir: dir.display().to_string(),
        source,
    };
    let mut cells = Vec::new();
    let names = names(data_dir).map_err(|e| {
        local(
            &cells_dir(data_dir),
            localpg::Error::DataDir {
                path: cells_dir(data_dir),
                source: e,
            },
        )
    })?;
    for name in names {
        let dir = cells_dir(data_dir).join(&name);
        let kept = if attach {
            localpg::attach(&dir, "mercato").map_err(|e| local(&dir, e))?
        } else {
            None
        };
        let (url, cluster) = match kept {
            Some(url) => (url, None),
            None => {
                let pg = start_cell(data_dir, &name).await?;
                (pg.url("mercato"), Some(pg))
            }
        };
        cells.push(EmbeddedCell {
            spec: CellSpec { name, url },
            _cluster: cluster,
        });
    }
    Ok(cells)
}

pub async fn run(args: CellsArgs) -> anyhow::Result<()> {
    match args.command {
        CellsCommand::Add { name } => {
            let name = cell_name(&name).map_err(anyhow::Error::msg)?.to_owned();
            let dir = cells_dir(&args.data_dir).join(&name);
            anyhow::ensure!(
                !dir.exists(),
                "cell {name:?} exists already ({})",
                dir.display()
            );
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let made = async {
                let pg = start_cell(&args.data_dir, &name).await?;
                let db = crate::db::prepare(&pg.url("mercato"), 2).await?;
                db.app.close().await;
                db.worker.close().await;
                Ok::<_, PrivateClusterError>(pg)
            }
            .await;
            if let Err(err) = made {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err.into());
            }
            println!(
                "cell {name} added ({}); restart `mercato serve` to serve it, then `mercato tenants move MERCHANT --to {name}`",
                dir.display()
            );
            Ok(())
        }
        CellsCommand::List => {
            for name in names(&args.data_dir)? {
                println!(
                    "{name}\t{}",
                    cells_dir(&args.data_dir).join(&name).display()
                );
            }
            Ok(())
        }
    }
}
