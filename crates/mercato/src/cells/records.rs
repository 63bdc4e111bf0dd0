//! What the directory can say of a merchant: its cell, and its moves as
//! recorded (the admin API and the merchant view show them).

use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::MerchantId;

/// A move and how far it got.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct MoveRecord {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub source: String,
    pub target: String,
    /// `copying`, `catching_up`, `cutting_over`, `moved`, `cleaned`,
    /// `aborted` or `rolled_back`.
    pub phase: String,
    pub rows_copied: i64,
    pub changes_applied: i64,
    pub rows_cleaned: i64,
    /// The merchant's write pause at the cutover, once cut over.
    pub pause_ms: Option<f64>,
    pub keep_source: bool,
    /// `api`: `serve` drives it; `cli`: a `mercato tenants` command does.
    pub driven_by: String,
    /// For a rollback: the move it undoes.
    pub rollback_of: Option<Uuid>,
    /// Why the move stopped last (it is tried again); `null` once it goes on.
    pub last_error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A move of the merchant, as recorded in the main database's directory
/// (read through `mercato_moves_of`: the app role has no grant on the table).
pub async fn move_record(
    directory: &PgPool,
    merchant: MerchantId,
    id: Uuid,
) -> Result<Option<MoveRecord>, sqlx::Error> {
    sqlx::query_as(
        "select id, merchant_id, source, target, phase, rows_copied, changes_applied, rows_cleaned,
                pause_ms, keep_source, driven_by, rollback_of, last_error, started_at, finished_at
         from mercato_moves_of($2) where id = $1",
    )
    .bind(id)
    .bind(merchant.0)
    .fetch_optional(directory)
    .await
}
