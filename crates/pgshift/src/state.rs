//! pgshift's own schema: one row per migration with its phase, backfill cursor
//! and read-switch percentage, the expand steps already run, plus shadow-read
//! counts and samples. Every statement on these tables is in this file.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use sqlx::{FromRow, PgConnection, PgPool};

use crate::{Error, Position};

/// Where a migration stands. Phases only move forward, except `abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Planned,
    /// New shape created; writers dual-write from here on.
    Expanded,
    /// Every old row copied; reads may switch.
    Backfilled,
    /// Validation passed (counts and checksums per key range).
    Validated,
    /// Writers have stopped touching the old shape; it is being dropped.
    Contracting,
    Contracted,
    Aborted,
}

/// Text in `pgshift.migrations.phase` that names no [`Phase`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown phase '{0}'")]
pub struct UnknownPhase(pub String);

impl Phase {
    /// Every phase; the `migrations_phase_known` constraint admits exactly these.
    pub const ALL: [Phase; 7] = [
        Phase::Planned,
        Phase::Expanded,
        Phase::Backfilled,
        Phase::Validated,
        Phase::Contracting,
        Phase::Contracted,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Expanded => "expanded",
            Phase::Backfilled => "backfilled",
            Phase::Validated => "validated",
            Phase::Contracting => "contracting",
            Phase::Contracted => "contracted",
            Phase::Aborted => "aborted",
        }
    }

    /// Refuses unknown text: reading it as some default phase could let a
    /// command run out of order (an unknown phase read as `planned` would let
    /// `expand` run again).
    pub fn parse(raw: &str) -> Result<Phase, UnknownPhase> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == raw)
            .ok_or_else(|| UnknownPhase(raw.to_owned()))
    }

    /// Whether writers must keep the old shape up to date as well as the new.
    pub fn dual_writes(self) -> bool {
        matches!(self, Phase::Expanded | Phase::Backfilled | Phase::Validated)
    }

    /// Whether the new shape exists and is written.
    pub fn writes_new(self) -> bool {
        matches!(
            self,
            Phase::Expanded
                | Phase::Backfilled
                | Phase::Validated
                | Phase::Contracting
                | Phase::Contracted
        )
    }

    /// Whether the old shape is still there to write.
    pub fn writes_old(self) -> bool {
        !matches!(self, Phase::Contracting | Phase::Contracted)
    }
}

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(raw: &str) -> Result<Phase, UnknownPhase> {
        Phase::parse(raw)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As the text stored in the database (`"contracted"`), for status reports.
impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub phase: Phase,
    /// The key of the last row the backfill copied (each key column as
    /// text); `None` before the first batch.
    pub backfill_cursor: Option<Position>,
    pub rows_backfilled: i64,
    pub switch_percent: i32,
    pub full_switch_seconds: Option<f64>,
    pub validated: bool,
    pub shadow_compared: i64,
    pub shadow_mismatched: i64,
    pub seconds_since_expand: Option<f64>,
}

impl Status {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A migration with no state yet: nothing has run.
    pub fn planned(name: &str) -> Status {
        Status {
            name: name.to_owned(),
            phase: Phase::Planned,
            backfill_cursor: None,
            rows_backfilled: 0,
            switch_percent: 0,
            full_switch_seconds: None,
            validated: false,
            shadow_compared: 0,
            shadow_mismatched: 0,
            seconds_since_expand: None,
        }
    }
}

/// A `Status` as stored, before its phase is parsed.
#[derive(FromRow)]
struct StatusRow {
    name: String,
    phase: String,
    backfill_cursor: Option<Vec<String>>,
    rows_backfilled: i64,
    switch_percent: i32,
    full_switch_seconds: Option<f64>,
    validated: bool,
    shadow_compared: i64,
    shadow_mismatched: i64,
    seconds_since_expand: Option<f64>,
}

