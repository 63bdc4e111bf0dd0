//! Moving a merchant to another cell while it trades.
//!
//! Change capture by triggers, not logical replication: it needs nothing of
//! the server (no `wal_level = logical`, no replication slots holding WAL, no
//! replica-identity trap for other merchants) and works between any two
//! PostgreSQL databases the mover can reach; other merchants' writes pay only
//! a trigger's `WHEN (new.merchant_id = …)` test. The steps, each resumable:
//!
//! 1. **copying**: the move is recorded, the target gets the merchant as
//!    `arriving` (fenced, invisible to its workers), the source's tenant
//!    tables get capture triggers for the merchant (each written key), then
//!    every table's rows are copied in keyset batches, parents first (see
//!    `copy`: short transactions, no snapshot held);
//! 2. **catching_up**: the captured keys are replayed in order: each key's
//!    row as the source holds it now is upserted, or deleted if it is gone,
//!    until few are left;
//! 3. **cutting_over**: the rows are verified in chunks and what differs is
//!    narrowed down, then the directory marks the merchant `moving` (from
//!    here its requests pass the gate, at two round trips each: not for the
//!    whole move), the gate is closed (the mover takes the advisory lock
//!    every request of the merchant holds shared: in-flight requests finish,
//!    new ones wait), the source marks the merchant `departed` (its workers
//!    stop seeing it), the last changes are applied, the keys that changed
//!    or differed are compared, the directory flips and the gate opens;
//! 4. **moved** → **cleaned**: the source's copy is deleted in batches.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{GATE_CLASS, MAIN};
use crate::db::MerchantId;
use crate::db::{text_enum, TenantTx};

text_enum! {
    /// Where a move is.
    pub enum Phase {
        Copying = "copying",
        CatchingUp = "catching_up",
        CuttingOver = "cutting_over",
        Moved = "moved",
        Cleaned = "cleaned",
        Aborted = "aborted",
        /// Undone by a rollback (the move back names this one).
        RolledBack = "rolled_back",
    }
}

/// Tables that stay in the main database whatever cell serves the merchant
/// (the directory: who the merchant is and its keys), and the cells' own.
const NOT_MOVED: &[&str] = &[
    "merchants",
    "api_keys",
    "tenant_directory",
    "tenant_moves",
    "cell_absent",
    "move_changes",
    "_sqlx_migrations",
];

