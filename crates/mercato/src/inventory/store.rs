//! Stock and reservation SQL.
//!
//! Invariant, enforced by a CHECK constraint as well as by this code:
//! `0 <= reserved <= on_hand` on every stock row. A reservation moves units from
//! available to reserved; settling it once (release, expiry or consumption by an
//! order) moves them back or out. Settling is a conditional update of the
//! reservation's status, so it happens at most once whoever tries.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{allocate_carts_in_order, Line, ReservationStatus};
use crate::catalog::{self, Sku};
use crate::db::{violates, TenantTx};
use crate::tenancy::{MerchantId, Rotation};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("SKU {0:?} is not in the catalog")]
    UnknownSku(String),
    #[error("SKU {sku:?} has {reserved} units reserved; on_hand cannot go below that")]
    BelowReserved { sku: String, reserved: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Why units could not be reserved. `line` is the index of the request line
/// concerned, once known (see `ReserveError::locate`).
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("SKU {sku:?} is out of stock")]
    OutOfStock { sku: String, line: Option<usize> },
    #[error("SKU {sku:?} is not in the catalog")]
    UnknownSku { sku: String, line: Option<usize> },
    #[error("too many requests are queued for this SKU")]
    Busy,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl ReserveError {
    pub fn out_of_stock(sku: &str) -> Self {
        ReserveError::OutOfStock {
            sku: sku.into(),
            line: None,
        }
    }

    pub fn unknown_sku(sku: &str) -> Self {
        ReserveError::UnknownSku {
            sku: sku.into(),
            line: None,
        }
    }

    /// Names the line of `lines` whose SKU this error is about.
    pub fn locate(self, lines: &[Line]) -> Self {
        let find = |sku: &str| lines.iter().position(|l| l.sku.as_str() == sku);
        match self {
            ReserveError::OutOfStock { line: None, sku } => ReserveError::OutOfStock {
                line: find(&sku),
                sku,
            },
            ReserveError::UnknownSku { line: None, sku } => ReserveError::UnknownSku {
                line: find(&sku),
                sku,
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StockLevel {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    /// A sale that takes `on_hand` down to this emits `inventory.low_stock` (absent: none set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_stock_threshold: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReservedItem {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reservation {
    pub id: Uuid,
    pub status: ReservationStatus,
    pub expires_at: DateTime<Utc>,
    pub items: Vec<ReservedItem>,
}

/// What settling a reservation does with its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Back to available (the buyer let go).
    Released,
    /// Back to available (the TTL ran out).
    Expired,
    /// Sold: out of on_hand and reserved both, once `fold_sales` folds it.
    Consumed,
}

impl Settlement {
    fn status(self) -> ReservationStatus {
        match self {
            Settlement::Released => ReservationStatus::Released,
            Settlement::Expired => ReservationStatus::Expired,
            Settlement::Consumed => ReservationStatus::Consumed,
        }
    }
}

/// Sets a SKU's units on hand, and its low-stock threshold when one is given
/// (`None` keeps the one set before).
pub async fn set_on_hand(
    tx: &mut TenantTx,
    sku: &Sku,
    on_hand: i64,
    low_stock_threshold: Option<i64>,
) -> Result<StockLevel, InventoryError> {
    let merchant = tx.merchant_id().0;
    // On hand is what the merchant counts now: sales not yet folded are gone from it.
    fold_sales(tx.conn(), MerchantId(merchant), &[sku.as_str().to_owned()]).await?;
    // The `where` turns "below reserved" into no row rather than an aborted transaction.
    let row = sqlx::query_as!(
        StockLevel,
        r#"insert into stock (merchant_id, sku, on_hand, low_stock_threshold) values ($1, $2, $3, $4)
         on conflict (merchant_id, sku) do update
            set on_hand = excluded.on_hand,
                low_stock_threshold = coalesce($4, stock.low_stock_threshold),
                updated_at = now()
         where stock.reserved <= excluded.on_hand
         returning sku, on_hand, reserved, on_hand - reserved as "available!", low_stock_threshold"#,
        merchant,
        sku.as_str(),
        on_hand,
        low_stock_threshold,
    )
    .fetch_optional(tx.conn())
    .await;
    match row {
        Ok(Some(level)) => Ok(level),
        Ok(None) => {
            let reserved = get_stock(tx, sku).await?.map(|s| s.reserved).unwrap_or(0);
            Err(InventoryError::BelowReserved {
                sku: sku.as_str().into(),
                reserved,
            })
        }
        Err(e) if violates(&e, "stock_merchant_id_sku_fkey") => {
            Err(InventoryError::UnknownSku(sku.as_str().into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The stock of a catalog SKU (zero if never set); `None` for a SKU not in the catalog.
pub async fn get_stock(tx: &mut TenantTx, sku: &Sku) -> Result<Option<StockLevel>, sqlx::Error> {
    let level = sqlx::query_as!(
        StockLevel,
        r#"select sku as "sku!", on_hand as "on_hand!", reserved as "reserved!",
                  available as "available!", low_stock_threshold
         from stock_levels where merchant_id = $1 and sku = $2"#,
        tx.merchant_id().0,
        sku.as_str(),
    )
    .fetch_optional(tx.conn())
    .await?;
    if level.is_some() {
        return Ok(level);
    }
    // A stock row exists only for a catalog SKU (foreign key): without one, ask the catalog.
    Ok(catalog::sku_exists(tx, sku.as_str())
        .await?
        .then(|| StockLevel {
            sku: sku.as_str().into(),
            on_hand: 0,
            reserved: 0,
            available: 0,
            low_stock_threshold: None,
        }))
}

/// Units available to order (on hand less reserved) of `skus`; a SKU
/// without a stock row has none.
pub async fn available_units(
    tx: &mut TenantTx,
    skus: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select sku as "sku!", available as "available!" from stock_levels
           where merchant_id = $1 and sku = any($2)"#,
        tx.merchant_id().0,
        skus,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.into_iter().map(|r| (r.sku, r.available)).collect())
}

/// Units reserved on `skus`, with their stock rows locked until the transaction
/// ends (so nothing can be reserved between this check and what follows it).
pub async fn lock_reserved_units(tx: &mut TenantTx, skus: &[String]) -> Result<i64, sqlx::Error> {
    let merchant = tx.merchant_id();
    let reserved = sqlx::query_scalar!(
        "select reserved from stock where merchant_id = $1 and sku = any($2) order by sku for update",
        merchant.0,
        skus,
    )
    .fetch_all(tx.conn())
    .await?;
    // Sold units are not reserved ones: fold them out (the rows are locked).
    let sold = fold_sales(tx.conn(), merchant, skus).await?;
    Ok(reserved.iter().sum::<i64>() - sold)
}

/// Why a SKU could not be reserved: not in the catalog, or not enough of it.
async fn shortage(tx: &mut TenantTx, sku: &str) -> ReserveError {
    match catalog::sku_exists(tx, sku).await {
        Ok(true) => ReserveError::out_of_stock(sku),
        Ok(false) => ReserveError::unknown_sku(sku),
        Err(e) => e.into(),
    }
}

/// Lines in SKU order: every path that locks several stock rows takes them in
/// this order, so concurrent multi-SKU requests cannot deadlock.
fn in_sku_order(lines: &[Line]) -> Vec<&Line> {
    let mut sorted: Vec<&Line> = lines.iter().collect();
    sorted.sort_by(|a, b| a.sku.as_str().cmp(b.sku.as_str()));
    sorted
}

/// Pessimistic: lock the stock rows (in SKU order, so concurrent buyers of
/// several SKUs cannot deadlock), check, then take.
pub async fn reserve_locking(
    tx: &mut TenantTx,
    lines: &[Line],
    ttl_seconds: i64,
) -> Result<Reservation, ReserveError> {
    let merchant = tx.merchant_id();
    let sorted = in_sku_order(lines);
    let skus: Vec<&str> = sorted.iter().map(|l| l.sku.as_str()).collect();
    let rows = sqlx::query!(
        r#"select sku, on_hand - reserved as "available!" from stock
         where merchant_id = $1 and sku = any($2)
         order by sku for update"#,
        merchant.0,
        &skus as &[&str],
    )
    .fetch_all(tx.conn())
    .await?;
    for line in &sorted {
        let available = rows
            .iter()
            .find(|row| row.sku == line.sku.as_str())
            .map(|row| row.available);
        if available.is_none_or(|a| a < line.quantity) {
            return Err(shortage(tx, line.sku.as_str()).await);
        }
    }
    let quantities: Vec<i64> = sorted.iter().map(|l| l.quantity).collect();
    sqlx::query!(
        "update stock s set reserved = s.reserved + x.quantity, updated_at = now()
         from unnest($2::text[], $3::bigint[]) as x(sku, quantity)
         where s.merchant_id = $1 and s.sku = x.sku",
        merchant.0,
        &skus as &[&str],
        &quantities,
    )
    .execute(tx.conn())
    .await?;
    insert_reservation(tx.conn(), merchant, Uuid::now_v7(), lines, ttl_seconds).await
}

/// Optimistic: one conditional update per SKU (in SKU order); the row count decides.
pub async fn reserve_conditional(
    tx: &mut TenantTx,
    lines: &[Line],
    ttl_seconds: i64,
) -> Result<Reservation, ReserveError> {
    let merchant = tx.merchant_id();
    let sorted = in_sku_order(lines);
    for line in sorted {
        let taken = sqlx::query!(
            "update stock set reserved = reserved + $3, updated_at = now()
             where merchant_id = $1 and sku = $2 and on_hand - reserved >= $3",
            merchant.0,
            line.sku.as_str(),
            line.quantity,
        )
        .execute(tx.conn())
        .await?;
        if taken.rows_affected() == 0 {
            return Err(shortage(tx, line.sku.as_str()).await);
        }
    }
    insert_reservation(tx.conn(), merchant, Uuid::now_v7(), lines, ttl_seconds).await
}

/// One waiter of a FIFO admission batch: a cart, all of it or nothing.
pub struct BatchRequest {
    pub id: Uuid,
    /// No SKU twice (as `parse_lines` guarantees).
    pub lines: Vec<Line>,
    pub ttl_seconds: i64,
}

/// Grants a batch of requests (carts of one or several SKUs) across the
/// merchant's SKUs in a few statements whatever their number: the stock rows
/// locked in SKU order (so concurrent batches cannot deadlock), the sales
/// confirmed since the last batch folded into them (`fold_sales`: the rows are
/// locked anyway), then every request in arrival order whose lines all fit
/// in what is left (`allocate_carts_in_order`); the others get `OutOfStock`
/// (or `UnknownSku`) naming a line that did not fit. Answers in the batch's
/// order. Nothing is returned before the transaction commits.
pub async fn grant_batch(
    tx: &mut TenantTx,
    batch: &[&BatchRequest],
) -> Result<Vec<Result<Reservation, ReserveError>>, sqlx::Error> {
    let merchant = tx.merchant_id();
    let skus: Vec<String> = batch
        .iter()
        .flat_map(|r| r.lines.iter().map(|l| l.sku.as_str().to_owned()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let index = |sku: &Sku| skus.binary_search_by(|s| s.as_str().cmp(sku.as_str())).ok();
    let locked = sqlx::query!(
        r#"select sku, on_hand - reserved as "available!" from stock
         where merchant_id = $1 and sku = any($2) order by sku for update"#,
        merchant.0,
        &skus,
    )
    .fetch_all(tx.conn())
    .await?;
    fold_sales(tx.conn(), merchant, &skus).await?;
    let stocked: Vec<Option<i64>> = skus
        .iter()
        .map(|sku| locked.iter().find(|r| &r.sku == sku).map(|r| r.available))
        .collect();
    let available: Vec<i64> = stocked.iter().map(|a| a.unwrap_or(0)).collect();
    let carts: Vec<Vec<(usize, i64)>> = batch
        .iter()
        .map(|r| {
            r.lines
                .iter()
                .filter_map(|l| index(&l.sku).map(|i| (i, l.quantity)))
                .collect()
        })
        .collect();
    let granted = allocate_carts_in_order(&available, &carts);

    let mut taken = vec![0i64; skus.len()];
    let (mut ids, mut ttls) = (Vec::new(), Vec::new());
    let (mut item_ids, mut item_skus, mut quantities) = (Vec::new(), Vec::new(), Vec::new());
    for ((r, cart), _) in batch.iter().zip(&carts).zip(&granted).filter(|(_, g)| **g) {
        ids.push(r.id);
        ttls.push(r.ttl_seconds as f64);
        for (line, &(i, q)) in r.lines.iter().zip(cart) {
            taken[i] += q;
            item_ids.push(r.id);
            item_skus.push(line.sku.as_str().to_owned());
            quantities.push(q);
        }
    }
    let mut expiries = std::collections::HashMap::new();
    if !ids.is_empty() {
        let (take_skus, take_units): (Vec<String>, Vec<i64>) = skus
            .iter()
            .zip(&taken)
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s.clone(), *n))
            .unzip();
        // The rows are locked, so this cannot fail on stock; the condition guards
        // against a future change of the code above all the same.
        let updated = sqlx::query!(
            "update stock s set reserved = s.reserved + x.units, updated_at = now()
             from unnest($2::text[], $3::bigint[]) as x(sku, units)
             where s.merchant_id = $1 and s.sku = x.sku and s.on_hand - s.reserved >= x.units",
            merchant.0,
            &take_skus,
            &take_units,
        )
        .execute(tx.conn())
        .await?;
        if updated.rows_affected() != take_skus.len() as u64 {
            return Err(sqlx::Error::Protocol(
                "stock changed under a row lock".into(),
            ));
        }
        let rows = sqlx::query!(
            "insert into reservations (merchant_id, id, expires_at)
             select $1, x.id, now() + make_interval(secs => x.ttl)
             from unnest($2::uuid[], $3::float8[]) as x(id, ttl)
             returning id, expires_at",
            merchant.0,
            &ids,
            &ttls,
        )
        .fetch_all(tx.conn())
        .await?;
        sqlx::query!(
            "insert into reservation_items (merchant_id, reservation_id, sku, quantity)
             select $1, x.id, x.sku, x.quantity
             from unnest($2::uuid[], $3::text[], $4::bigint[]) as x(id, sku, quantity)",
            merchant.0,
            &item_ids,
            &item_skus,
            &quantities,
        )
        .execute(tx.conn())
        .await?;
        expiries.extend(rows.into_iter().map(|r| (r.id, r.expires_at)));
    }
    let mut answers = Vec::with_capacity(batch.len());
    for (r, granted) in batch.iter().zip(granted) {
        if let (true, Some(expires_at)) = (granted, expiries.get(&r.id)) {
            answers.push(Ok(Reservation {
                id: r.id,
                status: ReservationStatus::Active,
                expires_at: *expires_at,
                items: r
                    .lines
                    .iter()
                    .map(|l| ReservedItem {
                        sku: l.sku.as_str().into(),
                        quantity: l.quantity,
                    })
                    .collect(),
            }));
            continue;
        }
        // A line without a stock row (not in the catalog, or never stocked), or
        // one that asks for more than the grants before it left.
        let blamed = r
            .lines
            .iter()
            .find(|l| index(&l.sku).is_none_or(|i| stocked[i].is_none()))
            .or_else(|| {
                r.lines
                    .iter()
                    .find(|l| index(&l.sku).is_some_and(|i| l.quantity > available[i] - taken[i]))
            })
            .or(r.lines.first());
        answers.push(Err(match blamed {
            Some(line) => match index(&line.sku).and_then(|i| stocked[i]) {
                Some(_) => ReserveError::out_of_stock(line.sku.as_str()),
                None => shortage(tx, line.sku.as_str()).await,
            },
            None => ReserveError::Db(sqlx::Error::Protocol("an empty cart".into())),
        }));
    }
    Ok(answers)
}

async fn insert_reservation(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: Uuid,
    lines: &[Line],
    ttl_seconds: i64,
) -> Result<Reservation, ReserveError> {
    let expires_at = sqlx::query_scalar!(
        "insert into reservations (merchant_id, id, expires_at)
         values ($1, $2, now() + make_interval(secs => $3)) returning expires_at",
        merchant.0,
        id,
        ttl_seconds as f64,
    )
    .fetch_one(&mut *conn)
    .await?;
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    sqlx::query!(
        "insert into reservation_items (merchant_id, reservation_id, sku, quantity)
         select $1, $2, x.sku, x.quantity from unnest($3::text[], $4::bigint[]) as x(sku, quantity)",
        merchant.0,
        id,
        &skus as &[&str],
        &quantities,
    )
    .execute(&mut *conn)
    .await?;
    Ok(Reservation {
        id,
        status: ReservationStatus::Active,
        expires_at,
        items: lines
            .iter()
            .map(|l| ReservedItem {
                sku: l.sku.as_str().into(),
                quantity: l.quantity,
            })
            .collect(),
    })
}

pub async fn get_reservation(
    tx: &mut TenantTx,
    id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    let merchant = tx.merchant_id().0;
    let head = sqlx::query!(
        r#"select status as "status: ReservationStatus", expires_at
         from reservations where merchant_id = $1 and id = $2"#,
        merchant,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    let Some(head) = head else {
        return Ok(None);
    };
    let items = sqlx::query_as!(
        ReservedItem,
        "select sku, quantity from reservation_items where merchant_id = $1 and reservation_id = $2 order by sku",
        merchant,
        id,
    )
    .fetch_all(tx.conn())
    .await?;
    Ok(Some(Reservation {
        id,
        status: head.status,
        expires_at: head.expires_at,
        items,
    }))
}

/// Settles an active reservation once: `true` if this call settled it, `false`
/// if it was not active (already settled by someone else, or unknown).
pub(crate) async fn settle(
    conn: &mut PgConnection,
    merchant: MerchantId,
    id: Uuid,
    how: Settlement,
) -> Result<bool, sqlx::Error> {
    let settled = sqlx::query!(
        "update reservations set status = $3, settled_at = now()
         where merchant_id = $1 and id = $2 and status = 'active'",
        merchant.0,
        id,
        how.status().as_str(),
    )
    .execute(&mut *conn)
    .await?;
    if settled.rows_affected() == 0 {
        return Ok(false);
    }
    if how == Settlement::Consumed {
        // The sale is recorded on its own rows, not on the SKU's stock row
        // (the hot row): `fold_sales` moves it into `stock` in batches.
        sqlx::query!(
            "insert into stock_sales (merchant_id, sku, reservation_id, quantity)
             select merchant_id, sku, reservation_id, quantity from reservation_items
             where merchant_id = $1 and reservation_id = $2",
            merchant.0,
            id,
        )
        .execute(&mut *conn)
        .await?;
        return Ok(true);
    }
    sqlx::query!(
        "update stock s set reserved = s.reserved - i.quantity, updated_at = now()
         from reservation_items i
         where i.merchant_id = $1 and i.reservation_id = $2
           and s.merchant_id = i.merchant_id and s.sku = i.sku",
        merchant.0,
        id,
    )
    .execute(&mut *conn)
    .await?;
    if how == Settlement::Expired {
        crate::events::emit_on(
            conn,
            merchant,
            crate::events::EventType::ReservationExpired,
            serde_json::json!({"reservation_id": id}),
        )
        .await?;
    }
    Ok(true)
}

/// Settles a reservation within the tenant's transaction.
pub async fn settle_reservation(
    tx: &mut TenantTx,
    id: Uuid,
    how: Settlement,
) -> Result<bool, sqlx::Error> {
    let merchant = tx.merchant_id();
    settle(tx.conn(), merchant, id, how).await
}

/// Puts `units` (sku, quantity) back on hand: an order cancelled, units
/// returned. A SKU without a stock row (deleted since) takes nothing back.
pub async fn restock(tx: &mut TenantTx, units: &[(String, i64)]) -> Result<(), sqlx::Error> {
    let skus: Vec<&str> = units.iter().map(|(s, _)| s.as_str()).collect();
    let quantities: Vec<i64> = units.iter().map(|(_, q)| *q).collect();
    sqlx::query!(
        "update stock s set on_hand = s.on_hand + x.quantity, updated_at = now()
         from unnest($2::text[], $3::bigint[]) as x (sku, quantity)
         where s.merchant_id = $1 and s.sku = x.sku",
        tx.merchant_id().0,
        &skus as &[&str],
        &quantities,
    )
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Marks an active reservation as held by an order: from now on only that
/// order's checkout settles it (consumed when it is confirmed, released when it
/// fails), never the expiry worker. `false` if the reservation is not active.
pub async fn hold_for_order(
    tx: &mut TenantTx,
    reservation: Uuid,
    order: Uuid,
) -> Result<bool, sqlx::Error> {
    let held = sqlx::query!(
        "update reservations set held_by_order = $3
         where merchant_id = $1 and id = $2 and status = 'active'",
        tx.merchant_id().0,
        reservation,
        order,
    )
    .execute(tx.conn())
    .await?;
    Ok(held.rows_affected() == 1)
}

/// Folds the confirmed sales of `skus` into their stock rows: `on_hand` and
/// `reserved` both go down by their units, in one statement with the sales'
/// removal, so every sale is folded exactly once (a concurrent fold waits for
/// the rows it would delete, then skips them). Takes the stock rows' locks:
/// callers that already hold them (an admission batch) pay nothing more; the
/// others hold at most one SKU's, or take them in SKU order first. Emits
/// `inventory.low_stock` for each SKU the fold takes down to its threshold.
/// Returns the units folded.
pub(crate) async fn fold_sales(
    conn: &mut PgConnection,
    merchant: MerchantId,
    skus: &[String],
) -> Result<i64, sqlx::Error> {
    let folded = sqlx::query!(
        r#"with sold as (
               delete from stock_sales where merchant_id = $1 and sku = any($2) returning sku, quantity
           ), batch as (
               select sku, sum(quantity)::bigint as units from sold group by sku
           )
           update stock s set reserved = s.reserved - batch.units,
                              on_hand = s.on_hand - batch.units,
                              updated_at = now()
           from batch
           where s.merchant_id = $1 and s.sku = batch.sku
           returning s.sku, s.on_hand, s.low_stock_threshold, batch.units as "units!",
                     coalesce(s.on_hand <= s.low_stock_threshold
                              and s.on_hand + batch.units > s.low_stock_threshold, false) as "crossed!""#,
        merchant.0,
        skus,
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in folded.iter().filter(|r| r.crossed) {
        crate::events::emit_on(
            conn,
            merchant,
            crate::events::EventType::InventoryLowStock,
            serde_json::json!({"sku": row.sku, "on_hand": row.on_hand,
                               "threshold": row.low_stock_threshold}),
        )
        .await?;
    }
    Ok(folded.iter().map(|r| r.units).sum())
}

/// The background fold (worker role, across merchants): folds the sales of up
/// to `limit` SKUs, each in its own transaction. A SKU whose stock row is
/// locked is skipped: whoever holds it (an admission batch) folds it anyway,
/// or the next round does.
pub async fn fold_pending_sales(pool: &sqlx::PgPool, limit: i64) -> Result<i64, sqlx::Error> {
    let skus = sqlx::query!(
        "select distinct merchant_id, sku from stock_sales limit $1",
        limit,
    )
    .fetch_all(pool)
    .await?;
    let mut folded = 0;
    for row in skus {
        let mut tx = pool.begin().await?;
        let free = sqlx::query_scalar!(
            "select 1 as one from stock where merchant_id = $1 and sku = $2 for update skip locked",
            row.merchant_id,
            row.sku,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if free.is_some() {
            folded += fold_sales(&mut tx, MerchantId(row.merchant_id), &[row.sku]).await?;
        }
        tx.commit().await?;
    }
    Ok(folded)
}

/// Expires up to `limit` reservations past their TTL, across merchants in
/// turns (worker role): each merchant with due reservations gets an equal share
/// of the batch, merchants taken from where `rotation` left off, so one
/// merchant's backlog never holds back another's expiries. Reservations held
/// by an order are left to its checkout (and the saga recovery), which settles
/// them one way or the other. Safe to run in several processes: claimed rows
/// are locked and skipped by the others. Returns how many expired and how many
/// were due in the batch (more may be waiting when it was full).
pub async fn expire_due_reservations(
    conn: &mut PgConnection,
    limit: i64,
    rotation: &mut Rotation,
) -> Result<(u64, usize), sqlx::Error> {
    let due = sqlx::query!(
        r#"with recursive active (merchant_id) as (
               -- One index probe per merchant with active reservations.
               (select merchant_id from reservations where status = 'active'
                order by merchant_id limit 1)
               union all
               select (select r.merchant_id from reservations r
                       where r.status = 'active' and r.merchant_id > a.merchant_id
                       order by r.merchant_id limit 1)
               from active a where a.merchant_id is not null
           ), waiting as (
               select a.merchant_id, count(*) over () as merchants
               from active a
               where a.merchant_id is not null
                 and exists (select 1 from reservations r
                             where r.merchant_id = a.merchant_id and r.status = 'active'
                               and r.expires_at < now() and r.held_by_order is null)
               order by a.merchant_id <= $2, a.merchant_id
           )
           select r.merchant_id as "merchant_id!", r.id as "id!", w.merchants as "merchants!"
           from waiting w, lateral (
               select r.merchant_id, r.id from reservations r
               where r.merchant_id = w.merchant_id and r.status = 'active'
                 and r.expires_at < now() and r.held_by_order is null
               order by r.expires_at
               limit ceil($1::bigint / w.merchants::float8)::bigint
               for update skip locked
           ) r
           limit $1"#,
        limit,
        rotation.after(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let merchants: Vec<MerchantId> = due.iter().map(|r| MerchantId(r.merchant_id)).collect();
    rotation.served(&merchants, due.first().map_or(0, |r| r.merchants as usize));
    let mut expired = 0;
    for r in &due {
        if settle(conn, MerchantId(r.merchant_id), r.id, Settlement::Expired).await? {
            expired += 1;
        }
    }
    Ok((expired, due.len()))
}