/// Creates pgshift's schema, or brings an older one up to date. Every statement
/// is idempotent: each command that writes state runs it first (lint and
/// status never do).
pub(crate) async fn ensure_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    let known = Phase::ALL
        .iter()
        .map(|p| format!("'{}'", p.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    // The phase constraint is looked up before it is added: ADD CONSTRAINT takes
    // an ACCESS EXCLUSIVE lock on the table every application instance polls.
    // `duplicate_object` covers two opens racing. A new phase needs a new
    // constraint name (or a drop first), as an existing one is left as it is.
    // The same for `backfill_cursor_key` (the cursor of any key, as text; a
    // schema made before it has only the bigint `backfill_cursor`).
    sqlx::raw_sql(&format!(
        "create schema if not exists pgshift;
         create table if not exists pgshift.migrations (
             name text primary key,
             phase text not null default 'planned',
             backfill_cursor bigint,
             backfill_cursor_key text[],
             rows_backfilled bigint not null default 0,
             switch_percent integer not null default 0 check (switch_percent between 0 and 100),
             switch_full_since timestamptz,
             expanded_at timestamptz,
             validated_at timestamptz,
             updated_at timestamptz not null default now()
         );
         do $$
         begin
             if not exists (select 1 from pg_constraint
                            where conname = 'migrations_phase_known'
                              and conrelid = 'pgshift.migrations'::regclass) then
                 alter table pgshift.migrations
                     add constraint migrations_phase_known check (phase in ({known}));
             end if;
         exception when duplicate_object then null;
         end $$;
         do $$
         begin
             if not exists (select 1 from pg_attribute
                            where attrelid = 'pgshift.migrations'::regclass
                              and attname = 'backfill_cursor_key' and not attisdropped) then
                 alter table pgshift.migrations add column if not exists backfill_cursor_key text[];
             end if;
         end $$;
         create table if not exists pgshift.expand_steps (
             migration text not null references pgshift.migrations (name) on delete cascade,
             section text not null,
             step_index integer not null,
             name text not null,
             sql_sha256 text not null,
             done_at timestamptz not null default now(),
             primary key (migration, section, step_index)
         );
         create table if not exists pgshift.validation_progress (
             migration text primary key references pgshift.migrations (name) on delete cascade,
             cursor_key text[] not null,
             ranges bigint not null,
             rows bigint not null,
             mismatched text[] not null,
             updated_at timestamptz not null default now()
         );
         create table if not exists pgshift.shadow_counts (
             migration text primary key,
             compared bigint not null default 0,
             mismatched bigint not null default 0
         );
         create table if not exists pgshift.shadow_mismatches (
             migration text not null,
             key text not null,
             old_value text,
             new_value text,
             seen_at timestamptz not null default now()
         );"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds the migration's row (phase `planned`) if it is not there yet.
pub(crate) async fn register(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("insert into pgshift.migrations (name) values ($1) on conflict (name) do nothing")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Lets `role` (the application) read the phase and switch and record shadow
/// reads. A mismatch holds the application's values of both shapes, any
/// tenant's: the reader adds them, it does not read them back.
pub(crate) async fn grant_reader(pool: &PgPool, role: &str) -> Result<(), sqlx::Error> {
    let role = crate::quote_ident(role);
    sqlx::raw_sql(&format!(
        "grant usage on schema pgshift to {role};
         grant select on pgshift.migrations to {role};
         grant select, insert, update on pgshift.shadow_counts to {role};
         revoke all on pgshift.shadow_mismatches from {role};
         grant insert on pgshift.shadow_mismatches to {role};"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// The migration's state; `None` when it has none yet, or pgshift's schema
/// does not exist (nothing is created to find that out). An unknown phase in
/// the row is an error.
pub(crate) async fn status(pool: &PgPool, name: &str) -> Result<Option<Status>, Error> {
    if !migrations_table_exists(pool).await? {
        return Ok(None);
    }
    // A schema an older pgshift made has no `backfill_cursor_key` until the
    // next command that writes state; status only reads, so it asks first.
    // For a key of one integer column the bigint `backfill_cursor` is the
    // cursor (older pgshift wrote only that); for any other, the text array.
    let cursor = if has_cursor_key(pool).await? {
        "case when m.backfill_cursor is not null then array[m.backfill_cursor::text] else m.backfill_cursor_key end"
    } else {
        "case when m.backfill_cursor is not null then array[m.backfill_cursor::text] end"
    };
    let row: Option<StatusRow> = sqlx::query_as(&format!(
        "select m.name, m.phase, {cursor} as backfill_cursor, m.rows_backfilled, m.switch_percent,
                extract(epoch from now() - m.switch_full_since)::float8 as full_switch_seconds,
                m.validated_at is not null as validated,
                coalesce(c.compared, 0) as shadow_compared, coalesce(c.mismatched, 0) as shadow_mismatched,
                extract(epoch from now() - m.expanded_at)::float8 as seconds_since_expand
         from pgshift.migrations m left join pgshift.shadow_counts c on c.migration = m.name
         where m.name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let phase = Phase::parse(&row.phase).map_err(|UnknownPhase(phase)| Error::UnknownPhase {
        migration: row.name.clone(),
        phase,
    })?;
    Ok(Some(Status {
        name: row.name,
        phase,
        backfill_cursor: row.backfill_cursor,
        rows_backfilled: row.rows_backfilled,
        switch_percent: row.switch_percent,
        full_switch_seconds: row.full_switch_seconds,
        validated: row.validated,
        shadow_compared: row.shadow_compared,
        shadow_mismatched: row.shadow_mismatched,
        seconds_since_expand: row.seconds_since_expand,
    }))
}

pub(crate) async fn set_phase(pool: &PgPool, name: &str, phase: Phase) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pgshift.migrations set phase = $2, updated_at = now(),
                expanded_at = case when $2 = 'expanded' then now() else expanded_at end
         where name = $1",
    )
    .bind(name)
    .bind(phase.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets the progress of an attempt: at abort, and before expand.
pub(crate) async fn reset_progress(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pgshift.migrations set backfill_cursor = null, backfill_cursor_key = null,
                rows_backfilled = 0, switch_percent = 0,
                switch_full_since = null, validated_at = null where name = $1",
    )
    .bind(name)
    .execute(&mut *conn)
    .await?;
    sqlx::query("delete from pgshift.shadow_counts where migration = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    forget_validation_progress(&mut *conn, name).await?;
    Ok(())
}

/// Where an interrupted `validate` stopped, and what it had found.
pub(crate) struct ValidationProgress {
    pub cursor: Vec<String>,
    pub ranges: i64,
    pub rows: i64,
    pub mismatched: Vec<String>,
}

/// The progress of an interrupted validation, if one is kept. A schema made by
/// an older pgshift has none (and nothing to resume).
pub(crate) async fn validation_progress(
    pool: &PgPool,
    name: &str,
) -> Result<Option<ValidationProgress>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("select to_regclass('pgshift.validation_progress') is not null")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(None);
    }
    let row: Option<(Vec<String>, i64, i64, Vec<String>)> = sqlx::query_as(
        "select cursor_key, ranges, rows, mismatched from pgshift.validation_progress where migration = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(cursor, ranges, rows, mismatched)| ValidationProgress {
            cursor,
            ranges,
            rows,
            mismatched,
        }),
    )
}

/// Keeps the position after a compared range, in that range's transaction.
pub(crate) async fn save_validation_progress(
    conn: &mut PgConnection,
    name: &str,
    cursor: &[String],
    report: &crate::ValidationReport,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into pgshift.validation_progress (migration, cursor_key, ranges, rows, mismatched)
         values ($1, $2, $3, $4, $5)
         on conflict (migration) do update
            set cursor_key = excluded.cursor_key, ranges = excluded.ranges, rows = excluded.rows,
                mismatched = excluded.mismatched, updated_at = now()",
    )
    .bind(name)
    .bind(cursor)
    .bind(i64::try_from(report.ranges).unwrap_or(i64::MAX))
    .bind(report.rows)
    .bind(&report.mismatched)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a validation's progress: it finished, or the attempt is over.
pub(crate) async fn forget_validation_progress(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from pgshift.validation_progress where migration = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// One expand (or dual-write) step, as recorded once it has run.
pub(crate) struct ExpandStep<'a> {
    pub migration: &'a str,
    /// `expand` or `dual_write`.
    pub section: &'static str,
    pub index: i32,
    pub name: &'a str,
    /// Of the SQL that ran: a step edited after it ran is caught on resume.
    pub sql_sha256: String,
}

/// The steps of `migration` that have run, by `(section, index)`, with the
/// SHA-256 of the SQL each ran.
pub(crate) async fn expand_steps_done(
    pool: &PgPool,
    migration: &str,
) -> Result<HashMap<(String, i32), String>, sqlx::Error> {
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "select section, step_index, sql_sha256 from pgshift.expand_steps where migration = $1",
    )
    .bind(migration)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(section, index, sha)| ((section, index), sha))
        .collect())
}

/// Records a step as run; called in the step's own transaction where it has one.
pub(crate) async fn record_expand_step(
    conn: &mut PgConnection,
    step: &ExpandStep<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into pgshift.expand_steps (migration, section, step_index, name, sql_sha256)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(step.migration)
    .bind(step.section)
    .bind(step.index)
    .bind(step.name)
    .bind(&step.sql_sha256)
    .execute(conn)
    .await?;
    Ok(())
}

async fn has_cursor_key(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from pg_attribute
                        where attrelid = 'pgshift.migrations'::regclass
                          and attname = 'backfill_cursor_key' and not attisdropped)",
    )
    .fetch_one(pool)
    .await
}

/// Where a backfill stands, read with the state row locked.
#[derive(FromRow)]
pub(crate) struct BackfillState {
    pub phase: String,
    /// The cursor as older pgshift kept it, and as it is still kept for a
    /// key of one integer column.
    pub cursor_int: Option<i64>,
    /// The cursor of any key: each key column as text.
    pub cursor_key: Option<Vec<String>>,
}

/// The phase and backfill cursor, with the state row locked until the
/// transaction ends (which also keeps two backfills of one plan in single
/// file, and an abort waits for the batch in flight).
pub(crate) async fn lock_backfill_cursor(
    conn: &mut PgConnection,
    name: &str,
) -> Result<BackfillState, sqlx::Error> {
    sqlx::query_as(
        "select phase, backfill_cursor as cursor_int, backfill_cursor_key as cursor_key
         from pgshift.migrations where name = $1 for update",
    )
    .bind(name)
    .fetch_one(conn)
    .await
}

/// Moves the cursor past a copied batch, in the batch's transaction. For a
/// key of one integer column the bigint column is kept too (`as_int`):
/// tools and older pgshift read it.
pub(crate) async fn advance_backfill(
    conn: &mut PgConnection,
    name: &str,
    position: &[String],
    as_int: Option<i64>,
    rows: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pgshift.migrations set backfill_cursor_key = $2, backfill_cursor = $3,
                rows_backfilled = rows_backfilled + $4, updated_at = now() where name = $1",
    )
    .bind(name)
    .bind(position)
    .bind(as_int)
    .bind(rows)
    .execute(conn)
    .await?;
    Ok(())
}

