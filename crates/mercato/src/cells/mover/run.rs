//! The databases a move works with, and one move at work on them: the run
//! context every phase is a method of (svix's workers carry theirs the same
//! way), instead of each function taking the pools, both cells, the tables
//! and the merchant one by one.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::tables::{tenant_tables, Table};
use super::{Move, MoveError, Phase, MAIN};
use crate::db::{service_role_options, MerchantId, TenantTx, MOVER_ROLE};

/// The databases a move works with, as the mover role (`mercato_mover`,
/// see `db`): never the schema's owner, which on the embedded cluster is a
/// superuser. The role reaches a merchant's rows only in a transaction that
/// names the merchant (row-level security), and does what only the owner may
/// (the capture triggers' DDL) through the owner's functions.
pub struct Pools {
    /// The main database: directory and move records.
    pub main: PgPool,
    /// Every cell by name, `main` included.
    pub cells: BTreeMap<String, PgPool>,
    /// The share of the time the copy and the cleanup work: after a batch
    /// that took t, they rest t × (1 / duty_cycle − 1), so the cells' other
    /// merchants keep their latency (1: no rest).
    pub duty_cycle: f64,
}

/// The copy and the cleanup work half the time by default. A lower duty
/// cycle did not buy the neighbour a steady latency on the development
/// machine (`mercato bench move`, 200,000 orders: its p99 rose 2.7× and
/// 2.9× at 0.5, 1.5× and 2.8× at 0.2) while it made the copy 3× slower.
pub const DEFAULT_DUTY_CYCLE: f64 = 0.5;

impl Pools {
    /// The mover role's pools on the main database and the `others` cells,
    /// given their owners' connection options (the role's secret is derived
    /// from each owner's password, see `db::service_role_options`). Lazy:
    /// nothing connects until a move needs it.
    pub fn of_owners(
        main: &PgConnectOptions,
        others: impl IntoIterator<Item = (String, PgConnectOptions)>,
        max_connections: u32,
    ) -> Pools {
        let pool = |owner: &PgConnectOptions| {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .connect_lazy_with(
                    service_role_options(owner, MOVER_ROLE).application_name("mercato-mover"),
                )
        };
        let main = pool(main);
        let mut cells = BTreeMap::from([(MAIN.to_owned(), main.clone())]);
        for (name, owner) in others {
            if name != MAIN {
                cells.insert(name, pool(&owner));
            }
        }
        Pools::new(main, cells)
    }

    /// Pools as given: the main database's, and every cell's by name
    /// (`main` included), each the mover role's (see [`Pools::of_owners`]).
    pub fn new(main: PgPool, cells: BTreeMap<String, PgPool>) -> Pools {
        Pools {
            main,
            cells,
            duty_cycle: DEFAULT_DUTY_CYCLE,
        }
    }

    /// The rest after a batch of the copy or the cleanup that took `took`.
    pub(super) async fn rest(&self, took: Duration) {
        let duty = self.duty_cycle.clamp(0.05, 1.0);
        if duty < 1.0 {
            tokio::time::sleep(took.mul_f64(1.0 / duty - 1.0)).await;
        }
    }

    pub(super) fn cell(&self, name: &str) -> Result<&PgPool, MoveError> {
        self.cells.get(name).ok_or_else(|| {
            MoveError::UnknownCell(
                name.to_owned(),
                self.cells.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }
}

/// What the mover reports as it goes (the CLI draws bars from it).
pub trait Progress: Send + Sync {
    fn phase(&self, _phase: Phase) {}
    fn copy_total(&self, _rows: u64) {}
    fn copied(&self, _rows: u64) {}
    fn applied(&self, _changes: u64) {}
    fn cleaned(&self, _rows: u64) {}
}

pub struct Quiet;
impl Progress for Quiet {}

/// One of a move's two cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Source,
    Target,
}

/// A move at work: its record, its two cells, the tenant tables it
/// carries (parents first) and where it reports progress.
pub(super) struct MoveRun<'a> {
    pub pools: &'a Pools,
    pub mv: Move,
    pub source: PgPool,
    pub target: PgPool,
    pub tables: Vec<Table>,
    pub progress: &'a dyn Progress,
}

impl<'a> MoveRun<'a> {
    /// The run of `mv`, with the tenant tables as the cell `catalogue` has
    /// them (the source's, but for deleting the target's copy).
    pub async fn open(
        pools: &'a Pools,
        mv: Move,
        progress: &'a dyn Progress,
        catalogue: Side,
    ) -> Result<MoveRun<'a>, MoveError> {
        let source = pools.cell(&mv.source)?.clone();
        let target = pools.cell(&mv.target)?.clone();
        let tables = tenant_tables(match catalogue {
            Side::Source => &source,
            Side::Target => &target,
        })
        .await?;
        Ok(MoveRun {
            pools,
            mv,
            source,
            target,
            tables,
            progress,
        })
    }

    pub fn merchant(&self) -> MerchantId {
        self.mv.merchant
    }

    pub fn main(&self) -> &PgPool {
        &self.pools.main
    }

    /// A transaction of the mover's own on the target (see [`mover_tx`]).
    pub async fn target_tx(&self) -> Result<TenantTx, sqlx::Error> {
        mover_tx(&self.target, self.merchant()).await
    }

    /// A short transaction on a cell for reading the merchant's rows.
    pub async fn read_tx(&self, side: Side) -> Result<TenantTx, sqlx::Error> {
        let pool = match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        };
        TenantTx::begin_in_directory(pool, self.merchant()).await
    }
}

/// A transaction of the mover's own on a cell: its writes are not captured
/// (the reverse stream must not send the copy or a replay back).
pub(super) async fn mover_tx(pool: &PgPool, m: MerchantId) -> Result<TenantTx, sqlx::Error> {
    let mut tx = TenantTx::begin_in_directory(pool, m).await?;
    sqlx::query("select set_config('mercato.mover', 'on', true)")
        .execute(tx.conn())
        .await?;
    Ok(tx)
}
