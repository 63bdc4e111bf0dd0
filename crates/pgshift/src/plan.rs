//! A migration plan is data: a TOML file, parsed and checked before anything runs.

use serde::Deserialize;

use crate::Error;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Unique name; pgshift's state is kept under it.
    pub name: String,
    /// Roles that may read pgshift's state (the application reads the phase and
    /// the read-switch percentage from it).
    #[serde(default)]
    pub readers: Vec<String>,
    /// `lock_timeout` for every DDL statement, in milliseconds (never 0).
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// New tables, columns, indexes, constraints: additive only.
    #[serde(default)]
    pub expand: Vec<Step>,
    /// Sync triggers for writers that cannot dual-write themselves (optional).
    /// pgshift owns the triggers and functions these steps create (read from
    /// their `CREATE [OR REPLACE] FUNCTION name (…)` and `CREATE TRIGGER name
    /// … ON table`): contract and abort drop them, in the transaction of
    /// their first step, so no writer is left with a trigger naming a column
    /// that is gone.
    #[serde(default)]
    pub dual_write: Vec<Step>,
    pub backfill: Backfill,
    /// The read switch, for applications that read through `ReadSwitch`. With
    /// no `[switch]` and no `readers` (nothing reads pgshift's state to pick a
    /// shape), contract does not wait for a switch.
    pub switch: Option<Switch>,
    pub validate: Validate,
    /// Drops of the old shape; run only after validation and a full switch.
    #[serde(default)]
    pub contract: Vec<Step>,
    /// Undoes the expand (before contract only).
    #[serde(default)]
    pub abort: Vec<Step>,
}

pub(crate) fn default_lock_timeout_ms() -> u64 {
    2_000
}

/// One SQL statement with a name for messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub sql: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    /// The old shape's table.
    pub source: String,
    /// Its key, read in keyset order: one column (`key = "id"`) or several
    /// (`key = ["merchant_id", "id"]`), of any type with a btree order
    /// (integer, uuid, text, timestamp, …), NOT NULL, unique together (a
    /// primary key is).
    #[serde(deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    /// Idempotent SQL copying the batch's source rows into the new shape:
    /// one statement, or a list run in order in the batch's transaction. It
    /// selects the batch with `{{key_range}}` (any key; `{{key_range o}}`
    /// qualifies the columns with alias `o`), or, for a key of one integer
    /// column, with `key > $1 and key <= $2`.
    #[serde(deserialize_with = "one_or_many")]
    pub transform: Vec<String>,
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    #[serde(default = "default_max_batch")]
    pub max_batch_size: i64,
    /// Batches are sized to take about this long (ms): the locks a batch takes
    /// are held no longer than that.
    #[serde(default = "default_target_batch_ms")]
    pub target_batch_ms: f64,
    /// Share of wall time the backfill works (0-1]; it rests for the rest, so
    /// live traffic keeps its CPU and I/O.
    #[serde(default = "default_duty_cycle")]
    pub duty_cycle: f64,
    /// The throttle backs off when the probe query takes longer than this (ms).
    #[serde(default = "default_max_probe_ms")]
    pub max_probe_ms: f64,
    /// ... or when more sessions than this wait on locks ...
    #[serde(default = "default_max_lock_waiters")]
    pub max_lock_waiters: i64,
    /// ... or when replicas lag more than this (seconds).
    #[serde(default = "default_max_lag_s")]
    pub max_replication_lag_s: f64,
    /// After the last batch, `VACUUM (ANALYZE)` the tables the expand steps
    /// created or altered, throttled: otherwise the first reads after a large
    /// backfill each set hint bits on millions of fresh row versions at once
    /// (a stall of live traffic), and the planner does not know the new sizes.
    #[serde(default = "default_true")]
    pub vacuum: bool,
    /// The vacuum's `vacuum_cost_delay` (ms): higher is gentler and slower.
    #[serde(default = "default_vacuum_cost_delay_ms")]
    pub vacuum_cost_delay_ms: f64,
}

impl Backfill {
    /// The tuning a plan gets for what it leaves out (source, key and
    /// transform empty).
    pub(crate) fn defaults() -> Backfill {
        Backfill {
            source: String::new(),
            key: Vec::new(),
            transform: Vec::new(),
            batch_size: default_batch(),
            max_batch_size: default_max_batch(),
            target_batch_ms: default_target_batch_ms(),
            duty_cycle: default_duty_cycle(),
            max_probe_ms: default_max_probe_ms(),
            max_lock_waiters: default_max_lock_waiters(),
            max_replication_lag_s: default_max_lag_s(),
            vacuum: default_true(),
            vacuum_cost_delay_ms: default_vacuum_cost_delay_ms(),
        }
    }
}

