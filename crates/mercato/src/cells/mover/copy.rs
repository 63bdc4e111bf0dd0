//! Step 1's copy: every tenant table's rows of the merchant, parents first,
//! in keyset batches (windows of `pgshift::toolkit::Key`), each read in a
//! short transaction of its own and sent as binary `COPY`.

use std::time::Instant;

use pgshift::toolkit::{column_list, has_sqlstate};
use serde_json::Value;

use super::cleanup::Leftover;
use super::replay::{settled_by_replay, upsert_placeable};
use super::run::{MoveRun, Side};
use super::tables::{Table, UpsertFrom};
use super::{MoveError, BATCH};

impl MoveRun<'_> {
    /// Copies every tenant table's rows of the merchant in keyset batches,
    /// each read in a short transaction of its own. Not from one snapshot: a
    /// transaction held open for the whole copy keeps every row version
    /// since its start alive, in both databases' tables, and the hot rows
    /// that every checkout updates (stock, of every merchant) grow version
    /// chains that slow each update; on this machine it tripled the
    /// neighbour's p99. Without it the copy is a mix of moments, and that
    /// is made whole by the capture: it started before the first batch, so
    /// every row written since is replayed afterwards, last write last. A
    /// row the copy cannot place yet (its parent, or the holder of one of
    /// its unique values, is not in the target in the state it has now) was
    /// therefore written during the copy: it is skipped here and arrives
    /// with the replay. The cursor (table, last key) is recorded with each
    /// batch: a copy cut off by a crash goes on from it.
    pub async fn copy(&self) -> Result<(), MoveError> {
        let m = self.merchant();
        let (copied_before, cursor_table, cursor_key) = self.copy_cursor().await?;
        let resume_at = match &cursor_table {
            Some(name) => self.tables.iter().position(|t| &t.name == name),
            None => None,
        };
        if resume_at.is_none() {
            // A fresh copy: whatever an earlier, unrecorded attempt left goes.
            self.delete_copy(Leftover::EarlierCopy).await?;
        }
        let mut total = 0u64;
        for table in &self.tables {
            let mut tx = self.read_tx(Side::Source).await?;
            let n: i64 = sqlx::query_scalar(&format!(
                "select count(*) from {} where merchant_id = $1",
                table.sql()
            ))
            .bind(m.0)
            .fetch_one(tx.conn())
            .await?;
            tx.commit().await?;
            total += n as u64;
        }
        self.progress.copy_total(total);
        let mut copied = if resume_at.is_some() {
            copied_before
        } else {
            0
        };
        self.progress.copied(copied as u64);
        for (i, table) in self.tables.iter().enumerate() {
            let mut cursor = match resume_at {
                Some(at) if i < at => continue,
                Some(at) if i == at => cursor_key.clone().unwrap_or(Value::Null),
                _ => Value::Null,
            };
            loop {
                let started = Instant::now();
                let (batch, last) = match self.copy_batch(table, &cursor).await {
                    Err(e) if settled_by_replay(&e) || binary_form_differs(&e) => {
                        self.copy_batch_as_json(table, &cursor).await?
                    }
                    done => done?,
                };
                if batch == 0 {
                    break;
                }
                copied += batch as i64;
                cursor = last;
                self.save_copy_cursor(copied, &table.name, &cursor).await?;
                self.progress.copied(batch as u64);
                if (batch as i64) < BATCH {
                    break;
                }
                self.pools.rest(started.elapsed()).await;
            }
        }
        Ok(())
    }

    /// The next batch of the copy (up to `BATCH` rows after `cursor`,
    /// `null`: from the start) through binary `COPY`: the source's bytes go
    /// to the target as they are, with no JSON made, parsed or sent. Returns
    /// the rows the batch covered and its last key. A foreign key or unique
    /// violation (see `copy`) is returned for the caller to copy the batch
    /// row by row.
    async fn copy_batch(
        &self,
        table: &Table,
        cursor: &Value,
    ) -> Result<(usize, Value), sqlx::Error> {
        let m = self.merchant();
        let mut read = self.read_tx(Side::Source).await?;
        let (rows, last): (i64, Option<Value>) = sqlx::query_as(&table.next_keys(cursor))
            .bind(m.0)
            .bind(BATCH)
            .fetch_one(read.conn())
            .await?;
        let Some(last) = last else {
            read.commit().await?;
            return Ok((0, Value::Null));
        };
        let (t, key, cols) = (
            table.sql(),
            column_list(&table.key, None),
            column_list(&table.columns, None),
        );
        let mut bytes = Vec::new();
        {
            let mut out = read
                .conn()
                .copy_out_raw(&format!(
                    "copy (select {cols} from {t} where merchant_id = '{}' {} and {}
                     order by {key}) to stdout (format binary)",
                    m.0,
                    table.after_cursor(cursor),
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
        let mut tx = self.target_tx().await?;
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
        sqlx::query(&table.upsert_sql(UpsertFrom::CopiedBatch))
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok((rows as usize, last))
    }

    /// The batch after `cursor` read as JSON and placed row by row where a
    /// row cannot be placed yet (the slow path of `copy_batch`).
    async fn copy_batch_as_json(
        &self,
        table: &Table,
        cursor: &Value,
    ) -> Result<(usize, Value), sqlx::Error> {
        let (t, key) = (table.sql(), column_list(&table.key, None));
        let mut read = self.read_tx(Side::Source).await?;
        let rows: Value = sqlx::query_scalar(&format!(
            "select coalesce(jsonb_agg(to_jsonb(b) order by {key}), '[]') from
             (select * from {t} where merchant_id = $1 {} order by {key} limit $2) b",
            table.after_cursor(cursor)
        ))
        .bind(self.merchant().0)
        .bind(BATCH)
        .fetch_one(read.conn())
        .await?;
        read.commit().await?;
        let placed = rows.as_array().map(Vec::as_slice).unwrap_or_default();
        if !placed.is_empty() {
            // Writes the rows it can place (see `upsert_placeable`).
            let mut tx = self.target_tx().await?;
            upsert_placeable(&mut tx, table, placed).await?;
            tx.commit().await?;
        }
        let last = placed.last().cloned().unwrap_or(Value::Null);
        Ok((placed.len(), last))
    }
}

/// Binary `COPY` names array elements and composite fields by type oid,
/// which a type made by `CREATE TYPE` has its own of in each cluster (none
/// of Mercato's tables has such a column today): those batches go as JSON.
fn binary_form_differs(err: &sqlx::Error) -> bool {
    has_sqlstate(err, "42804") || has_sqlstate(err, "22P03")
}