/// `expanded` → `backfilled` (only from `expanded`: another backfill run at
/// the same time may have finished first, and a validation since passed).
pub(crate) async fn finish_backfill(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update pgshift.migrations set phase = $2, updated_at = now() where name = $1 and phase = $3")
        .bind(name)
        .bind(Phase::Backfilled.as_str())
        .bind(Phase::Expanded.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

/// Sets the read switch; 100% starts the clock contract waits on.
pub(crate) async fn set_switch_percent(
    pool: &PgPool,
    name: &str,
    percent: u8,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pgshift.migrations set switch_percent = $2, updated_at = now(),
                switch_full_since = case when $2 = 100 then coalesce(switch_full_since, now()) end
         where name = $1",
    )
    .bind(name)
    .bind(i32::from(percent))
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a passed validation after one failed: `validated` goes back to
/// `backfilled`, and contract is refused until a validation passes again.
pub(crate) async fn clear_validated(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pgshift.migrations set validated_at = null, updated_at = now(),
                phase = case when phase = $2 then $3 else phase end
         where name = $1 and phase in ($2, $3)",
    )
    .bind(name)
    .bind(Phase::Validated.as_str())
    .bind(Phase::Backfilled.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// `validated` → `contracting`, only if still validated (a validation that
/// failed in between has cleared it). Whether it moved.
pub(crate) async fn begin_contract(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "update pgshift.migrations set phase = $3, updated_at = now()
         where name = $1 and phase = $2 and validated_at is not null",
    )
    .bind(name)
    .bind(Phase::Validated.as_str())
    .bind(Phase::Contracting.as_str())
    .execute(pool)
    .await?;
    Ok(moved.rows_affected() == 1)
}

pub(crate) async fn mark_validated(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update pgshift.migrations set validated_at = now(), phase = $2, updated_at = now()
         where name = $1 and phase in ($2, $3)",
    )
    .bind(name)
    .bind(Phase::Validated.as_str())
    .bind(Phase::Backfilled.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Reads back to the old shape only and phase `aborted`, in one transaction.
/// The record of expand steps goes too: the abort steps undo them, so the next
/// expand must run every step again. So does the progress of the attempt
/// (backfill cursor and count, validation, shadow-read counts): the new shape
/// it describes is being dropped, and `status` must not show it as current.
/// The shadow-read mismatch samples stay, as history.
pub(crate) async fn begin_abort(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update pgshift.migrations set switch_percent = 0, switch_full_since = null,
                phase = $2, updated_at = now()
         where name = $1",
    )
    .bind(name)
    .bind(Phase::Aborted.as_str())
    .execute(&mut *tx)
    .await?;
    reset_progress(&mut tx, name).await?;
    sqlx::query("delete from pgshift.expand_steps where migration = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Whether `pgshift.migrations` exists. Asked first so that an application
/// polling before any migration ran does not fill the server log with errors.
pub(crate) async fn migrations_table_exists(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select to_regclass('pgshift.migrations') is not null")
        .fetch_one(pool)
        .await
}

/// The phase text (unparsed: the read switch decides what an unknown one
/// means) and the switch percentage.
pub(crate) async fn read_switch(
    pool: &PgPool,
    name: &str,
) -> Result<Option<(String, i32)>, sqlx::Error> {
    sqlx::query_as("select phase, switch_percent from pgshift.migrations where name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

pub(crate) async fn record_shadow_mismatch(
    pool: &PgPool,
    migration: &str,
    key: &str,
    old: &str,
    new: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into pgshift.shadow_mismatches (migration, key, old_value, new_value) values ($1, $2, $3, $4)",
    )
    .bind(migration)
    .bind(key)
    .bind(old)
    .bind(new)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn add_shadow_counts(
    pool: &PgPool,
    migration: &str,
    compared: i64,
    mismatched: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into pgshift.shadow_counts (migration, compared, mismatched) values ($1, $2, $3)
         on conflict (migration) do update set compared = shadow_counts.compared + excluded.compared,
                                               mismatched = shadow_counts.mismatched + excluded.mismatched",
    )
    .bind(migration)
    .bind(compared)
    .bind(mismatched)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_phase_text_is_an_error_not_planned() {
        assert_eq!(Phase::parse("bogus"), Err(UnknownPhase("bogus".into())));
        assert!(Phase::parse("").is_err());
        assert!(Phase::parse("Expanded").is_err(), "no case folding");
        assert_eq!(
            "bogus".parse::<Phase>().unwrap_err().to_string(),
            "unknown phase 'bogus'"
        );
    }

    #[test]
    fn every_phase_reads_back_as_itself() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.as_str()), Ok(phase));
            assert_eq!(phase.to_string(), phase.as_str());
        }
    }
}
