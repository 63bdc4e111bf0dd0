//! Verification, before and in the cutover's pause: counts and checksums
//! of key ranges on both sides (`pgshift::toolkit::count_and_checksum`),
//! then row hashes of what differed, narrowed in rounds until the pause has
//! few keys left to recheck.

use std::collections::HashMap;
use std::time::Instant;

use pgshift::toolkit::count_and_checksum;
use serde_json::Value;
use sqlx::PgPool;

use super::record::{ms, CutoverRecord, NarrowRound};
use super::replay::Touched;
use super::run::{MoveRun, Side};
use super::tables::{KeyRange, Table};
use super::MoveError;
use crate::db::MerchantId;
use crate::db::TenantTx;

/// Keys per range of the verification before the pause.
const VERIFY_CHUNK: i64 = 5000;

/// A key range of one of the run's tables (by its position in them).
pub(super) struct Range {
    table: usize,
    keys: KeyRange,
}

/// Per table, the merchant's row count and a checksum of its rows.
pub async fn checksums(
    pool: &PgPool,
    tables: &[Table],
    m: MerchantId,
) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    let mut sums = Vec::with_capacity(tables.len());
    for table in tables {
        let (rows, sum) = range_sum(pool, table, m, &KeyRange::default()).await?;
        sums.push((table.name.clone(), rows, sum));
    }
    Ok(sums)
}