/// Rows per copy, apply and cleanup batch.
const BATCH: i64 = 1000;
/// Keys per range of the verification before the pause.
const VERIFY_CHUNK: i64 = 5000;
/// Changes left below which catching up stops and the cutover starts.
const CUTOVER_BELOW: usize = 200;
/// How long after marking a merchant `moving` (at the cutover) every
/// instance is assumed to have seen it (NOTIFY arrives in milliseconds; this is for slow listeners).
const PROPAGATION: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no merchant {0}")]
    NoMerchant(String),
    #[error("no cell named {0:?} (cells: {1})")]
    UnknownCell(String, String),
    #[error("merchant {merchant} already lives in cell {cell:?}")]
    AlreadyThere { merchant: MerchantId, cell: String },
    #[error("merchant {0} has a move running (mercato tenants resume, or abort)")]
    AlreadyMoving(MerchantId),
    #[error("merchant {0} has no move running")]
    NotMoving(MerchantId),
    #[error("cell {cell:?} is at schema version {found}, this binary's is {wanted}: start `mercato serve` with it (it migrates every cell) first")]
    SchemaBehind {
        cell: String,
        found: i64,
        wanted: i64,
    },
    #[error("the move has cut over already: it cannot be aborted (mercato tenants rollback undoes a move made with --keep-source)")]
    PastCutover,
    #[error("merchant {0} has no move to roll back: its last move was not made with --keep-source, or was cleaned up or rolled back already")]
    NothingToRollBack(MerchantId),
    #[error("table {table}: {source_rows} rows (checksum {source_sum}) in the source, {target_rows} ({target_sum}) in the target")]
    Mismatch {
        table: String,
        source_rows: i64,
        target_rows: i64,
        source_sum: String,
        target_sum: String,
    },
    #[error("{0}")]
    Stalled(String),
    #[error("another mover is driving this move now (a `tenants move`/`resume`, or `serve` for a move started from the admin API); wait for it, or stop it first")]
    DrivenElsewhere,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The databases a move works with, as their schema owner.
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
    pub fn new(main: PgPool, cells: BTreeMap<String, PgPool>) -> Pools {
        Pools {
            main,
            cells,
            duty_cycle: DEFAULT_DUTY_CYCLE,
        }
    }

    /// The rest after a batch of the copy or the cleanup that took `took`.
    async fn rest(&self, took: Duration) {
        let duty = self.duty_cycle.clamp(0.05, 1.0);
        if duty < 1.0 {
            tokio::time::sleep(took.mul_f64(1.0 / duty - 1.0)).await;
        }
    }

    fn cell(&self, name: &str) -> Result<&PgPool, MoveError> {
        self.cells.get(name).ok_or_else(|| {
            MoveError::UnknownCell(
                name.to_owned(),
                self.cells.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }
}

/// A tenant table as the move sees it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub key: Vec<String>,
    /// The SQL types of `key`, in order.
    pub key_types: Vec<String>,
    /// Columns an INSERT may name (generated ones are left out).
    pub columns: Vec<String>,
    /// Its foreign keys to other tenant tables: (parent, columns here,
    /// columns there).
    pub parents: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Table {
    /// `(key) <op> (the key of JSON parameter $n)`, with the parameter cast
    /// to the key's types so an index range scan can use it.
    fn key_vs(&self, op: &str, param: usize) -> String {
        self.key_against(op, &format!("${param}::jsonb"))
    }

    /// `key_vs` with the key inlined as a literal: for `COPY`, which takes
    /// no parameters (the cast of a constant is folded, so the range scan
    /// is the same).
    fn key_vs_literal(&self, op: &str, key: &Value) -> String {
        self.key_against(op, &format!("{}::jsonb", literal(&key.to_string())))
    }

    fn key_against(&self, op: &str, json: &str) -> String {
        let t = ident(&self.name);
        let given = self
            .key
            .iter()
            .zip(&self.key_types)
            .map(|(k, ty)| format!("({json} ->> {})::{ty}", literal(k)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("({}) {op} ({given})", list(&self.key, &format!("{t}.")))
    }

    /// `t join jsonb_populate_recordset(null::t, $1) k on (key) = (k.key)`:
    /// the table's rows of the keys given as a JSON array in `$1`.
    fn rows_of_keys(&self) -> String {
        let t = ident(&self.name);
        format!(
            "{t} join jsonb_populate_recordset(null::{t}, $1) k on ({}) = ({})",
            list(&self.key, &format!("{t}.")),
            list(&self.key, "k."),
        )
    }

    /// A hash of a whole row, the same in every cell: over the insertable
    /// columns but events' `xid` (a commit position local to a cell: the
    /// mover writes 0 there, see migration 0019). The row's text form, not
    /// `to_jsonb`: the same content at a third of the cost (500,000
    /// orders-like rows on PostgreSQL 15: 0.40 s against 1.08 s).
    fn row_hash(&self) -> String {
        let t = ident(&self.name);
        let cols: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.as_str() != "xid")
            .cloned()
            .collect();
        format!(
            "hashtextextended(row({})::text, 0)",
            list(&cols, &format!("{t}."))
        )
    }
}

/// A SQL string literal (standard_conforming_strings: only quotes double).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The move record.
#[derive(Debug, Clone)]
pub struct Move {
    pub id: Uuid,
    pub merchant: MerchantId,
    pub source: String,
    pub target: String,
    pub phase: Phase,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// For a rollback: the move it undoes.
    pub rollback_of: Option<Uuid>,
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

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn list(cols: &[String], prefix: &str) -> String {
    cols.iter()
        .map(|c| format!("{prefix}{}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table's name, key columns, key types and insertable columns.
type CatalogRow = (String, Vec<String>, Vec<String>, Vec<String>);

/// The tenant tables of a database, parents before children.
pub async fn tenant_tables(pool: &PgPool) -> Result<Vec<Table>, sqlx::Error> {
    let rows: Vec<CatalogRow> = sqlx::query_as(
        "select c.relname::text,
                array(select a.attname::text from pg_index i
                      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
                      where i.indrelid = c.oid and i.indisprimary
                      order by array_position(i.indkey::int2[], a.attnum)),
                array(select format_type(a.atttypid, a.atttypmod) from pg_index i
                      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
                      where i.indrelid = c.oid and i.indisprimary
                      order by array_position(i.indkey::int2[], a.attnum)),
                array(select a.attname::text from pg_attribute a
                      where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                        and a.attgenerated = ''
                      order by a.attnum)
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p')
           and exists (select 1 from pg_attribute a where a.attrelid = c.oid
                       and a.attname = 'merchant_id' and not a.attisdropped)
           and c.relname <> all ($1)
         order by c.relname",
    )
    .bind(NOT_MOVED)
    .fetch_all(pool)
    .await?;
    let foreign_keys: Vec<(String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "select c.relname::text, p.relname::text,
                array(select a.attname::text from unnest(k.conkey) with ordinality u (n, i)
                      join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n order by u.i),
                array(select a.attname::text from unnest(k.confkey) with ordinality u (n, i)
                      join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.n order by u.i)
         from pg_constraint k
         join pg_class c on c.oid = k.conrelid join pg_class p on p.oid = k.confrelid
         where k.contype = 'f' and c.relnamespace = 'public'::regnamespace and c.oid <> p.oid",
    )
    .fetch_all(pool)
    .await?;
    let edges: Vec<(String, String)> = foreign_keys
        .iter()
        .map(|(child, parent, _, _)| (child.clone(), parent.clone()))
        .collect();
    let moved: Vec<&str> = rows.iter().map(|(name, ..)| name.as_str()).collect();
    let mut tables: Vec<Table> = rows
        .iter()
        .filter(|(_, key, _, _)| !key.is_empty())
        .map(|(name, key, key_types, columns)| Table {
            name: name.clone(),
            key: key.clone(),
            key_types: key_types.clone(),
            columns: columns.clone(),
            parents: foreign_keys
                .iter()
                .filter(|(child, parent, _, _)| child == name && moved.contains(&parent.as_str()))
                .map(|(_, parent, here, there)| (parent.clone(), here.clone(), there.clone()))
                .collect(),
        })
        .collect();
    // Parents first (Kahn's order, by name among equals).
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut ordered = Vec::with_capacity(tables.len());
    let mut placed: Vec<String> = Vec::new();
    while !tables.is_empty() {
        let ready = tables.iter().position(|t| {
            edges.iter().all(|(child, parent)| {
                child != &t.name || !names.contains(parent) || placed.contains(parent)
            })
        });
        // A cycle (none in Mercato's schema) would keep its tables' order.
        let at = ready.unwrap_or(0);
        let table = tables.remove(at);
        placed.push(table.name.clone());
        ordered.push(table);
    }
    Ok(ordered)
}

/// The newest migration this binary has.
pub fn schema_version() -> i64 {
    crate::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

async fn check_schema(name: &str, pool: &PgPool) -> Result<(), MoveError> {
    let found: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await
            .unwrap_or(None);
    let found = found.unwrap_or(0);
    let wanted = schema_version();
    if found < wanted {
        return Err(MoveError::SchemaBehind {
            cell: name.to_owned(),
            found,
            wanted,
        });
    }
    Ok(())
}

/// Resolves a merchant given by id or slug.
pub async fn find_merchant(main: &PgPool, given: &str) -> Result<MerchantId, MoveError> {
    let id: Option<Uuid> =
        sqlx::query_scalar("select id from merchants where id::text = $1 or slug = $1 limit 1")
            .bind(given)
            .fetch_optional(main)
            .await?;
    id.map(MerchantId)
        .ok_or_else(|| MoveError::NoMerchant(given.to_owned()))
}

/// The cell that serves the merchant now.
pub async fn cell_of(main: &PgPool, merchant: MerchantId) -> Result<String, sqlx::Error> {
    let cell: Option<String> =
        sqlx::query_scalar("select cell from tenant_directory where merchant_id = $1")
            .bind(merchant.0)
            .fetch_optional(main)
            .await?;
    Ok(cell.unwrap_or_else(|| MAIN.to_owned()))
}

/// A move record as read: id, source, target, phase, started, rollback of.
type MoveRow = (
    Uuid,
    String,
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<Uuid>,
);

/// The merchant's move in progress, if any.
pub async fn running(main: &PgPool, merchant: MerchantId) -> Result<Option<Move>, sqlx::Error> {
    find_move(
        main,
        merchant,
        "phase in ('copying', 'catching_up', 'cutting_over')",
    )
    .await
}

/// A move by its id, with whether it keeps its source.
pub async fn load(main: &PgPool, id: Uuid) -> Result<Option<(Move, bool)>, sqlx::Error> {
    let found: Option<(Uuid, bool)> =
        sqlx::query_as("select merchant_id, keep_source from tenant_moves where id = $1")
            .bind(id)
            .fetch_optional(main)
            .await?;
    let Some((merchant, keep_source)) = found else {
        return Ok(None);
    };
    let mv = find_move(main, MerchantId(merchant), &format!("id = '{id}'")).await?;
    Ok(mv.map(|mv| (mv, keep_source)))
}

/// The merchant's newest move whose record matches `condition`.
async fn find_move(
    main: &PgPool,
    merchant: MerchantId,
    condition: &str,
) -> Result<Option<Move>, sqlx::Error> {
    let row: Option<MoveRow> = sqlx::query_as(&format!(
        "select id, source, target, phase, started_at, rollback_of from tenant_moves
         where merchant_id = $1 and {condition} order by started_at desc limit 1"
    ))
    .bind(merchant.0)
    .fetch_optional(main)
    .await?;
    row.map(|(id, source, target, phase, started_at, rollback_of)| {
        Ok(Move {
            id,
            merchant,
            source,
            target,
            phase: phase
                .parse()
                .map_err(|e: crate::db::UnknownValue| sqlx::Error::Decode(Box::new(e)))?,
            started_at,
            rollback_of,
        })
    })
    .transpose()
}

/// Checks the request and records a new move (nothing else changes yet),
/// for the caller to drive.
pub async fn start(pools: &Pools, merchant: MerchantId, to: &str) -> Result<Move, MoveError> {
    record(pools, merchant, to, false, false).await
}

/// `start` for `serve` to drive (the admin API): recorded as such, so any
/// instance of `serve` carries it on, also after a crash; `keep_source` is
/// kept with it.
pub async fn start_in_serve(
    pools: &Pools,
    merchant: MerchantId,
    to: &str,
    keep_source: bool,
) -> Result<Move, MoveError> {
    record(pools, merchant, to, true, keep_source).await
}

async fn record(
    pools: &Pools,
    merchant: MerchantId,
    to: &str,
    by_serve: bool,
    keep_source: bool,
) -> Result<Move, MoveError> {
    let target = pools.cell(to)?;
    let source = cell_of(&pools.main, merchant).await?;
    if source == to {
        return Err(MoveError::AlreadyThere {
            merchant,
            cell: source,
        });
    }
    if running(&pools.main, merchant).await?.is_some() {
        return Err(MoveError::AlreadyMoving(merchant));
    }
    let source_pool = pools.cell(&source)?;
    check_schema(to, target).await?;
    check_schema(&source, source_pool).await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "insert into tenant_moves (id, merchant_id, source, target, phase, driven_by, keep_source)
         values ($1, $2, $3, $4, 'copying', $5, $6)",
    )
    .bind(id)
    .bind(merchant.0)
    .bind(&source)
    .bind(to)
    .bind(if by_serve { "api" } else { "cli" })
    .bind(keep_source)
    .execute(&pools.main)
    .await;
    match inserted {
        Err(e) if crate::db::violates(&e, "tenant_moves_one_running") => {
            return Err(MoveError::AlreadyMoving(merchant))
        }
        other => other?,
    };
    running(&pools.main, merchant)
        .await?
        .ok_or(MoveError::NotMoving(merchant))
}

/// Carries a move on from its recorded phase to the end (`keep_source`: stop
/// at `moved`, leaving the source's copy for `mercato tenants cleanup`).
pub async fn drive(
    pools: &Pools,
    mut mv: Move,
    keep_source: bool,
    progress: &dyn Progress,
) -> Result<Move, MoveError> {
    let _driving = hold(&pools.main, mv.id).await?;
    loop {
        match mv.phase {
            Phase::Cleaned | Phase::Aborted | Phase::RolledBack => return Ok(mv),
            Phase::Moved if keep_source => return Ok(mv),
            _ => mv = advance(pools, mv, progress).await?,
        }
    }
}

/// Runs the move's current phase to its end: the record then names the next.
pub async fn advance(
    pools: &Pools,
    mut mv: Move,
    progress: &dyn Progress,
) -> Result<Move, MoveError> {
    let source = pools.cell(&mv.source)?.clone();
    let target = pools.cell(&mv.target)?.clone();
    let tables = tenant_tables(&source).await?;
    progress.phase(mv.phase);
    match mv.phase {
        Phase::Copying => {
            prepare(pools, &mv, &source, &target, &tables).await?;
            copy(pools, &mut mv, &source, &target, &tables, progress).await?;
            set_phase(&pools.main, &mut mv, Phase::CatchingUp).await?;
        }
        Phase::CatchingUp => {
            loop {
                let applied =
                    apply_changes(&source, &target, &tables, mv.merchant, &mut Touched::new())
                        .await?;
                record_applied(&pools.main, &mv, applied).await?;
                progress.applied(applied as u64);
                if applied < CUTOVER_BELOW {
                    break;
                }
            }
            set_phase(&pools.main, &mut mv, Phase::CuttingOver).await?;
        }
        Phase::CuttingOver => {
            cut_over(pools, &mut mv, &source, &target, &tables, progress).await?;
        }
        Phase::Moved => {
            // The source's copy goes, and with it the chance of a rollback:
            // the reverse stream stops.
            drop_capture(&source, mv.merchant).await?;
            drop_capture(&target, mv.merchant).await?;
            cleanup(
                pools,
                &source,
                &tables,
                mv.merchant,
                mv.source == MAIN,
                progress,
                |n| record_cleaned(&pools.main, mv.id, n),
            )
            .await?;
            set_phase(&pools.main, &mut mv, Phase::Cleaned).await?;
        }
        Phase::Cleaned | Phase::Aborted | Phase::RolledBack => {}
    }
    Ok(mv)
}

async fn set_phase(main: &PgPool, mv: &mut Move, phase: Phase) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update tenant_moves set phase = $2, updated_at = now(), last_error = null,
                finished_at = case when $2 in ('cleaned', 'aborted') then now() end
         where id = $1",
    )
    .bind(mv.id)
    .bind(phase)
    .execute(main)
    .await?;
    mv.phase = phase;
    Ok(())
}

async fn record_applied(main: &PgPool, mv: &Move, applied: usize) -> Result<(), sqlx::Error> {
    if applied > 0 {
        sqlx::query("update tenant_moves set changes_applied = changes_applied + $2, updated_at = now() where id = $1")
            .bind(mv.id)
            .bind(applied as i64)
            .execute(main)
            .await?;
    }
    Ok(())
}

async fn record_cleaned(main: &PgPool, id: Uuid, rows: u64) -> Result<(), sqlx::Error> {
    sqlx::query("update tenant_moves set rows_cleaned = rows_cleaned + $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(rows as i64)
        .execute(main)
        .await?;
    Ok(())
}

fn trigger_names(merchant: MerchantId) -> (String, String) {
    let hex = merchant.0.simple().to_string();
    (
        format!("mercato_move_{hex}_w"),
        format!("mercato_move_{hex}_d"),
    )
}

/// Raises (for a cutover) or lowers the merchant's gate in the directory,
/// and tells every process at once (`NOTIFY tenant_directory`).
async fn mark_moving<'e>(
    main: impl sqlx::PgExecutor<'e>,
    m: MerchantId,
    moving: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with placed as (update tenant_directory set moving = $2, updated_at = now() where merchant_id = $1)
         select pg_notify('tenant_directory', $1::text)",
    )
    .bind(m.0)
    .bind(moving)
    .execute(main)
    .await?;
    Ok(())
}

/// Step 1's set-up; each statement can run again (resume).
async fn prepare(
    pools: &Pools,
    mv: &Move,
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
) -> Result<(), MoveError> {
    let m = mv.merchant;
    // The merchant's row in the directory, for the cutover to mark `moving`
    // and flip; its requests pass no gate yet.
    sqlx::query(
        "insert into tenant_directory (merchant_id, cell) values ($1, $2)
         on conflict (merchant_id) do nothing",
    )
    .bind(m.0)
    .bind(&mv.source)
    .execute(&pools.main)
    .await?;
    if mv.target != MAIN {
        // The target's foreign keys need the merchant's row (a copy of the directory's).
        let merchant: Value =
            sqlx::query_scalar("select to_jsonb(m) from merchants m where id = $1")
                .bind(m.0)
                .fetch_one(&pools.main)
                .await?;
        sqlx::query(
            "insert into merchants select * from jsonb_populate_record(null::merchants, $1)
             on conflict (id) do nothing",
        )
        .bind(&merchant)
        .execute(target)
        .await?;
    }
    sqlx::query(
        "insert into cell_absent (merchant_id, why) values ($1, 'arriving')
         on conflict (merchant_id) do update set why = 'arriving', since = now()",
    )
    .bind(m.0)
    .execute(target)
    .await?;
    // Capture in the source for the move, and in the target already for the
    // reverse stream (it captures nothing until the target serves the
    // merchant: the merchant is fenced there, and the mover's own writes are
    // not captured).
    install_capture(source, tables, m).await?;
    install_capture(target, tables, m).await?;
    Ok(())
}

/// The merchant's capture triggers on every tenant table of `pool`.
async fn install_capture(
    pool: &PgPool,
    tables: &[Table],
    m: MerchantId,
) -> Result<(), sqlx::Error> {
    let (on_write, on_delete) = trigger_names(m);
    for table in tables {
        let args = table
            .key
            .iter()
            .map(|k| literal(k))
            .collect::<Vec<_>>()
            .join(", ");
        let t = ident(&table.name);
        for sql in [
            format!(
                "create or replace trigger {on_write} after insert or update on {t} for each row
                 when (new.merchant_id = '{}') execute function mercato_capture_change({args})",
                m.0
            ),
            format!(
                "create or replace trigger {on_delete} after delete on {t} for each row
                 when (old.merchant_id = '{}') execute function mercato_capture_change({args})",
                m.0
            ),
        ] {
            ddl_with_retry(pool, &sql).await?;
        }
    }
    Ok(())
}

/// A transaction of the mover's own on a cell: its writes are not captured
/// (the reverse stream must not send the copy or a replay back).
async fn mover_tx(pool: &PgPool, m: MerchantId) -> Result<TenantTx, sqlx::Error> {
    let mut tx = TenantTx::begin_in_directory(pool, m).await?;
    sqlx::query("select set_config('mercato.mover', 'on', true)")
        .execute(tx.conn())
        .await?;
    Ok(tx)
}

/// DDL under a short `lock_timeout`, retried: a busy table delays it, never
/// queues the table's writers behind it for long.
async fn ddl_with_retry(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("set local lock_timeout = '1s'")
            .execute(&mut *tx)
            .await?;
        match sqlx::query(sql).execute(&mut *tx).await {
            Ok(_) => return tx.commit().await,
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("55P03") && attempt < 30 =>
            {
                attempt += 1;
                drop(tx);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies every tenant table's rows of the merchant in keyset batches, each
/// read in a short transaction of its own. Not from one snapshot: a
/// transaction held open for the whole copy keeps every row version since
/// its start alive, in both databases' tables, and the hot rows that every
/// checkout updates (stock, of every merchant) grow version chains that
/// slow each update; on this machine it tripled the neighbour's p99. Without
/// it the copy is a mix of moments, and that is made whole by the capture:
/// it started before the first batch, so every row written since is
/// replayed afterwards, last write last. A row the copy cannot place yet (its
/// parent, or the holder of one of its unique values, is not in the target
/// in the state it has now) was therefore written during the copy: it is
/// skipped here and arrives with the replay. The cursor (table, last key) is
/// recorded with each batch: a copy cut off by a crash goes on from it.
async fn copy(
    pools: &Pools,
    mv: &mut Move,
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    progress: &dyn Progress,
) -> Result<(), MoveError> {
    let m = mv.merchant;
    let (copied_before, cursor_table, cursor_key): (i64, Option<String>, Option<Value>) =
        sqlx::query_as(
            "select rows_copied, copy_table, copy_after from tenant_moves where id = $1",
        )
        .bind(mv.id)
        .fetch_one(&pools.main)
        .await?;
    let resume_at = match &cursor_table {
        Some(name) => tables.iter().position(|t| &t.name == name),
        None => None,
    };
    if resume_at.is_none() {
        // A fresh copy: whatever an earlier, unrecorded attempt left goes.
        cleanup(pools, target, tables, m, true, &Quiet, |_| async { Ok(()) }).await?;
    }
    let mut total = 0u64;
    for table in tables {
        let mut tx = TenantTx::begin_in_directory(source, m).await?;
        let n: i64 = sqlx::query_scalar(&format!(
            "select count(*) from {} where merchant_id = $1",
            ident(&table.name)
        ))
        .bind(m.0)
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        total += n as u64;
    }
    progress.copy_total(total);
    let mut copied = if resume_at.is_some() {
        copied_before
    } else {
        0
    };
    progress.copied(copied as u64);
    for (i, table) in tables.iter().enumerate() {
        let mut cursor = match resume_at {
            Some(at) if i < at => continue,
            Some(at) if i == at => cursor_key.clone().unwrap_or(Value::Null),
            _ => Value::Null,
        };
        loop {
            let started = Instant::now();
            let (batch, last) = match copy_batch(source, target, table, m, &cursor).await {
                Err(e) if settled_by_replay(&e) || binary_form_differs(&e) => {
                    copy_batch_as_json(source, target, table, m, &cursor).await?
                }
                done => done?,
            };
            if batch == 0 {
                break;
            }
            copied += batch as i64;
            cursor = last;
            sqlx::query(
                "update tenant_moves set rows_copied = $2, copy_table = $3, copy_after = $4, updated_at = now()
                 where id = $1",
            )
            .bind(mv.id)
            .bind(copied)
            .bind(&table.name)
            .bind(&cursor)
            .execute(&pools.main)
            .await?;
            progress.copied(batch as u64);
            if (batch as i64) < BATCH {
                break;
            }
            pools.rest(started.elapsed()).await;
        }
    }
    Ok(())
}

/// The merchant's next `limit` keys of `table` after `cursor` (`null`: from
/// its first): how many there are, and the last of them (a key object).
async fn next_keys(
    conn: &mut PgConnection,
    table: &Table,
    m: MerchantId,
    cursor: &Value,
    limit: i64,
) -> Result<(i64, Option<Value>), sqlx::Error> {
    let (t, key) = (ident(&table.name), list(&table.key, ""));
    let descending = table
        .key
        .iter()
        .map(|k| ident(k))
        .collect::<Vec<_>>()
        .join(" desc, ");
    sqlx::query_as(&format!(
        "with c as (select {key} from {t} where merchant_id = $1 {} order by {key} limit $2)
         select count(*), (select to_jsonb(x) from (select * from c order by {descending} desc limit 1) x) from c",
        after_cursor(table, cursor)
    ))
    .bind(m.0)
    .bind(limit)
    .fetch_one(conn)
    .await
}

/// `and (key) > (cursor)`, the key inlined (nothing for a `null` cursor).
fn after_cursor(table: &Table, cursor: &Value) -> String {
    if cursor.is_null() {
        String::new()
    } else {
        format!("and {}", table.key_vs_literal(">", cursor))
    }
}

/// The next batch of the copy (up to `BATCH` rows after `cursor`, `null`:
/// from the start) through binary `COPY`: the source's bytes go to the
/// target as they are, with no JSON made, parsed or sent. Returns the rows
/// the batch covered and its last key. A foreign key or unique violation
/// (see `copy`) is returned for the caller to copy the batch row by row.
async fn copy_batch(
    source: &PgPool,
    target: &PgPool,
    table: &Table,
    m: MerchantId,
    cursor: &Value,
) -> Result<(usize, Value), sqlx::Error> {
    let mut read = TenantTx::begin_in_directory(source, m).await?;
    let (rows, last) = next_keys(read.conn(), table, m, cursor, BATCH).await?;
    let Some(last) = last else {
        read.commit().await?;
        return Ok((0, Value::Null));
    };
    let (t, key, cols) = (
        ident(&table.name),
        list(&table.key, ""),
        list(&table.columns, ""),
    );
    let mut bytes = Vec::new();
    {
        let mut out = read
            .conn()
            .copy_out_raw(&format!(
                "copy (select {cols} from {t} where merchant_id = '{}' {} and {}
                 order by {key}) to stdout (format binary)",
                m.0,
                after_cursor(table, cursor),
                table.key_vs_literal("<=", &last)
            ))
            .await?;
        while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
            bytes.extend_from_slice(&chunk?);
        }
    }
    read.commit().await?;
    // COPY FROM refuses a table under row-level security: the batch lands
    // in a temporary table, and goes in by the same upsert as a replay.
    let mut tx = mover_tx(target, m).await?;
    sqlx::query(&format!(
        "create temp table mercato_copy (like {t}) on commit drop"
    ))
    .execute(tx.conn())
    .await?;
    let mut sink = tx
        .conn()
        .copy_in_raw(&format!(
            "copy pg_temp.mercato_copy ({cols}) from stdin (format binary)"
        ))
        .await?;
    sink.send(bytes).await?;
    sink.finish().await?;
    sqlx::query(&upsert_sql(
        table,
        &format!(
            "select {cols} from pg_temp.mercato_copy c where {}",
            parents_present(table, "c")
        ),
    ))
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    Ok((rows as usize, last))
}

/// `true` for a row (of `table`, as `alias`) whose parents are all in the
/// target already. The copy leaves the others out, as the row-by-row path
/// would: written since the capture began, they arrive with the replay. At
/// the tail of a big table (the rows the live merchant wrote during the
/// copy) nearly every batch has such a row, and each sent the whole batch
/// row by row: the copy of `orders` fell to 50 rows/s there.
fn parents_present(table: &Table, alias: &str) -> String {
    let mut conditions = vec!["true".to_owned()];
    for (parent, here, there) in &table.parents {
        let any_null = here
            .iter()
            .map(|c| format!("{alias}.{} is null", ident(c)))
            .collect::<Vec<_>>()
            .join(" or ");
        conditions.push(format!(
            "({any_null} or exists (select 1 from {} p where ({}) = ({})))",
            ident(parent),
            list(there, "p."),
            list(here, &format!("{alias}."))
        ));
    }
    conditions.join(" and ")
}

/// The batch after `cursor` read as JSON and placed row by row where a row
/// cannot be placed yet (the slow path of `copy_batch`).
async fn copy_batch_as_json(
    source: &PgPool,
    target: &PgPool,
    table: &Table,
    m: MerchantId,
    cursor: &Value,
) -> Result<(usize, Value), sqlx::Error> {
    let (t, key) = (ident(&table.name), list(&table.key, ""));
    let mut read = TenantTx::begin_in_directory(source, m).await?;
    let rows: Value = sqlx::query_scalar(&format!(
        "select coalesce(jsonb_agg(to_jsonb(b) order by {key}), '[]') from
         (select * from {t} where merchant_id = $1 {} order by {key} limit $2) b",
        after_cursor(table, cursor)
    ))
    .bind(m.0)
    .bind(BATCH)
    .fetch_one(read.conn())
    .await?;
    read.commit().await?;
    let batch = rows.as_array().map(Vec::len).unwrap_or(0);
    if batch > 0 {
        place(target, table, m, &rows).await?;
    }
    let last = rows
        .as_array()
        .and_then(|r| r.last())
        .cloned()
        .unwrap_or(Value::Null);
    Ok((batch, last))
}

/// Writes a batch of copied rows into the target (see `upsert_placeable`).
async fn place(
    target: &PgPool,
    table: &Table,
    m: MerchantId,
    rows: &Value,
) -> Result<(), sqlx::Error> {
    let mut tx = mover_tx(target, m).await?;
    upsert_placeable(
        &mut tx,
        table,
        rows.as_array().map(Vec::as_slice).unwrap_or_default(),
    )
    .await?;
    tx.commit().await
}

/// Upserts rows; if one cannot be placed yet (a foreign key or unique value
/// that a later replay settles, see `copy` and `apply_changes`), row by row,
/// skipping those. Returns the skipped rows' positions in `rows`.
async fn upsert_placeable(
    tx: &mut TenantTx,
    table: &Table,
    rows: &[Value],
) -> Result<Vec<usize>, sqlx::Error> {
    sqlx::query("savepoint all_rows").execute(tx.conn()).await?;
    match upsert(tx, table, &Value::Array(rows.to_vec())).await {
        Ok(()) => return Ok(Vec::new()),
        Err(e) if !settled_by_replay(&e) => return Err(e),
        Err(_) => {
            sqlx::query("rollback to savepoint all_rows")
                .execute(tx.conn())
                .await?;
        }
    }
    let mut skipped = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        sqlx::query("savepoint one_row").execute(tx.conn()).await?;
        match upsert(tx, table, &Value::Array(vec![row.clone()])).await {
            Ok(()) => {}
            Err(e) if settled_by_replay(&e) => {
                sqlx::query("rollback to savepoint one_row")
                    .execute(tx.conn())
                    .await?;
                skipped.push(i);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(skipped)
}

/// Binary `COPY` names array elements and composite fields by type oid,
/// which a type made by `CREATE TYPE` has its own of in each cluster (none
/// of Mercato's tables has such a column today): those batches go as JSON.
fn binary_form_differs(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("42804") | Some("22P03")))
}

/// A foreign key or unique violation: in a copy, a row written since the
/// capture began (see `copy`).
fn settled_by_replay(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23503") | Some("23505")))
}

/// Writes rows (a JSON array of whole rows) into the table, replacing any
/// with the same key.
async fn upsert(tx: &mut TenantTx, table: &Table, rows: &Value) -> Result<(), sqlx::Error> {
    let t = ident(&table.name);
    let cols = list(&table.columns, "");
    sqlx::query(&upsert_sql(
        table,
        &format!("select {cols} from jsonb_populate_recordset(null::{t}, $1)"),
    ))
    .bind(rows)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// `insert into table (columns) <rows> on conflict (key) do update …`:
/// rows replace any with the same key.
fn upsert_sql(table: &Table, rows: &str) -> String {
    let t = ident(&table.name);
    let cols = list(&table.columns, "");
    let rest: Vec<String> = table
        .columns
        .iter()
        .filter(|c| !table.key.contains(c))
        .cloned()
        .collect();
    let on_conflict = if rest.is_empty() {
        "do nothing".to_owned()
    } else {
        format!(
            "do update set ({}) = row({})",
            list(&rest, ""),
            list(&rest, "excluded.")
        )
    };
    format!(
        "insert into {t} ({cols}) {rows} on conflict ({}) {on_conflict}",
        list(&table.key, "")
    )
}

/// Replays one batch of captured writes on the target, in capture order:
/// each key written gets its row as the source holds it now (upserted), or
/// is deleted there if the source has it no more; deletes children first,
/// then upserts parents first. The captured keys and their rows are read
/// from one snapshot of the source. A row read may still not be placeable
/// yet: an order now points at a payment whose capture lies beyond this
/// batch, and then the order's items cannot go in either. Such a row is
/// skipped and its captures are kept, to be replayed again with the next
/// batch; the others are forgotten. Returns how many captured writes it
/// replayed (the kept ones not counted: a pause replays until it is 0, and
/// its recheck finds a row that could never be placed).
async fn apply_changes(
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    m: MerchantId,
    touched: &mut Touched,
) -> Result<usize, sqlx::Error> {
    let mut read = TenantTx::begin_snapshot_in_directory(source, m).await?;
    let changes: Vec<(i64, String, Value)> = sqlx::query_as(
        "select seq, table_name, key from move_changes where merchant_id = $1 order by seq limit $2",
    )
    .bind(m.0)
    .bind(BATCH * 5)
    .fetch_all(read.conn())
    .await?;
    if changes.is_empty() {
        read.commit().await?;
        return Ok(0);
    }
    // table → key (as text) → key.
    let mut written: HashMap<&str, HashMap<String, &Value>> = HashMap::new();
    for (_, table, key) in &changes {
        written
            .entry(table.as_str())
            .or_default()
            .insert(key.to_string(), key);
        touched
            .entry(table.clone())
            .or_default()
            .insert(key.to_string(), key.clone());
    }
    // Per table: the rows the source has of the keys written (key, row),
    // and the keys it has no row of.
    type Now = (Vec<(Value, Value)>, Vec<Value>);
    let mut now: HashMap<&str, Now> = HashMap::new();
    for table in tables {
        let Some(keys) = written.get(table.name.as_str()) else {
            continue;
        };
        let rows: Vec<(Value, Value)> = sqlx::query_as(&format!(
            "select {}, to_jsonb({}) from {}",
            key_object(table),
            ident(&table.name),
            table.rows_of_keys()
        ))
        .bind(Value::Array(keys.values().map(|k| (*k).clone()).collect()))
        .fetch_all(read.conn())
        .await?;
        let present: std::collections::HashSet<String> =
            rows.iter().map(|(k, _)| k.to_string()).collect();
        let gone = keys
            .iter()
            .filter(|(k, _)| !present.contains(*k))
            .map(|(_, key)| (*key).clone())
            .collect();
        now.insert(table.name.as_str(), (rows, gone));
    }
    read.commit().await?;
    let mut tx = mover_tx(target, m).await?;
    for table in tables.iter().rev() {
        let Some((_, gone)) = now.get(table.name.as_str()) else {
            continue;
        };
        if gone.is_empty() {
            continue;
        }
        let t = ident(&table.name);
        sqlx::query(&format!(
            "delete from {t} using jsonb_populate_recordset(null::{t}, $1) k where ({}) = ({})",
            list(&table.key, &format!("{t}.")),
            list(&table.key, "k."),
        ))
        .bind(Value::Array(gone.clone()))
        .execute(tx.conn())
        .await?;
    }
    // table → keys (as text) not placed.
    let mut kept: HashMap<&str, std::collections::HashSet<String>> = HashMap::new();
    for table in tables {
        let Some((rows, _)) = now.get(table.name.as_str()) else {
            continue;
        };
        if rows.is_empty() {
            continue;
        }
        let whole: Vec<Value> = rows.iter().map(|(_, row)| row.clone()).collect();
        let skipped = upsert_placeable(&mut tx, table, &whole).await?;
        if !skipped.is_empty() {
            kept.insert(
                table.name.as_str(),
                skipped.into_iter().map(|i| rows[i].0.to_string()).collect(),
            );
        }
    }
    tx.commit().await?;
    // Only now forget them: a crash before this replays them, to the same end.
    let seqs: Vec<i64> = changes
        .iter()
        .filter(|(_, table, key)| {
            !kept
                .get(table.as_str())
                .is_some_and(|keys| keys.contains(&key.to_string()))
        })
        .map(|(seq, ..)| *seq)
        .collect();
    sqlx::query("delete from move_changes where seq = any ($1)")
        .bind(&seqs)
        .execute(source)
        .await?;
    Ok(seqs.len())
}

async fn cut_over(
    pools: &Pools,
    mv: &mut Move,
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    progress: &dyn Progress,
) -> Result<(), MoveError> {
    let m = mv.merchant;
    // Verified before the pause, so the pause rechecks only what changed
    // since: the keys replayed from here on, and the keys that differed.
    let mut record = CutoverRecord::default();
    let mut touched = Touched::new();
    catch_up(pools, mv, source, target, tables, &mut touched, progress).await?;
    let started = Instant::now();
    let dirty = pre_verify(pools, source, target, tables, m).await?;
    record.pre_verify_ms = ms(started.elapsed());
    record.ranges_differing = dirty.len();
    narrow(
        pools,
        mv,
        (source, target),
        tables,
        (&mut touched, dirty),
        progress,
        &mut record,
    )
    .await?;
    // Only now do the merchant's requests pass the gate. Instances learn of
    // `moving` by NOTIFY at once; a slow one is given time (and one that
    // still missed it waits at the gate when the fenced source refuses it,
    // see `Cells::begin`). What they wrote meanwhile is replayed first.
    mark_moving(&pools.main, m, true).await?;
    tokio::time::sleep(PROPAGATION).await;
    catch_up(pools, mv, source, target, tables, &mut touched, progress).await?;
    let mut gate = PgConnection::connect_with(&gate_options(&pools.main)).await?;
    sqlx::query("set lock_timeout = '15s'")
        .execute(&mut gate)
        .await?;
    let closing = Instant::now();
    let closed = sqlx::query("select pg_advisory_lock($1, hashtext($2::text))")
        .bind(GATE_CLASS)
        .bind(m.0)
        .execute(&mut gate)
        .await;
    if let Err(err) = closed {
        return Err(MoveError::Stalled(format!(
            "the merchant's in-flight requests did not finish in 15 s ({err}); the move stays resumable"
        )));
    }
    record.gate_wait_ms = ms(closing.elapsed());
    let paused = Instant::now();
    let outcome = cut_over_gated(
        pools,
        mv,
        (source, target),
        tables,
        &mut touched,
        progress,
        (paused, &mut record),
    )
    .await;
    if outcome.is_err() {
        // Back to serving from the source: nothing flipped.
        let _ = sqlx::query("delete from cell_absent where merchant_id = $1")
            .bind(m.0)
            .execute(source)
            .await;
        let _ = save_cutover(&pools.main, mv.id, &record).await;
    }
    let _ = gate.close().await;
    outcome?;
    // The flip committed the phase `moved` with it; the source's capture stops.
    drop_capture(source, m).await?;
    Ok(())
}

/// What a cutover spent its time on, kept in `tenant_moves.cutover`.
#[derive(Debug, Default, serde::Serialize)]
struct CutoverRecord {
    /// Hashing every row in chunks, before the pause.
    pre_verify_ms: f64,
    /// Chunks that differed then (writes not yet replayed).
    ranges_differing: usize,
    /// Each narrowing round: keys still to recheck after it.
    rounds: Vec<NarrowRound>,
    /// Waiting for the merchant's in-flight requests to leave the gate.
    gate_wait_ms: f64,
    /// The pause (gate closed) step by step.
    wait_for_older_ms: f64,
    changes_in_pause: usize,
    replay_in_pause_ms: f64,
    keys_rechecked: usize,
    recheck_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct NarrowRound {
    keys_left: usize,
    took_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn save_cutover(main: &PgPool, id: Uuid, record: &CutoverRecord) -> Result<(), sqlx::Error> {
    sqlx::query("update tenant_moves set cutover = $2 where id = $1")
        .bind(id)
        .bind(sqlx::types::Json(record))
        .execute(main)
        .await?;
    Ok(())
}

/// The advisory lock class a move's driver holds (two-key form: class, move).
const DRIVER_CLASS: i32 = 0x4d44; // "MD"

/// Holds the move's driver lock for as long as the connection lives: one
/// mover at a time carries a move on, aborts or cleans it up.
pub async fn hold(main: &PgPool, id: Uuid) -> Result<PgConnection, MoveError> {
    let mut conn = PgConnection::connect_with(&gate_options(main)).await?;
    let held: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, hashtext($2::text))")
        .bind(DRIVER_CLASS)
        .bind(id)
        .fetch_one(&mut conn)
        .await?;
    if !held {
        let _ = conn.close().await;
        return Err(MoveError::DrivenElsewhere);
    }
    Ok(conn)
}

fn gate_options(main: &PgPool) -> sqlx::postgres::PgConnectOptions {
    main.connect_options()
        .as_ref()
        .clone()
        .application_name("mercato-mover")
}

async fn cut_over_gated(
    pools: &Pools,
    mv: &mut Move,
    (source, target): (&PgPool, &PgPool),
    tables: &[Table],
    touched: &mut Touched,
    progress: &dyn Progress,
    (paused, record): (Instant, &mut CutoverRecord),
) -> Result<(), MoveError> {
    let m = mv.merchant;
    // The source stops serving the merchant: its workers no longer see its
    // rows, and a transaction begun there is refused.
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "insert into cell_absent (merchant_id, why) values ($1, 'departed')
         on conflict (merchant_id) do update set why = 'departed', since = now()
         returning since",
    )
    .bind(m.0)
    .fetch_one(source)
    .await?;
    wait_for_older_transactions(source, since).await?;
    record.wait_for_older_ms = ms(paused.elapsed());
    let replaying = Instant::now();
    loop {
        let applied = apply_changes(source, target, tables, m, touched).await?;
        record_applied(&pools.main, mv, applied).await?;
        progress.applied(applied as u64);
        record.changes_in_pause += applied;
        if applied == 0 {
            break;
        }
    }
    record.replay_in_pause_ms = ms(replaying.elapsed());
    let rechecking = Instant::now();
    record.keys_rechecked = touched.values().map(HashMap::len).sum();
    recheck(source, target, tables, m, touched).await?;
    record.recheck_ms = ms(rechecking.elapsed());
    sqlx::query("delete from cell_absent where merchant_id = $1")
        .bind(m.0)
        .execute(target)
        .await?;
    let mut tx = pools.main.begin().await?;
    sqlx::query("update tenant_directory set cell = $2, moving = false, updated_at = now() where merchant_id = $1")
        .bind(m.0)
        .bind(&mv.target)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update tenant_moves set phase = 'moved', pause_ms = $2, cutover = $3, updated_at = now()
         where id = $1",
    )
    .bind(mv.id)
    .bind(ms(paused.elapsed()))
    .bind(sqlx::types::Json(&*record))
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify('tenant_directory', $1::text)")
        .bind(m.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    mv.phase = Phase::Moved;
    Ok(())
}

/// Waits until every transaction of the source that began before `since`
/// (a worker that read the merchant's rows before it was marked departed)
/// has ended. Sessions waiting at the gate are not waited for.
async fn wait_for_older_transactions(
    source: &PgPool,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(), MoveError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let older: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()
               and xact_start < $1 and state <> 'idle'
               and not (wait_event_type = 'Lock' and wait_event = 'advisory')",
        )
        .bind(since)
        .fetch_one(source)
        .await?;
        if older == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(MoveError::Stalled(format!(
                "{older} transactions of the source older than the cutover did not end in 10 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Per table, the merchant's row count and a checksum of its rows.
pub async fn checksums(
    pool: &PgPool,
    tables: &[Table],
    m: MerchantId,
) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    let mut sums = Vec::with_capacity(tables.len());
    for table in tables {
        let (rows, sum) = range_sum(pool, table, m, None, None).await?;
        sums.push((table.name.clone(), rows, sum));
    }
    Ok(sums)
}

/// Keys replayed on the target, per table (key as text → key).
type Touched = HashMap<String, HashMap<String, Value>>;

/// A key range of a table, `(after, up_to]` (`None`: unbounded).
struct Range {
    table: usize,
    after: Option<Value>,
    up_to: Option<Value>,
}

/// Replays captured writes until few are left, resting by the duty cycle
/// (the pause replays without rest).
async fn catch_up(
    pools: &Pools,
    mv: &Move,
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    touched: &mut Touched,
    progress: &dyn Progress,
) -> Result<(), MoveError> {
    loop {
        let started = Instant::now();
        let applied = apply_changes(source, target, tables, mv.merchant, touched).await?;
        record_applied(&pools.main, mv, applied).await?;
        progress.applied(applied as u64);
        if applied < CUTOVER_BELOW {
            return Ok(());
        }
        pools.rest(started.elapsed()).await;
    }
}

/// The merchant's rows of `table` in a key range: the conditions (`$1` is
/// the merchant) and the parameters from `$2` on.
fn range_filter(
    table: &Table,
    after: Option<&Value>,
    up_to: Option<&Value>,
) -> (String, Vec<Value>) {
    let mut conditions = vec!["merchant_id = $1".to_owned()];
    let mut params = Vec::new();
    if let Some(after) = after {
        params.push(after.clone());
        conditions.push(table.key_vs(">", params.len() + 1));
    }
    if let Some(up_to) = up_to {
        params.push(up_to.clone());
        conditions.push(table.key_vs("<=", params.len() + 1));
    }
    (conditions.join(" and "), params)
}

/// Rows and checksum of the merchant's rows of `table` in a key range.
/// Rows are hashed without `xid` (events' commit position, which is local
/// to a cell: the mover writes 0 there, see migration 0019).
async fn range_sum(
    pool: &PgPool,
    table: &Table,
    m: MerchantId,
    after: Option<&Value>,
    up_to: Option<&Value>,
) -> Result<(i64, String), sqlx::Error> {
    let t = ident(&table.name);
    let (filter, params) = range_filter(table, after, up_to);
    let sql = format!(
        "select count(*), coalesce(sum({}), 0)::text
         from {t} where {filter}",
        table.row_hash()
    );
    let mut query = sqlx::query_as(&sql).bind(m.0);
    for p in params {
        query = query.bind(p);
    }
    let mut tx = TenantTx::begin_in_directory(pool, m).await?;
    let sum = query.fetch_one(tx.conn()).await?;
    tx.commit().await?;
    Ok(sum)
}

/// Key (as JSON) → row hash of the merchant's rows of `table` in a range.
async fn range_hashes(
    pool: &PgPool,
    table: &Table,
    m: MerchantId,
    range: &Range,
) -> Result<HashMap<String, (Value, i64)>, sqlx::Error> {
    let t = ident(&table.name);
    let (filter, params) = range_filter(table, range.after.as_ref(), range.up_to.as_ref());
    let sql = format!(
        "select {}, {} from {t} where {filter}",
        key_object(table),
        table.row_hash()
    );
    let mut query = sqlx::query_as(&sql).bind(m.0);
    for p in params {
        query = query.bind(p);
    }
    let mut tx = TenantTx::begin_in_directory(pool, m).await?;
    let rows: Vec<(Value, i64)> = query.fetch_all(tx.conn()).await?;
    tx.commit().await?;
    Ok(by_key(rows))
}

/// `jsonb_build_object('k1', t.k1, …)`: a row's key as the capture writes it.
fn key_object(table: &Table) -> String {
    let t = ident(&table.name);
    let fields = table
        .key
        .iter()
        .map(|k| format!("{}, {t}.{}", literal(k), ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("jsonb_build_object({fields})")
}

fn by_key(rows: Vec<(Value, i64)>) -> HashMap<String, (Value, i64)> {
    rows.into_iter()
        .map(|(k, h)| (k.to_string(), (k, h)))
        .collect()
}

/// The keys whose rows differ between two key → hash maps (a key on one
/// side only differs too).
fn keys_that_differ(
    here: &HashMap<String, (Value, i64)>,
    there: &HashMap<String, (Value, i64)>,
) -> Vec<Value> {
    let mut differ: Vec<Value> = here
        .iter()
        .filter(|(k, (_, h))| there.get(*k).map(|(_, h2)| h2) != Some(h))
        .map(|(_, (k, _))| k.clone())
        .collect();
    differ.extend(
        there
            .iter()
            .filter(|(k, _)| !here.contains_key(*k))
            .map(|(_, (k, _))| k.clone()),
    );
    differ
}

/// A range's rows and checksum in the source, then in the target. One after
/// the other, not at once: before the pause only the share of the machine
/// the hashing takes counts, not its wall time, and two hashing backends at
/// once take both cores of a small machine from the cells' other merchants.
async fn range_on_both(
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    m: MerchantId,
    range: &Range,
) -> Result<((i64, String), (i64, String)), sqlx::Error> {
    let table = &tables[range.table];
    let (after, up_to) = (range.after.as_ref(), range.up_to.as_ref());
    let here = range_sum(source, table, m, after, up_to).await?;
    let there = range_sum(target, table, m, after, up_to).await?;
    Ok((here, there))
}

/// Compares source and target chunk by chunk (ranges of the source's keys,
/// together covering every key); returns the ranges that differ, which
/// captured writes not yet replayed explain, to check again in the pause.
async fn pre_verify(
    pools: &Pools,
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    m: MerchantId,
) -> Result<Vec<Range>, MoveError> {
    let mut dirty = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let mut after: Option<Value> = None;
        loop {
            let started = Instant::now();
            let mut tx = TenantTx::begin_in_directory(source, m).await?;
            let cursor = after.clone().unwrap_or(Value::Null);
            let (rows, last) = next_keys(tx.conn(), table, m, &cursor, VERIFY_CHUNK).await?;
            tx.commit().await?;
            let up_to = if rows < VERIFY_CHUNK { None } else { last };
            let range = Range {
                table: i,
                after: after.clone(),
                up_to: up_to.clone(),
            };
            let (here, there) = range_on_both(source, target, tables, m, &range).await?;
            if here != there {
                dirty.push(range);
            }
            match up_to {
                None => break,
                Some(last) => after = Some(last),
            }
            // Hashing every row is the copy's cost again: throttled the same way.
            pools.rest(started.elapsed()).await;
        }
    }
    Ok(dirty)
}

/// Before the pause, in rounds: what differed is checked again after a
/// catch-up, and only what still differs, with the keys that catch-up
/// replayed, goes on to the next round, until few keys are left for the
/// pause to recheck. A chunk that differed is checked row by row, so only
/// its differing keys go on (a chunk with a random-keyed table's writes
/// landing in it would differ again every round). A key found equal stays
/// equal unless it is written again, and then its write is captured,
/// replayed and checked.
async fn narrow(
    pools: &Pools,
    mv: &Move,
    (source, target): (&PgPool, &PgPool),
    tables: &[Table],
    (touched, mut dirty): (&mut Touched, Vec<Range>),
    progress: &dyn Progress,
    record: &mut CutoverRecord,
) -> Result<(), MoveError> {
    /// Keys the pause may recheck.
    const SMALL: usize = 2000;
    const ROUNDS: usize = 8;
    let m = mv.merchant;
    for _ in 0..ROUNDS {
        let round = Instant::now();
        let mut fresh = Touched::new();
        catch_up(pools, mv, source, target, tables, &mut fresh, progress).await?;
        for range in dirty.drain(..) {
            let started = Instant::now();
            let table = &tables[range.table];
            // One side after the other (see `range_on_both`).
            let here = range_hashes(source, table, m, &range).await?;
            let there = range_hashes(target, table, m, &range).await?;
            for key in keys_that_differ(&here, &there) {
                fresh
                    .entry(table.name.clone())
                    .or_default()
                    .insert(key.to_string(), key);
            }
            pools.rest(started.elapsed()).await;
        }
        for table in tables {
            let Some(keys) = touched.remove(&table.name) else {
                continue;
            };
            for key in differing(source, target, table, m, keys).await? {
                fresh
                    .entry(table.name.clone())
                    .or_default()
                    .insert(key.to_string(), key);
            }
        }
        *touched = fresh;
        let left = touched.values().map(HashMap::len).sum::<usize>();
        record.rounds.push(NarrowRound {
            keys_left: left,
            took_ms: ms(round.elapsed()),
        });
        tracing::debug!(keys_left = left, "narrowing the cutover's recheck");
        if left <= SMALL {
            break;
        }
    }
    Ok(())
}

/// The keys (of `keys`) whose rows differ between source and target.
async fn differing(
    source: &PgPool,
    target: &PgPool,
    table: &Table,
    m: MerchantId,
    keys: HashMap<String, Value>,
) -> Result<Vec<Value>, sqlx::Error> {
    let sql = format!(
        "select {}, {} from {}",
        key_object(table),
        table.row_hash(),
        table.rows_of_keys()
    );
    let keys = Value::Array(keys.into_values().collect());
    let hashes = |pool: &PgPool| {
        let (sql, keys, pool) = (sql.clone(), keys.clone(), pool.clone());
        async move {
            let mut tx = TenantTx::begin_in_directory(&pool, m).await?;
            let rows: Vec<(Value, i64)> = sqlx::query_as(&sql)
                .bind(&keys)
                .fetch_all(tx.conn())
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(by_key(rows))
        }
    };
    // Before the pause: one side after the other (see `range_on_both`).
    let here = hashes(source).await?;
    let there = hashes(target).await?;
    Ok(keys_that_differ(&here, &there))
}

/// In the pause, with every captured write replayed: every key that
/// differed before or was replayed since must now be equal.
async fn recheck(
    source: &PgPool,
    target: &PgPool,
    tables: &[Table],
    m: MerchantId,
    touched: &Touched,
) -> Result<(), MoveError> {
    for table in tables {
        let Some(keys) = touched.get(&table.name) else {
            continue;
        };
        let keys = Value::Array(keys.values().cloned().collect());
        let sql = format!(
            "select count(*), coalesce(sum({}), 0)::text from {}",
            table.row_hash(),
            table.rows_of_keys()
        );
        let sum = |pool: &PgPool| {
            let (sql, keys) = (sql.clone(), keys.clone());
            let pool = pool.clone();
            async move {
                let mut tx = TenantTx::begin_in_directory(&pool, m).await?;
                let sum: (i64, String) = sqlx::query_as(&sql)
                    .bind(&keys)
                    .fetch_one(tx.conn())
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(sum)
            }
        };
        let (here, there) = tokio::try_join!(sum(source), sum(target))?;
        if here != there {
            return Err(MoveError::Mismatch {
                table: table.name.clone(),
                source_rows: here.0,
                target_rows: there.0,
                source_sum: here.1,
                target_sum: there.1,
            });
        }
    }
    Ok(())
}

/// Drops the merchant's capture triggers in the source and what they
/// captured (again harmlessly: a mover that died just after the flip left them).
async fn drop_capture(source: &PgPool, m: MerchantId) -> Result<(), sqlx::Error> {
    let (on_write, on_delete) = trigger_names(m);
    let installed: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_trigger where tgname in ($1, $2))
             or exists (select 1 from move_changes where merchant_id = $3)",
    )
    .bind(&on_write)
    .bind(&on_delete)
    .bind(m.0)
    .fetch_one(source)
    .await?;
    if !installed {
        // Nothing to drop: no DDL, whose locks would queue the tables' writers.
        return Ok(());
    }
    for table in tenant_tables(source).await? {
        let t = ident(&table.name);
        ddl_with_retry(source, &format!("drop trigger if exists {on_write} on {t}")).await?;
        ddl_with_retry(
            source,
            &format!("drop trigger if exists {on_delete} on {t}"),
        )
        .await?;
    }
    sqlx::query("delete from move_changes where merchant_id = $1")
        .bind(m.0)
        .execute(source)
        .await?;
    Ok(())
}

/// Deletes the merchant's rows from a cell in batches, children first.
async fn cleanup<F, Fut>(
    pools: &Pools,
    pool: &PgPool,
    tables: &[Table],
    m: MerchantId,
    keep_merchant_row: bool,
    progress: &dyn Progress,
    record: F,
) -> Result<u64, MoveError>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let mut total = 0;
    for table in tables.iter().rev() {
        let t = ident(&table.name);
        loop {
            let started = Instant::now();
            let mut tx = mover_tx(pool, m).await?;
            let deleted = sqlx::query(&format!(
                "delete from {t} where ctid = any (array(select ctid from {t} where merchant_id = $1 limit $2))"
            ))
            .bind(m.0)
            .bind(BATCH)
            .execute(tx.conn())
            .await?
            .rows_affected();
            tx.commit().await?;
            if deleted == 0 {
                break;
            }
            total += deleted;
            record(deleted).await?;
            progress.cleaned(deleted);
            // Throttled: the cell's other merchants keep their latency.
            pools.rest(started.elapsed()).await;
        }
    }
    if !keep_merchant_row {
        // The merchant's row in a cell only served its foreign keys.
        sqlx::query("delete from merchants where id = $1")
            .bind(m.0)
            .execute(pool)
            .await?;
    }
    Ok(total)
}

/// Deletes what a finished move left in its source (`--keep-source`).
pub async fn cleanup_source(
    pools: &Pools,
    merchant: MerchantId,
    progress: &dyn Progress,
) -> Result<u64, MoveError> {
    let Some(mv) = find_move(&pools.main, merchant, "phase = 'moved'").await? else {
        return Err(MoveError::NotMoving(merchant));
    };
    let (id, source_name) = (mv.id, mv.source.clone());
    let _driving = hold(&pools.main, id).await?;
    let source = pools.cell(&source_name)?;
    // The reverse stream ends (no rollback past a cleanup); the source's
    // triggers, should a crash have left them, would capture the deletes.
    drop_capture(pools.cell(&mv.target)?, merchant).await?;
    drop_capture(source, merchant).await?;
    let tables = tenant_tables(source).await?;
    let n = cleanup(
        pools,
        source,
        &tables,
        merchant,
        source_name == MAIN,
        progress,
        |n| record_cleaned(&pools.main, id, n),
    )
    .await?;
    sqlx::query("update tenant_moves set phase = 'cleaned', finished_at = now(), updated_at = now() where id = $1")
        .bind(id)
        .execute(&pools.main)
        .await?;
    Ok(n)
}

/// Abandons a move before its cutover: the source stays the only copy.
pub async fn abort(
    pools: &Pools,
    merchant: MerchantId,
    progress: &dyn Progress,
) -> Result<(), MoveError> {
    let mut mv = running(&pools.main, merchant)
        .await?
        .ok_or(MoveError::NotMoving(merchant))?;
    let _driving = hold(&pools.main, mv.id).await?;
    if cell_of(&pools.main, merchant).await? == mv.target {
        return Err(MoveError::PastCutover);
    }
    let source = pools.cell(&mv.source)?.clone();
    let target = pools.cell(&mv.target)?.clone();
    if let Some(undone) = mv.rollback_of {
        return abort_rollback(pools, mv, undone, &target).await;
    }
    drop_capture(&source, merchant).await?;
    drop_capture(&target, merchant).await?;
    sqlx::query("delete from cell_absent where merchant_id = $1")
        .bind(merchant.0)
        .execute(&source)
        .await?;
    // The target keeps fencing the merchant (a stale router finds nothing
    // there) and loses what was copied.
    sqlx::query(
        "insert into cell_absent (merchant_id, why) values ($1, 'departed')
         on conflict (merchant_id) do update set why = 'departed', since = now()",
    )
    .bind(merchant.0)
    .execute(&target)
    .await?;
    let tables = tenant_tables(&target).await?;
    cleanup(
        pools,
        &target,
        &tables,
        merchant,
        mv.target == MAIN,
        progress,
        |_| async { Ok(()) },
    )
    .await?;
    mark_moving(&pools.main, merchant, false).await?;
    set_phase(&pools.main, &mut mv, Phase::Aborted).await?;
    Ok(())
}

/// Abandons a rollback before its cutover: the merchant stays where the move
/// put it, the move is `moved` again and its reverse stream goes on (what the
/// rollback replayed into the old source is no loss: a later rollback goes on
/// from there). The old source keeps its copy, still fenced.
async fn abort_rollback(
    pools: &Pools,
    mut mv: Move,
    undone: Uuid,
    old_source: &PgPool,
) -> Result<(), MoveError> {
    drop_capture(old_source, mv.merchant).await?;
    sqlx::query(
        "insert into cell_absent (merchant_id, why) values ($1, 'departed')
         on conflict (merchant_id) do update set why = 'departed', since = now()",
    )
    .bind(mv.merchant.0)
    .execute(old_source)
    .await?;
    let mut tx = pools.main.begin().await?;
    sqlx::query("update tenant_moves set phase = 'aborted', finished_at = now(), updated_at = now() where id = $1")
        .bind(mv.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("update tenant_moves set phase = 'moved', updated_at = now() where id = $1")
        .bind(undone)
        .execute(&mut *tx)
        .await?;
    mark_moving(&mut *tx, mv.merchant, false).await?;
    tx.commit().await?;
    mv.phase = Phase::Aborted;
    Ok(())
}

/// Ends what a mover killed right after a cutover left undone: the flip is
/// committed (the move is `moved`) but the source may still have the
/// capture, which the move drops next. Returns that move, or `None` if the
/// merchant's last move is not one that cut over.
pub async fn settle_cut_over(
    pools: &Pools,
    merchant: MerchantId,
) -> Result<Option<Move>, MoveError> {
    let Some(done) = find_move(&pools.main, merchant, "phase = 'moved'").await? else {
        return Ok(None);
    };
    if cell_of(&pools.main, merchant).await? != done.target {
        return Ok(None);
    }
    let _driving = hold(&pools.main, done.id).await?;
    drop_capture(pools.cell(&done.source)?, merchant).await?;
    Ok(Some(done))
}

/// Starts undoing the merchant's last move (one made with `keep_source`, not
/// cleaned up): a move back to its old cell that copies nothing, because the
/// old copy is there and the reverse stream holds every write made since the
/// cutover; it catches up and cuts over like any move. Drive it on.
pub async fn rollback(pools: &Pools, merchant: MerchantId) -> Result<Move, MoveError> {
    if running(&pools.main, merchant).await?.is_some() {
        return Err(MoveError::AlreadyMoving(merchant));
    }
    let Some(done) = find_move(&pools.main, merchant, "phase in ('moved', 'cleaned')").await?
    else {
        return Err(MoveError::NothingToRollBack(merchant));
    };
    if done.phase != Phase::Moved || cell_of(&pools.main, merchant).await? != done.target {
        return Err(MoveError::NothingToRollBack(merchant));
    }
    let (source, target) = (pools.cell(&done.target)?, pools.cell(&done.source)?);
    check_schema(&done.target, source).await?;
    check_schema(&done.source, target).await?;
    let mut back = Move {
        id: Uuid::now_v7(),
        merchant,
        source: done.target.clone(),
        target: done.source.clone(),
        phase: Phase::CatchingUp,
        started_at: chrono::Utc::now(),
        rollback_of: Some(done.id),
    };
    // As a move's first step (gate on, old copy fenced as `arriving`,
    // capture both ways), before the record: a crash in between leaves
    // nothing a second `rollback` does not redo.
    let tables = tenant_tables(source).await?;
    prepare(pools, &back, source, target, &tables).await?;
    let mut tx = pools.main.begin().await?;
    let updated = sqlx::query(
        "update tenant_moves set phase = 'rolled_back', finished_at = now(), updated_at = now()
         where id = $1 and phase = 'moved'",
    )
    .bind(done.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(MoveError::NothingToRollBack(merchant));
    }
    back.started_at = sqlx::query_scalar(
        "insert into tenant_moves (id, merchant_id, source, target, phase, rollback_of)
         values ($1, $2, $3, $4, 'catching_up', $5) returning started_at",
    )
    .bind(back.id)
    .bind(merchant.0)
    .bind(&back.source)
    .bind(&back.target)
    .bind(done.id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(back)
}
