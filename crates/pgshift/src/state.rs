//! pgshift's own schema: one row per migration with its phase, backfill cursor
//! and read-switch percentage, plus shadow-read counts and samples.

use sqlx::{FromRow, PgPool};

/// Where a migration stands. Phases only move forward, except `abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

impl Phase {
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

    pub fn parse(raw: &str) -> Phase {
        match raw {
            "expanded" => Phase::Expanded,
            "backfilled" => Phase::Backfilled,
            "validated" => Phase::Validated,
            "contracting" => Phase::Contracting,
            "contracted" => Phase::Contracted,
            "aborted" => Phase::Aborted,
            _ => Phase::Planned,
        }
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

#[derive(Debug, Clone, FromRow)]
pub struct Status {
    pub name: String,
    pub phase: String,
    pub backfill_cursor: Option<i64>,
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
        Phase::parse(&self.phase)
    }
}

pub async fn ensure_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "create schema if not exists pgshift;
         create table if not exists pgshift.migrations (
             name text primary key,
             phase text not null default 'planned',
             backfill_cursor bigint,
             rows_backfilled bigint not null default 0,
             switch_percent integer not null default 0 check (switch_percent between 0 and 100),
             switch_full_since timestamptz,
             expanded_at timestamptz,
             validated_at timestamptz,
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
         );",
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn status(pool: &PgPool, name: &str) -> Result<Option<Status>, sqlx::Error> {
    sqlx::query_as(
        "select m.name, m.phase, m.backfill_cursor, m.rows_backfilled, m.switch_percent,
                extract(epoch from now() - m.switch_full_since)::float8 as full_switch_seconds,
                m.validated_at is not null as validated,
                coalesce(c.compared, 0) as shadow_compared, coalesce(c.mismatched, 0) as shadow_mismatched,
                extract(epoch from now() - m.expanded_at)::float8 as seconds_since_expand
         from pgshift.migrations m left join pgshift.shadow_counts c on c.migration = m.name
         where m.name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn set_phase(pool: &PgPool, name: &str, phase: Phase) -> Result<(), sqlx::Error> {
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
