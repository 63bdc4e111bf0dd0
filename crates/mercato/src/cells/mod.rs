//! Tenant cells: which database (cell) serves each merchant, and moving a
//! merchant to another cell while it keeps trading.
//!
//! Owns `tenant_directory` and `tenant_moves` (meaningful in the main
//! database, which is also the cell named `main`) and, in every cell,
//! `cell_absent` and `move_changes`. A request finds its merchant's cell in
//! the directory (cached here, forgotten at once on `NOTIFY tenant_directory`);
//! while a move cuts over (the directory marks the merchant `moving`), every
//! request of that merchant also holds a shared advisory lock on the main
//! database, which the mover takes exclusively for the write pause: the
//! merchant's requests wait (never fail) while the target catches up, then
//! go to the new cell. See `mover` for the move itself.

pub mod cli;
pub mod driver;
pub mod embedded;
pub mod mover;
mod records;

// What the rest of the crate asks of cells besides routing: a merchant's
// cell and moves as the directory records them, and starting one from `serve`.
pub use mover::{
    cell_of, running as running_move, start_in_serve as start_move_in_serve, Move, MoveError,
};
pub use records::{move_record, MoveRecord};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::db::{served_elsewhere, Db, MerchantId, TenantTx};

/// The name of the main database as a cell: every merchant's home until moved.
pub const MAIN: &str = crate::config::MAIN_CELL;

/// The advisory lock class of the cutover gate (two-key form: class, merchant).
pub(crate) const GATE_CLASS: i32 = 0x4d43; // "MC"

/// How long a placement is trusted without asking the directory again, should
/// a notification be missed while the listener reconnects.
const PLACEMENT_TTL: Duration = Duration::from_secs(30);