fn default_batch() -> i64 {
    1_000
}
fn default_max_batch() -> i64 {
    10_000
}
fn default_target_batch_ms() -> f64 {
    50.0
}
fn default_duty_cycle() -> f64 {
    0.8
}
fn default_max_probe_ms() -> f64 {
    20.0
}
fn default_max_lock_waiters() -> i64 {
    4
}
fn default_max_lag_s() -> f64 {
    5.0
}
fn default_true() -> bool {
    true
}
fn default_vacuum_cost_delay_ms() -> f64 {
    2.0
}

pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// Seconds reads must have been 100% on the new shape before contract.
    #[serde(default = "default_full_seconds")]
    pub min_full_seconds: u64,
    /// Share of reads that also read the other shape and compare (0-100).
    #[serde(default = "default_shadow")]
    pub shadow_percent: u8,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            min_full_seconds: default_full_seconds(),
            shadow_percent: default_shadow(),
        }
    }
}

fn default_full_seconds() -> u64 {
    60
}
fn default_shadow() -> u8 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// `select count(*), <checksum text>` over the old shape's rows in the
    /// range, selected like the backfill's (`{{key_range}}`, or `$1 < key <= $2`).
    pub source: String,
    /// The same over the new shape; must agree range by range. A range's
    /// rows are those of the new shape with their key in the range (the new
    /// shape has the key columns under the same names), so a row left in
    /// the new shape after its delete from the old one fails the range.
    pub target: String,
    #[serde(default = "default_chunk")]
    pub chunk_size: i64,
}

fn default_chunk() -> i64 {
    10_000
}

impl Plan {
    /// A plan from its TOML: hand-written (steps of SQL), or declarative
    /// (a `table` and the columns it gains and loses; see `declare`).
    pub fn parse(text: &str) -> Result<Plan, Error> {
        let located = |e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let message = e.message().trim().replace('\n', " ");
            Error::Plan(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        };
        let table: toml::Table = toml::from_str(text).map_err(located)?;
        let plan: Plan = if crate::declare::is_declarative(&table) {
            toml::from_str::<crate::declare::Declared>(text)
                .map_err(located)?
                .compile()?
        } else {
            toml::from_str(text).map_err(located)?
        };
        if plan.name.is_empty()
            || !plan
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::Plan("name: must be letters, digits and '_'".into()));
        }
        if plan.lock_timeout_ms == 0 {
            return Err(Error::Plan(
                "lock_timeout_ms: 0 would let DDL wait in the lock queue forever".into(),
            ));
        }
        if plan.backfill.batch_size < 1 || plan.backfill.max_batch_size < plan.backfill.batch_size {
            return Err(Error::Plan(
                "backfill: need 1 <= batch_size <= max_batch_size".into(),
            ));
        }
        let key = &plan.backfill.key;
        if key.is_empty() || key.iter().any(String::is_empty) {
            return Err(Error::Plan("backfill.key: name at least one column".into()));
        }
        if let Some(twice) = key.iter().enumerate().find(|(i, c)| key[..*i].contains(c)) {
            return Err(Error::Plan(format!(
                "backfill.key: column {} named twice",
                twice.1
            )));
        }
        let statements = plan
            .backfill
            .transform
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("backfill.transform[{i}]"), s))
            .chain([
                ("validate.source".to_owned(), &plan.validate.source),
                ("validate.target".to_owned(), &plan.validate.target),
            ]);
        for (step, sql) in statements {
            crate::key::check_placeholders(sql).map_err(|e| Error::Plan(format!("{step}: {e}")))?;
        }
        if plan.backfill.transform.is_empty() {
            return Err(Error::Plan(
                "backfill.transform: at least one statement".into(),
            ));
        }
        if !(plan.backfill.duty_cycle > 0.0 && plan.backfill.duty_cycle <= 1.0) {
            return Err(Error::Plan("backfill.duty_cycle: must be in (0, 1]".into()));
        }
        if plan.switch.as_ref().is_some_and(|s| s.shadow_percent > 100) {
            return Err(Error::Plan("switch.shadow_percent: must be 0-100".into()));
        }
        Ok(plan)
    }

    pub fn load(path: &std::path::Path) -> Result<Plan, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Plan(format!("{}: {e}", path.display())))?;
        Plan::parse(&text).map_err(|e| match e {
            Error::Plan(m) => Error::Plan(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}
