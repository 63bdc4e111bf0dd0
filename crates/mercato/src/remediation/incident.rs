//! An incident: its window and versions, opened once, found by its id.

use chrono::{DateTime, Utc};
use pricing::CalculatorVersion;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::store;
use super::RemediationError;
use crate::cells::{Cells, MerchantDb};
use crate::db::{MerchantId, TenantTx};

/// An incident as the commands print it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Incident {
    pub id: Uuid,
    pub merchant_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bad_version: String,
    pub fixed_version: String,
    pub scanned: i64,
    pub scan_finished: bool,
    pub reported: bool,
}

/// Opens an incident of `merchant` over `[from, to)`. Refused, with nothing
/// written, for an unknown version, an empty or still open window, or one that
/// overlaps another open incident of the merchant.
pub async fn open(
    db: &MerchantDb,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bad: &str,
    fixed: &str,
) -> Result<Uuid, RemediationError> {
    let merchant = db.merchant();
    let version = |flag: &str, raw: &str| {
        raw.parse::<CalculatorVersion>()
            .map_err(|e| RemediationError::UnknownVersion(format!("{flag}: {e}")))
    };
    let bad = version("--bad-version", bad)?;
    let fixed = version("--fixed-version", fixed)?;
    if fixed.is_withdrawn() {
        return Err(RemediationError::UnknownVersion(format!(
            "--fixed-version: {fixed} is withdrawn; the fix must be a version in force"
        )));
    }
    if from >= to {
        return Err(RemediationError::EmptyWindow(
            "--from must be before --to".into(),
        ));
    }
    if to > Utc::now() {
        return Err(RemediationError::StillOpen(to));
    }
    let mut tx = db.begin().await?;
    if crate::checkout::count_confirmed_between(&mut tx, from, to).await? == 0 {
        return Err(RemediationError::EmptyWindow(format!(
            "no confirmed orders of merchant {merchant} were placed from {from} to {to}"
        )));
    }
    store::lock_incidents(&mut tx).await?;
    if let Some(other) = store::overlapping_open(&mut tx, from, to).await? {
        return Err(RemediationError::Overlaps(other));
    }
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    store::insert_incident(&mut tx, id, from, to, bad.as_str(), fixed.as_str(), &secret).await?;
    tx.commit().await?;
    Ok(id)
}

/// The database of the merchant whose incident `id` is (the commands name
/// only the incident): the cell that serves the merchant and holds the
/// incident. A cell a move left a copy in (`--keep-source`) does not count.
pub async fn merchant_of(cells: &Cells, id: Uuid) -> Result<MerchantDb, RemediationError> {
    cells
        .merchant_db_holding(|pool| async move {
            Ok(store::merchant_of_incident(&pool, id)
                .await?
                .map(MerchantId))
        })
        .await?
        .ok_or(RemediationError::NotFound(id))
}

pub(super) async fn incident_row(
    tx: &mut TenantTx,
    id: Uuid,
) -> Result<store::IncidentRow, RemediationError> {
    store::incident(tx, id)
        .await?
        .ok_or(RemediationError::NotFound(id))
}

pub async fn incident(db: &MerchantDb, id: Uuid) -> Result<Incident, RemediationError> {
    let merchant = db.merchant();
    let mut tx = db.begin().await?;
    let row = incident_row(&mut tx, id).await?;
    tx.commit().await?;
    let reported = row.reported();
    Ok(Incident {
        id: row.id,
        merchant_id: merchant.0,
        from: row.window_from,
        to: row.window_to,
        bad_version: row.bad_version,
        fixed_version: row.fixed_version,
        scanned: row.scanned,
        scan_finished: row.scan_finished_at.is_some(),
        reported,
    })
}