/// One database: a cell's name and its pools. The services bound to those
/// pools are wiring (`state::CellServices`), not part of the directory.
pub struct Cell {
    pub name: String,
    pub db: Db,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("merchant {merchant} lives in cell {cell:?}, which this process is not configured with (--cell)")]
    UnknownCell { merchant: MerchantId, cell: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A merchant's database: the one typed handle through which a merchant's
/// work reaches its rows. Resolved from the tenant directory (never chosen by
/// the caller): the cell serving the merchant and, while a move cuts over,
/// the gate this handle holds until it is dropped. `begin` opens a tenant
/// transaction there, following the merchant if the directory moved it since.
#[derive(Clone)]
pub struct MerchantDb {
    merchant: MerchantId,
    cell: Arc<Cell>,
    _gate: Option<Arc<Gate>>,
    cells: Cells,
    /// Who the transactions begun through this handle act for (audited), if anyone.
    acting: Option<Arc<crate::db::Acting>>,
}

impl MerchantDb {
    pub fn merchant(&self) -> MerchantId {
        self.merchant
    }

    /// The name of the cell that served the merchant when this was resolved.
    pub fn cell_name(&self) -> &str {
        &self.cell.name
    }

    /// A tenant transaction in the merchant's cell.
    pub async fn begin(&self) -> Result<TenantTx, sqlx::Error> {
        let mut tx = self.cells.begin(self).await?;
        if let Some(acting) = &self.acting {
            tx.act_for(acting).await?;
        }
        Ok(tx)
    }

    /// This handle, its transactions acting for `acting`: every change they
    /// make to an audited table is recorded with who, what and from where.
    pub fn acting_for(&self, acting: crate::db::Acting) -> MerchantDb {
        MerchantDb {
            acting: Some(Arc::new(acting)),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for MerchantDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerchantDb")
            .field("merchant", &self.merchant)
            .field("cell", &self.cell.name)
            .field("gated", &self._gate.is_some())
            .finish()
    }
}

#[derive(Clone)]
struct Placement {
    cell: Arc<Cell>,
    moving: bool,
    at: Instant,
}

/// The cells of this process and the directory's answers so far.
#[derive(Clone)]
pub struct Cells(Arc<Inner>);

struct Inner {
    /// The directory's pool (the main database, app role).
    directory: PgPool,
    /// Connections holding gates, apart from `directory`: a moving merchant's
    /// request holds one while its transactions take others, and from one
    /// pool a burst of them could take every connection and wait forever.
    gates: PgPool,
    cells: HashMap<String, Arc<Cell>>,
    placements: RwLock<HashMap<MerchantId, Placement>>,
}

impl Cells {
    /// `cells` must hold the main database under `MAIN`.
    pub fn new(directory: PgPool, cells: Vec<Cell>) -> Cells {
        let gates = PgPoolOptions::new()
            .max_connections(directory.options().get_max_connections())
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(
                directory
                    .connect_options()
                    .as_ref()
                    .clone()
                    .application_name("mercato-gate"),
            );
        Cells(Arc::new(Inner {
            gates,
            directory,
            cells: cells
                .into_iter()
                .map(|c| (c.name.clone(), Arc::new(c)))
                .collect(),
            placements: RwLock::new(HashMap::new()),
        }))
    }

    /// A directory over the schema owner's pools, for commands and
    /// benchmarks: `main` (also the directory) and the other cells by name.
    pub fn of_owners(main: PgPool, others: impl IntoIterator<Item = (String, PgPool)>) -> Cells {
        let cell = |name: String, pool: PgPool| Cell {
            name,
            db: Db {
                app: pool.clone(),
                worker: pool,
            },
        };
        let mut cells = vec![cell(MAIN.to_owned(), main.clone())];
        cells.extend(
            others
                .into_iter()
                .filter(|(name, _)| name != MAIN)
                .map(|(name, pool)| cell(name, pool)),
        );
        Cells::new(main, cells)
    }

    /// Every cell, the main one first, then by name.
    pub fn all(&self) -> Vec<Arc<Cell>> {
        let mut all: Vec<_> = self.0.cells.values().cloned().collect();
        all.sort_by_key(|c| (c.name != MAIN, c.name.clone()));
        all
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cell>> {
        self.0.cells.get(name)
    }

    /// The merchant's database for a request: waits at the gate while a move
    /// cuts over, and holds it until the handle (the request) is dropped.
    pub async fn merchant_db(&self, merchant: MerchantId) -> Result<MerchantDb, RouteError> {
        let placement = match self.cached(merchant) {
            Some(p) => p,
            None => self.place(merchant, &self.0.directory).await?,
        };
        if !placement.moving {
            return Ok(self.handle(merchant, placement.cell, None));
        }
        // A move is under way: hold the gate for the whole request, then ask
        // the directory again (the cutover may just have flipped it).
        let gate = Gate::enter(&self.0.gates, merchant).await?;
        let placement = self.place(merchant, &self.0.directory).await?;
        Ok(self.handle(merchant, placement.cell, Some(Arc::new(gate))))
    }

    /// The merchant's database for long work (a remediation scan or
    /// settlement, a command): like `merchant_db`, but it holds no gate, so a
    /// cutover never waits for the job to end; each transaction the job opens
    /// after the cutover fenced the source waits at the gate and follows the
    /// merchant (see `begin`).
    pub async fn merchant_db_for_job(
        &self,
        merchant: MerchantId,
    ) -> Result<MerchantDb, RouteError> {
        let db = self.merchant_db(merchant).await?;
        Ok(MerchantDb { _gate: None, ..db })
    }

    /// The database of the merchant `lookup` finds (a command names an
    /// incident or an order, not its merchant): the first cell where it
    /// finds a merchant that the directory says this cell serves. A copy a
    /// move left behind (`--keep-source`) does not count.
    pub async fn merchant_db_holding<F, Fut>(
        &self,
        lookup: F,
    ) -> Result<Option<MerchantDb>, RouteError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<Option<MerchantId>, sqlx::Error>>,
    {
        for cell in self.all() {
            let Some(merchant) = lookup(cell.db.app.clone()).await? else {
                continue;
            };
            let db = self.merchant_db_for_job(merchant).await?;
            if db.cell_name() == cell.name {
                return Ok(Some(db));
            }
        }
        Ok(None)
    }

    fn handle(&self, merchant: MerchantId, cell: Arc<Cell>, gate: Option<Arc<Gate>>) -> MerchantDb {
        MerchantDb {
            merchant,
            cell,
            _gate: gate,
            cells: self.clone(),
            acting: None,
        }
    }

    /// A tenant transaction in the handle's cell; if that cell no longer
    /// serves the merchant (this process's directory was behind), once more
    /// in the cell the directory names now.
    async fn begin(&self, route: &MerchantDb) -> Result<TenantTx, sqlx::Error> {
        let merchant = route.merchant;
        match TenantTx::begin(&route.cell.db.app, merchant).await {
            Err(err) if served_elsewhere(&err) => {
                self.forget(merchant);
                let as_db_error = |e: RouteError| match e {
                    RouteError::Db(e) => e,
                    other => sqlx::Error::Protocol(other.to_string()),
                };
                let mut now = self
                    .place(merchant, &self.0.directory)
                    .await
                    .map_err(as_db_error)?;
                if now.moving && route._gate.is_none() {
                    // A cutover is under way and this request passed no gate
                    // (its process learned of the cutover late): it waits
                    // for the gate to open, then goes where the directory
                    // says. One holding the gate never gets here: the mover
                    // fences the source only once every holder has left.
                    drop(Gate::enter(&self.0.gates, merchant).await?);
                    now = self
                        .place(merchant, &self.0.directory)
                        .await
                        .map_err(as_db_error)?;
                }
                TenantTx::begin(&now.cell.db.app, merchant).await
            }
            other => other,
        }
    }

    fn cached(&self, merchant: MerchantId) -> Option<Placement> {
        let placements = self.0.placements.read().unwrap_or_else(|p| p.into_inner());
        placements
            .get(&merchant)
            .filter(|p| p.at.elapsed() < PLACEMENT_TTL)
            .cloned()
    }

    async fn place(
        &self,
        merchant: MerchantId,
        directory: &PgPool,
    ) -> Result<Placement, RouteError> {
        let row: Option<(String, bool)> =
            sqlx::query_as("select cell, moving from mercato_directory_entry($1)")
                .bind(merchant.0)
                .fetch_optional(directory)
                .await?;
        let (name, moving) = row.unwrap_or_else(|| (MAIN.to_owned(), false));
        let cell = self
            .0
            .cells
            .get(&name)
            .cloned()
            .ok_or(RouteError::UnknownCell {
                merchant,
                cell: name,
            })?;
        let placement = Placement {
            cell,
            moving,
            at: Instant::now(),
        };
        let mut placements = self.0.placements.write().unwrap_or_else(|p| p.into_inner());
        if placements.len() >= 100_000 {
            placements.clear();
        }
        placements.insert(merchant, placement.clone());
        Ok(placement)
    }

    pub fn forget(&self, merchant: MerchantId) {
        let mut placements = self.0.placements.write().unwrap_or_else(|p| p.into_inner());
        placements.remove(&merchant);
    }

    fn forget_all(&self) {
        let mut placements = self.0.placements.write().unwrap_or_else(|p| p.into_inner());
        placements.clear();
    }

    /// Forgets a merchant's placement the moment the directory changes it
    /// (`NOTIFY tenant_directory, '<merchant id>'`); everything while the
    /// listening connection is lost.
    pub async fn follow_directory(self) {
        loop {
            let mut listener = match PgListener::connect_with(&self.0.directory).await {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for directory changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(err) = listener.listen("tenant_directory").await {
                tracing::warn!(error = %err, "cannot listen for directory changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Anything cached may have changed while nobody listened.
            self.forget_all();
            loop {
                match listener.try_recv().await {
                    Ok(Some(note)) => match uuid::Uuid::try_parse(note.payload()) {
                        Ok(id) => self.forget(MerchantId(id)),
                        Err(_) => self.forget_all(),
                    },
                    Ok(None) => self.forget_all(),
                    Err(err) => {
                        tracing::warn!(error = %err, "lost the directory listener");
                        self.forget_all();
                        break;
                    }
                }
            }
        }
    }
}

/// A shared hold on a merchant's cutover gate, released when the request
/// that took it ends.
struct Gate {
    conn: Option<PoolConnection<Postgres>>,
    merchant: MerchantId,
}

impl Gate {
    async fn enter(directory: &PgPool, merchant: MerchantId) -> Result<Gate, sqlx::Error> {
        let mut conn = directory.acquire().await?;
        sqlx::query("select pg_advisory_lock_shared($1, hashtext($2::text))")
            .bind(GATE_CLASS)
            .bind(merchant.0)
            .execute(&mut *conn)
            .await?;
        Ok(Gate {
            conn: Some(conn),
            merchant,
        })
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let merchant = self.merchant;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let unlocked =
                        sqlx::query("select pg_advisory_unlock_shared($1, hashtext($2::text))")
                            .bind(GATE_CLASS)
                            .bind(merchant.0)
                            .execute(&mut *conn)
                            .await;
                    if unlocked.is_err() {
                        // Closing the session releases its locks.
                        drop(conn.detach());
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
    }
}
