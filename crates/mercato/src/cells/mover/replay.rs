//! Step 2, and the end of every later catch-up: replaying the captured
//! writes on the target, and the upsert that the copy's slow path shares.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use pgshift::toolkit::has_sqlstate;
use serde_json::Value;

use super::run::MoveRun;
use super::tables::{Table, UpsertFrom};
use super::{MoveError, BATCH, CUTOVER_BELOW};
use crate::db::TenantTx;

/// Keys replayed on the target, per table (key as text → key).
pub(super) type Touched = HashMap<String, HashMap<String, Value>>;

impl MoveRun<'_> {
    /// Replays one batch of captured writes on the target, in capture
    /// order: each key written gets its row as the source holds it now
    /// (upserted), or is deleted there if the source has it no more;
    /// deletes children first, then upserts parents first. The captured
    /// keys and their rows are read from one snapshot of the source. A row
    /// read may still not be placeable yet: an order now points at a
    /// payment whose capture lies beyond this batch, and then the order's
    /// items cannot go in either. Such a row is skipped and its captures
    /// are kept, to be replayed again with the next batch; the others are
    /// forgotten. Returns how many captured writes it replayed (the kept
    /// ones not counted: a pause replays until it is 0, and its recheck
    /// finds a row that could never be placed).
    pub async fn apply_changes(&self, touched: &mut Touched) -> Result<usize, sqlx::Error> {
        let m = self.merchant();
        let mut read = TenantTx::begin_snapshot_in_directory(&self.source, m).await?;
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
        for table in &self.tables {
            let Some(keys) = written.get(table.name.as_str()) else {
                continue;
            };
            let rows: Vec<(Value, Value)> = sqlx::query_as(&format!(
                "select {}, to_jsonb({}) from {}",
                table.key_object(),
                table.sql(),
                table.rows_of_keys()
            ))
            .bind(Value::Array(keys.values().map(|k| (*k).clone()).collect()))
            .fetch_all(read.conn())
            .await?;
            let present: HashSet<String> = rows.iter().map(|(k, _)| k.to_string()).collect();
            let gone = keys
                .iter()
                .filter(|(k, _)| !present.contains(*k))
                .map(|(_, key)| (*key).clone())
                .collect();
            now.insert(table.name.as_str(), (rows, gone));
        }
        read.commit().await?;
        let mut tx = self.target_tx().await?;
        for table in self.tables.iter().rev() {
            let Some((_, gone)) = now.get(table.name.as_str()) else {
                continue;
            };
            if gone.is_empty() {
                continue;
            }
            let (t, key) = (table.sql(), table.key_columns());
            sqlx::query(&format!(
                "delete from {t} using jsonb_populate_recordset(null::{t}, $1) k where {} = {}",
                key.row(Some(&t)),
                key.row(Some("k")),
            ))
            .bind(Value::Array(gone.clone()))
            .execute(tx.conn())
            .await?;
        }
        // table → keys (as text) not placed.
        let mut kept: HashMap<&str, HashSet<String>> = HashMap::new();
        for table in &self.tables {
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
            .execute(&self.source)
            .await?;
        Ok(seqs.len())
    }

    /// Replays captured writes until few are left, resting by the duty
    /// cycle (the pause replays without rest).
    pub async fn catch_up(&self, touched: &mut Touched) -> Result<(), MoveError> {
        loop {
            let started = Instant::now();
            let applied = self.apply_changes(touched).await?;
            self.count_applied(applied).await?;
            if applied < CUTOVER_BELOW {
                return Ok(());
            }
            self.pools.rest(started.elapsed()).await;
        }
    }
}

/// Upserts rows; if one cannot be placed yet (a foreign key or unique value
/// that a later replay settles, see `copy` and `apply_changes`), row by row,
/// skipping those. Returns the skipped rows' positions in `rows`.
pub(super) async fn upsert_placeable(
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

/// Writes rows (a JSON array of whole rows) into the table, replacing any
/// with the same key.
async fn upsert(tx: &mut TenantTx, table: &Table, rows: &Value) -> Result<(), sqlx::Error> {
    sqlx::query(&table.upsert_sql(UpsertFrom::JsonRows))
        .bind(rows)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// A foreign key or unique violation: in a copy, a row written since the
/// capture began (see `copy`).
pub(super) fn settled_by_replay(err: &sqlx::Error) -> bool {
    has_sqlstate(err, "23503") || has_sqlstate(err, "23505")
}