/// Rows and checksum of the merchant's rows of `table` in a key range.
/// Rows are hashed without `xid` (events' commit position, which is local
/// to a cell: the mover writes 0 there, see migration 0019).
async fn range_sum(
    pool: &PgPool,
    table: &Table,
    m: MerchantId,
    range: &KeyRange,
) -> Result<(i64, String), sqlx::Error> {
    let (filter, params) = table.range_filter(range);
    let sql = count_and_checksum(&table.sql(), &filter, &table.row_hash());
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
    range: &KeyRange,
) -> Result<HashMap<String, (Value, i64)>, sqlx::Error> {
    let (filter, params) = table.range_filter(range);
    let sql = format!(
        "select {}, {} from {} where {filter}",
        table.key_object(),
        table.row_hash(),
        table.sql()
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

impl MoveRun<'_> {
    /// Compares source and target chunk by chunk (ranges of the source's
    /// keys, together covering every key); returns the ranges that differ,
    /// which captured writes not yet replayed explain, to check again in
    /// the pause.
    pub async fn pre_verify(&self) -> Result<Vec<Range>, MoveError> {
        let m = self.merchant();
        let mut dirty = Vec::new();
        for (i, table) in self.tables.iter().enumerate() {
            let mut after: Option<Value> = None;
            loop {
                let started = Instant::now();
                let mut tx = self.read_tx(Side::Source).await?;
                let cursor = after.clone().unwrap_or(Value::Null);
                let (rows, last): (i64, Option<Value>) = sqlx::query_as(&table.next_keys(&cursor))
                    .bind(m.0)
                    .bind(VERIFY_CHUNK)
                    .fetch_one(tx.conn())
                    .await?;
                tx.commit().await?;
                let up_to = if rows < VERIFY_CHUNK { None } else { last };
                let keys = KeyRange {
                    after: after.clone(),
                    up_to: up_to.clone(),
                };
                // One side after the other, not at once: before the pause
                // only the share of the machine the hashing takes counts,
                // not its wall time, and two hashing backends at once take
                // both cores of a small machine from the cells' other
                // merchants.
                let here = range_sum(&self.source, table, m, &keys).await?;
                let there = range_sum(&self.target, table, m, &keys).await?;
                if here != there {
                    dirty.push(Range { table: i, keys });
                }
                match up_to {
                    None => break,
                    Some(last) => after = Some(last),
                }
                // Hashing every row is the copy's cost again: throttled the same way.
                self.pools.rest(started.elapsed()).await;
            }
        }
        Ok(dirty)
    }

    /// Before the pause, in rounds: what differed is checked again after a
    /// catch-up, and only what still differs, with the keys that catch-up
    /// replayed, goes on to the next round, until few keys are left for the
    /// pause to recheck. A chunk that differed is checked row by row, so
    /// only its differing keys go on (a chunk with a random-keyed table's
    /// writes landing in it would differ again every round). A key found
    /// equal stays equal unless it is written again, and then its write is
    /// captured, replayed and checked.
    pub async fn narrow(
        &self,
        touched: &mut Touched,
        mut dirty: Vec<Range>,
        record: &mut CutoverRecord,
    ) -> Result<(), MoveError> {
        /// Keys the pause may recheck.
        const SMALL: usize = 2000;
        const ROUNDS: usize = 8;
        let m = self.merchant();
        for _ in 0..ROUNDS {
            let round = Instant::now();
            let mut fresh = Touched::new();
            self.catch_up(&mut fresh).await?;
            for range in dirty.drain(..) {
                let started = Instant::now();
                let table = &self.tables[range.table];
                // One side after the other (see `pre_verify`).
                let here = range_hashes(&self.source, table, m, &range.keys).await?;
                let there = range_hashes(&self.target, table, m, &range.keys).await?;
                for key in keys_that_differ(&here, &there) {
                    fresh
                        .entry(table.name.clone())
                        .or_default()
                        .insert(key.to_string(), key);
                }
                self.pools.rest(started.elapsed()).await;
            }
            for table in &self.tables {
                let Some(keys) = touched.remove(&table.name) else {
                    continue;
                };
                for key in self.differing(table, keys).await? {
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
        &self,
        table: &Table,
        keys: HashMap<String, Value>,
    ) -> Result<Vec<Value>, sqlx::Error> {
        let sql = format!(
            "select {}, {} from {}",
            table.key_object(),
            table.row_hash(),
            table.rows_of_keys()
        );
        let keys = Value::Array(keys.into_values().collect());
        // Before the pause: one side after the other (see `pre_verify`).
        let here = self.hashes_on_keys(Side::Source, &sql, &keys).await?;
        let there = self.hashes_on_keys(Side::Target, &sql, &keys).await?;
        Ok(keys_that_differ(&here, &there))
    }

    /// In the pause, with every captured write replayed: every key that
    /// differed before or was replayed since must now be equal.
    pub async fn recheck(&self, touched: &Touched) -> Result<(), MoveError> {
        for table in &self.tables {
            let Some(keys) = touched.get(&table.name) else {
                continue;
            };
            let keys = Value::Array(keys.values().cloned().collect());
            let sql = count_and_checksum(&table.rows_of_keys(), "true", &table.row_hash());
            // In the pause both at once: here the wall time is what counts.
            let (here, there) = tokio::try_join!(
                self.sum_on_keys(Side::Source, &sql, &keys),
                self.sum_on_keys(Side::Target, &sql, &keys),
            )?;
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

    /// Key → row hash by `sql` on one side, for the keys in `$1` (a JSON array).
    async fn hashes_on_keys(
        &self,
        side: Side,
        sql: &str,
        keys: &Value,
    ) -> Result<HashMap<String, (Value, i64)>, sqlx::Error> {
        let mut tx = self.read_tx(side).await?;
        let rows: Vec<(Value, i64)> = sqlx::query_as(sql).bind(keys).fetch_all(tx.conn()).await?;
        tx.commit().await?;
        Ok(by_key(rows))
    }

    /// Count and checksum by `sql` on one side, for the keys in `$1`.
    async fn sum_on_keys(
        &self,
        side: Side,
        sql: &str,
        keys: &Value,
    ) -> Result<(i64, String), sqlx::Error> {
        let mut tx = self.read_tx(side).await?;
        let sum = sqlx::query_as(sql).bind(keys).fetch_one(tx.conn()).await?;
        tx.commit().await?;
        Ok(sum)
    }
}
