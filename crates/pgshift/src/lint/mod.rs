//! Lint: refuse what would lock, scan or rewrite a live table, or break the old
//! shape before contract, before anything runs.
//!
//! Every statement of every step is parsed with squawk's PostgreSQL parser
//! (`squawk-syntax`: a lossless, error-tolerant grammar of PostgreSQL in plain
//! Rust, so no C toolchain or libpg_query build; comments and strings are tokens
//! of their own) and checked on its syntax tree (`statements.rs`). What squawk
//! cannot see, pgshift can: it reads the live catalog ([`Catalog`]), so a type
//! change that keeps every value (`varchar(20)` → `text`) passes, `SET NOT NULL`
//! passes when a validated `CHECK (col IS NOT NULL)` exists, and a default is
//! volatile when the database says its function is.
//!
//! A table is *live* if it exists before the migration; tables the plan itself
//! creates may be changed freely until they hold data.

mod statements;

use std::collections::{HashMap, HashSet};
use std::fmt;

use squawk_syntax::ast::AstNode;
use squawk_syntax::SourceFile;

use crate::plan::{Plan, Step};
use crate::sql;
use statements::{PlanState, Section};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finding {
    /// Where: `expand[2] "orders_total_minor"`.
    pub step: String,
    /// The statement at fault (its first line, shortened), when there is one.
    pub statement: String,
    /// The table it concerns, when there is one.
    pub table: Option<String>,
    pub rule: &'static str,
    /// Why it is dangerous.
    pub why: &'static str,
    /// What to do instead.
    pub instead: &'static str,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.step)?;
        if !self.statement.is_empty() {
            write!(f, " `{}`", self.statement)?;
        }
        if let Some(table) = &self.table {
            write!(f, " on {table}")?;
        }
        write!(
            f,
            ": {} — {}; instead: {}",
            self.rule, self.why, self.instead
        )
    }
}

/// A lint rule: its name, why it matters, what to do instead.
pub(crate) struct Rule {
    pub name: &'static str,
    pub why: &'static str,
    pub instead: &'static str,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $why:literal, $instead:literal;)+) => {
        $(pub(crate) static $id: Rule = Rule { name: $name, why: $why, instead: $instead };)+
        /// Every statement rule's name.
        pub const STATEMENT_RULES: &[&str] = &[$($name),+];
    };
}

rules! {
    MISSING_TABLE = "missing-table",
        "the step names a table that neither exists nor is created earlier in the plan",
        "check the table name, or create it in an earlier expand step";
    INDEX_WITHOUT_CONCURRENTLY = "index-without-concurrently",
        "CREATE INDEX blocks every write to the table while it builds",
        "CREATE INDEX CONCURRENTLY (its own step, outside a transaction)";
    CONCURRENTLY_IN_MULTI = "concurrently-in-multi-statement-step",
        "CONCURRENTLY cannot run inside the transaction a multi-statement step opens",
        "put the statement in a step of its own";
    DROP_INDEX_WITHOUT_CONCURRENTLY = "drop-index-without-concurrently",
        "DROP INDEX takes an ACCESS EXCLUSIVE lock on the table: every read and write waits",
        "DROP INDEX CONCURRENTLY (its own step), in contract";
    REINDEX_WITHOUT_CONCURRENTLY = "reindex-without-concurrently",
        "REINDEX rebuilds under a lock that blocks writes (and reads that use the index)",
        "REINDEX … CONCURRENTLY (its own step)";
    REFRESH_WITHOUT_CONCURRENTLY = "refresh-without-concurrently",
        "REFRESH MATERIALIZED VIEW rewrites the view under an ACCESS EXCLUSIVE lock: readers wait",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY (needs a unique index on the view)";
    DETACH_WITHOUT_CONCURRENTLY = "detach-partition-without-concurrently",
        "DETACH PARTITION takes an ACCESS EXCLUSIVE lock on the partitioned table",
        "DETACH PARTITION … CONCURRENTLY (its own step)";
    CONSTRAINT_WITHOUT_NOT_VALID = "constraint-without-not-valid",
        "adding a CHECK or FOREIGN KEY validates every row under a lock that blocks writes",
        "ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in a later step";
    UNIQUE_WITHOUT_INDEX = "unique-or-primary-key-without-index",
        "a PRIMARY KEY, UNIQUE or EXCLUDE constraint builds its index under an ACCESS EXCLUSIVE lock",
        "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT … USING INDEX";
    DOMAIN_CONSTRAINT_WITHOUT_NOT_VALID = "domain-constraint-without-not-valid",
        "a new domain constraint checks every column of that domain, locking their tables",
        "ALTER DOMAIN … ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT later";
    SET_NOT_NULL = "set-not-null-without-validated-check",
        "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
        "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in an earlier step, then SET NOT NULL";
    COLUMN_TYPE_CHANGE = "column-type-change",
        "this type change rewrites the table and its indexes under an ACCESS EXCLUSIVE lock",
        "add a new column, dual-write and backfill it, switch reads, drop the old one (widening varchar/numeric or varchar to text is free)";
    TABLE_REWRITE = "table-rewrite",
        "SET LOGGED/UNLOGGED, SET TABLESPACE and SET ACCESS METHOD copy the whole table under an ACCESS EXCLUSIVE lock",
        "create the new table beside it and move the data with a backfill";
    VOLATILE_DEFAULT = "volatile-default",
        "a volatile default is computed per row: the whole table is rewritten",
        "add the column without a default (or with a constant), then backfill";
    STORED_GENERATED = "stored-generated-column",
        "a stored generated column is computed for every row: the whole table is rewritten",
        "add a plain column, fill it with a trigger and the backfill";
    SERIAL_COLUMN = "serial-column",
        "a serial column draws a value for every existing row: the whole table is rewritten",
        "add a nullable bigint, attach a sequence default later, backfill";
    IDENTITY_COLUMN = "identity-column",
        "an identity column draws a value for every existing row: the whole table is rewritten",
        "add a nullable bigint, backfill it, then ALTER COLUMN … ADD GENERATED … AS IDENTITY";
    NOT_NULL_WITHOUT_DEFAULT = "not-null-without-default",
        "a NOT NULL column without a default fails on a table that has rows (and scans it)",
        "add it nullable (or with a constant default), backfill, then a validated CHECK and SET NOT NULL";
    DROP_BEFORE_CONTRACT = "drop-before-contract",
        "dropping breaks every reader and writer still on the old shape, and cannot be undone",
        "move the drop to the contract steps";
    RENAME_LIVE = "rename-live",
        "renaming breaks every running reader and writer of the old name at once",
        "add the new name alongside, dual-write, switch, drop the old in contract";
    RENAME_ENUM_VALUE = "rename-enum-value",
        "renaming an enum value breaks every reader and writer that still uses the old label",
        "add the new value (ALTER TYPE … ADD VALUE), move the rows, drop the old in contract";
    TRUNCATE = "truncate",
        "TRUNCATE empties a live table under an ACCESS EXCLUSIVE lock",
        "delete what must go in batches, with the backfill's throttling";
    EXPLICIT_LOCK = "explicit-lock",
        "an explicit LOCK holds back every reader or writer it conflicts with until the step ends",
        "leave locking to the statements themselves";
    VACUUM_FULL = "vacuum-full",
        "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock for its whole run",
        "plain VACUUM, or pg_repack outside the migration";
    CLUSTER = "cluster",
        "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock for its whole run",
        "leave it out of online migrations (pg_repack can reorder online)";
    DROP_DATABASE = "drop-database",
        "DROP DATABASE destroys a database",
        "never in a migration plan";
    WHOLE_TABLE_WRITE = "whole-table-write",
        "an UPDATE or DELETE of every row locks every row at once and writes the table in one transaction",
        "let the backfill do it in throttled, resumable batches (or add a WHERE)";
    UNPARSABLE = "unparsable",
        "pgshift cannot parse this step, so it cannot tell what it would lock",
        "fix the SQL (PostgreSQL 15 syntax)";
}

/// What the live database holds, as far as lint needs it. Read by
/// `Migrator::lint` from the catalog (read-only queries); tests build it.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Tables (bare names) that exist before the migration.
    pub tables: HashSet<String>,
    /// (table, column) → the column's type as `format_type` spells it.
    pub columns: HashMap<(String, String), String>,
    /// (table, column) pairs with a validated `CHECK (column IS NOT NULL)`.
    pub not_null_checks: HashSet<(String, String)>,
    /// Function name → its most volatile overload (`i`, `s` or `v`).
    pub volatility: HashMap<String, char>,
    /// Names of PRIMARY KEY, UNIQUE and EXCLUDE constraints: what writers rely on.
    pub keys: HashSet<String>,
}

impl Catalog {
    /// A catalog with `tables` and the volatility of common built-in functions:
    /// for tests and for linting without a database.
    pub fn offline<I: IntoIterator<Item = S>, S: Into<String>>(tables: I) -> Catalog {
        let volatility = [
            ("now", 's'),
            ("statement_timestamp", 's'),
            ("transaction_timestamp", 's'),
            ("lower", 'i'),
            ("upper", 'i'),
            ("coalesce", 'i'),
            ("random", 'v'),
            ("clock_timestamp", 'v'),
            ("gen_random_uuid", 'v'),
            ("nextval", 'v'),
            ("timeofday", 'v'),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        Catalog {
            tables: tables.into_iter().map(Into::into).collect(),
            volatility,
            ..Catalog::default()
        }
    }

    /// Reads the live catalog (user schemas only). Runs nothing but SELECTs.
    pub async fn load(pool: &sqlx::PgPool) -> Result<Catalog, sqlx::Error> {
        const USER_SCHEMAS: &str =
            "n.nspname not in ('pg_catalog', 'information_schema', 'pgshift') and n.nspname not like 'pg_toast%'";
        let tables: HashSet<String> = sqlx::query_scalar::<_, String>(&format!(
            "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.relkind in ('r', 'p', 'm') and {USER_SCHEMAS}"
        ))
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        let columns = sqlx::query_as::<_, (String, String, String)>(&format!(
            "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
             from pg_attribute a join pg_class c on c.oid = a.attrelid
             join pg_namespace n on n.oid = c.relnamespace
             where c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped and {USER_SCHEMAS}"
        ))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(t, c, ty)| ((t, c), ty))
        .collect();
        let not_null_checks = sqlx::query_as::<_, (String, String)>(&format!(
            "select c.relname::text, pg_get_constraintdef(k.oid)
             from pg_constraint k join pg_class c on c.oid = k.conrelid
             join pg_namespace n on n.oid = c.relnamespace
             where k.contype = 'c' and k.convalidated and {USER_SCHEMAS}"
        ))
        .fetch_all(pool)
        .await?
        .into_iter()
        .filter_map(|(table, def)| Some((table, not_null_column(&def)?)))
        .collect();
        let volatility = sqlx::query_as::<_, (String, String)>(
            "select proname::text, max(provolatile::text) from pg_proc group by proname",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .filter_map(|(name, v)| Some((name, v.chars().next()?)))
        .collect();
        let keys = sqlx::query_scalar::<_, String>(&format!(
            "select k.conname::text from pg_constraint k join pg_namespace n on n.oid = k.connamespace
             where k.contype in ('p', 'u', 'x') and {USER_SCHEMAS}"
        ))
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        Ok(Catalog {
            tables,
            columns,
            not_null_checks,
            volatility,
            keys,
        })
    }
}

/// The column of a constraint definition `CHECK ((col IS NOT NULL))`, as
/// `pg_get_constraintdef` prints it.
fn not_null_column(def: &str) -> Option<String> {
    let inner = def
        .strip_prefix("CHECK ")?
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')');
    let column = inner.strip_suffix(" IS NOT NULL")?.trim();
    let plain = column
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        Some(column.to_owned())
    } else {
        column
            .strip_prefix('"')?
            .strip_suffix('"')
            .map(|c| c.replace("\"\"", "\""))
    }
}

/// The statement as a finding quotes it: its first line, at most 80 characters.
fn excerpt(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default().trim();
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(79).collect::<String>())
    } else {
        line.to_owned()
    }
}

fn transaction_control_finding(step: String) -> Finding {
    Finding {
        step,
        rule: "transaction-control",
        why: "BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE or PREPARE TRANSACTION in a step ends or splits \
              the transaction pgshift runs it in: a step can report success while its work was rolled back, \
              or commit apart from its record",
        instead: "leave transactions to pgshift: each step runs in one transaction (split work into steps)",
        ..Finding::default()
    }
}

/// A finding for each step of `section` holding a transaction control
/// statement (outside function bodies, strings and comments).
pub(crate) fn transaction_control(section: &str, steps: &[Step]) -> Vec<Finding> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, step)| !sql::transaction_controls(&step.sql).is_empty())
        .map(|(i, step)| transaction_control_finding(format!("{section}[{i}] {:?}", step.name)))
        .collect()
}

/// Where pgshift drops the dual-write objects: with the first step of a
/// contract or abort that runs in a transaction.
fn owned_drop_step(steps: &[Step]) -> Option<usize> {
    steps
        .iter()
        .position(|step| !sql::needs_no_transaction(&step.sql))
}

/// Lints a plain migration file (one a framework such as sqlx applies whole,
/// in one transaction) against the live `catalog`: its statements are one
/// expand step, so the rules are those of a step that must leave the old
/// shape working. Findings name the file by `label`.
pub fn lint_file(label: &str, sql: &str, catalog: &Catalog) -> Vec<Finding> {
    let plan = Plan {
        name: String::new(),
        readers: Vec::new(),
        lock_timeout_ms: crate::plan::default_lock_timeout_ms(),
        expand: vec![Step {
            name: label.to_owned(),
            sql: sql.to_owned(),
        }],
        dual_write: Vec::new(),
        backfill: crate::plan::Backfill::defaults(),
        switch: None,
        validate: crate::plan::Validate {
            source: String::new(),
            target: String::new(),
            chunk_size: 1,
        },
        contract: Vec::new(),
        abort: Vec::new(),
    };
    lint(&plan, catalog)
        .into_iter()
        .map(|finding| Finding {
            step: label.to_owned(),
            ..finding
        })
        .collect()
}

/// Lints every statement of every step against the live `catalog`.
pub fn lint(plan: &Plan, catalog: &Catalog) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut state = PlanState::default();
    let sections: [(&str, &[Step]); 4] = [
        ("expand", &plan.expand),
        ("dual_write", &plan.dual_write),
        ("contract", &plan.contract),
        ("abort", &plan.abort),
    ];
    for (section, steps) in sections {
        let kind = match section {
            "contract" => Section::Contract,
            "abort" => Section::Abort,
            _ => Section::BeforeContract,
        };
        for (i, step) in steps.iter().enumerate() {
            let at = format!("{section}[{i}] {:?}", step.name);
            let parsed = SourceFile::parse(&step.sql);
            if let Some(error) = parsed.errors().first() {
                findings.push(Finding {
                    step: at.clone(),
                    statement: format!("{error}"),
                    rule: UNPARSABLE.name,
                    why: UNPARSABLE.why,
                    instead: UNPARSABLE.instead,
                    ..Finding::default()
                });
                continue;
            }
            let stmts: Vec<_> = parsed.tree().stmts().collect();
            let multi = stmts.len() > 1;
            for stmt in &stmts {
                for found in statements::check(stmt, kind, multi, catalog, &mut state) {
                    findings.push(Finding {
                        step: at.clone(),
                        statement: excerpt(&stmt.syntax().text().to_string()),
                        table: found.table,
                        rule: found.rule.name,
                        why: found.rule.why,
                        instead: found.rule.instead,
                    });
                }
            }
        }
    }
    for (section, steps) in sections {
        findings.extend(transaction_control(section, steps));
    }
    // pgshift drops the dual-write triggers and functions itself (IF EXISTS);
    // a later step dropping one without IF EXISTS would then fail.
    let owned: Vec<_> = plan
        .dual_write
        .iter()
        .flat_map(|step| sql::owned_objects(&step.sql))
        .collect();
    for (section, steps) in [("contract", &plan.contract), ("abort", &plan.abort)] {
        let Some(first) = owned_drop_step(steps) else {
            continue;
        };
        for (i, step) in steps.iter().enumerate().skip(first + 1) {
            if !sql::drops_without_if_exists(&step.sql, &owned).is_empty() {
                findings.push(Finding {
                    step: format!("{section}[{i}] {:?}", step.name),
                    rule: "drops-dual-write-object",
                    why: "pgshift drops the dual_write triggers and functions itself, with the first step of the section; this DROP would then fail",
                    instead: "leave the drop to pgshift, or write DROP … IF EXISTS",
                    ..Finding::default()
                });
            }
        }
    }
    for (i, statement) in plan.backfill.transform.iter().enumerate() {
        if !sql::transaction_controls(statement).is_empty() {
            findings.push(transaction_control_finding(format!(
                "backfill.transform[{i}]"
            )));
        }
        let overwrites = sql::tokens(statement)
            .windows(2)
            .any(|w| w[0].is_word("do") && w[1].is_word("update"));
        if overwrites {
            findings.push(Finding {
                step: format!("backfill.transform[{i}]"),
                rule: "backfill-overwrites",
                why: "the backfill copies from an older snapshot; overwriting can put a stale row back over a newer dual-write",
                instead: "insert only what is missing: ON CONFLICT … DO NOTHING (dual-writes upsert, the backfill never overwrites)",
                ..Finding::default()
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(expand: &[&str], contract: &[&str]) -> Plan {
        let steps = |sqls: &[&str]| {
            sqls.iter()
                .enumerate()
                .map(|(i, sql)| format!("[[{{}}]]\nname = \"s{i}\"\nsql = \"\"\"{sql}\"\"\"\n"))
                .collect::<Vec<_>>()
        };
        let mut text = String::from(
            "name = \"t\"\n[backfill]\nsource = \"orders\"\nkey = \"id\"\ntransform = \"select 1\"\n[validate]\nsource = \"s\"\ntarget = \"t\"\n",
        );
        for s in steps(expand) {
            text.push_str(&s.replace("{}", "expand"));
        }
        for s in steps(contract) {
            text.push_str(&s.replace("{}", "contract"));
        }
        Plan::parse(&text).expect("test plan parses")
    }

    fn rules(expand: &[&str], contract: &[&str]) -> Vec<&'static str> {
        lint(&plan(expand, contract), &Catalog::offline(["orders"]))
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn dangerous_ddl_on_live_tables_is_refused_with_a_reason() {
        assert_eq!(
            rules(&["create index o_idx on orders (total)"], &[]),
            ["index-without-concurrently"]
        );
        assert_eq!(
            rules(&["alter table orders add constraint fk foreign key (c) references customers (id)"], &[]),
            ["constraint-without-not-valid"]
        );
        assert_eq!(
            rules(
                &["alter table orders add constraint c check (total > 0)"],
                &[]
            ),
            ["constraint-without-not-valid"]
        );
        assert_eq!(
            rules(&["alter table orders alter column total set not null"], &[]),
            ["set-not-null-without-validated-check"]
        );
        assert_eq!(
            rules(&["alter table orders alter column total type bigint"], &[]),
            ["column-type-change"]
        );
        assert_eq!(
            rules(
                &["alter table orders add column k uuid default gen_random_uuid()"],
                &[]
            ),
            ["volatile-default"]
        );
        assert_eq!(rules(&["drop table orders"], &[]), ["drop-before-contract"]);
        assert_eq!(
            rules(&["alter table orders rename column total to amount"], &[]),
            ["rename-live"]
        );
        assert_eq!(rules(&["lock table orders"], &[]), ["explicit-lock"]);
        assert_eq!(
            rules(&["alter table nowhere add column x int"], &[]),
            ["missing-table"]
        );
    }

    #[test]
    fn a_backfill_that_overwrites_is_refused() {
        let mut p = plan(&[], &[]);
        p.backfill.transform = vec!["insert into t select * from orders where id > $1 and id <= $2 on conflict (id) do update set x = 1".into()];
        let found: Vec<_> = lint(&p, &Catalog::default())
            .into_iter()
            .map(|f| f.rule)
            .collect();
        assert_eq!(found, ["backfill-overwrites"]);
    }

    #[test]
    fn transaction_control_is_refused_in_every_section_but_not_in_bodies() {
        assert_eq!(
            rules(&["BEGIN; alter table orders add column note text"], &[]),
            ["transaction-control"]
        );
        assert_eq!(
            rules(&[], &["drop table orders; commit"]),
            ["transaction-control"]
        );
        let mut p = plan(&[], &[]);
        p.backfill.transform = vec!["commit".into()];
        let found: Vec<_> = lint(&p, &Catalog::default())
            .into_iter()
            .map(|f| (f.rule, f.step))
            .collect();
        assert_eq!(
            found,
            [("transaction-control", "backfill.transform[0]".to_owned())]
        );
        assert!(rules(
            &[
                "do $$ begin perform 1; end $$",
                "create function f() returns int language plpgsql as $$ begin return 1; end $$"
            ],
            &[]
        )
        .is_empty());
        let findings = lint(
            &plan(
                &["alter table orders add column a int", "start transaction"],
                &[],
            ),
            &Catalog::offline(["orders"]),
        );
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].step, r#"expand[1] "s1""#);
    }

    #[test]
    fn a_later_step_dropping_a_dual_write_object_without_if_exists_is_refused() {
        let mut p = plan(
            &[],
            &[
                "alter table orders drop column total",
                "drop trigger sync on orders",
            ],
        );
        p.dual_write = vec![Step {
            name: "sync".into(),
            sql: "create function sync() returns trigger language plpgsql as $$ begin return new; end $$;
                  create trigger sync before insert on orders for each row execute function sync();"
                .into(),
        }];
        let live = Catalog::offline(["orders"]);
        let found: Vec<_> = lint(&p, &live)
            .into_iter()
            .map(|f| (f.rule, f.step))
            .collect();
        assert_eq!(
            found,
            [("drops-dual-write-object", r#"contract[1] "s1""#.to_owned())]
        );
        // In the first step (pgshift's drops run after it) or with IF EXISTS: fine.
        p.contract[1].sql = "drop trigger if exists sync on orders".into();
        assert!(lint(&p, &live).is_empty());
        p.contract.swap(0, 1);
        p.contract[0].sql = "drop trigger sync on orders".into();
        assert!(lint(&p, &live).is_empty());
    }

    #[test]
    fn a_migration_file_is_one_step_named_by_its_file() {
        let live = Catalog::offline(["orders"]);
        let found = |sql: &str| -> Vec<(String, &'static str)> {
            lint_file("0042_x.sql", sql, &live)
                .into_iter()
                .map(|f| (f.step, f.rule))
                .collect()
        };
        assert!(found(
            "create table notes (id int primary key, body text not null);
             create index notes_body on notes (body);
             alter table notes add check (id > 0);"
        )
        .is_empty());
        assert_eq!(
            found("-- a comment\ncreate index orders_total on orders (total);"),
            [("0042_x.sql".to_owned(), "index-without-concurrently")]
        );
        assert!(
            found("-- no-transaction\ncreate index concurrently o on orders (total);").is_empty()
        );
        assert_eq!(
            found("create index concurrently o on orders (total);\nanalyze orders;"),
            [(
                "0042_x.sql".to_owned(),
                "concurrently-in-multi-statement-step"
            )]
        );
    }

    #[test]
    fn the_shipped_orders_plan_is_clean_and_its_effects_are_known() {
        let plan = Plan::parse(include_str!(
            "../../../mercato/migrations/plans/orders_money_customers.toml"
        ))
        .expect("the shipped plan parses");
        let live = Catalog::offline(["legacy_orders", "merchants"]);
        assert_eq!(lint(&plan, &live), []);
        let effects: Vec<String> = plan
            .expand
            .iter()
            .flat_map(|s| sql::effects(&s.sql))
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            effects,
            [
                "table legacy_customers",
                "table order_records",
                "index order_records_by_id on order_records"
            ]
        );
        assert!(plan.dual_write.is_empty());
    }

    #[test]
    fn the_safe_forms_pass() {
        let safe = [
            "create index concurrently o_idx on orders (total)",
            "alter table orders add constraint fk foreign key (c) references customers (id) not valid",
            "alter table orders add constraint c check (total > 0) not valid",
            "alter table orders add constraint total_nn check (total is not null) not valid",
            "alter table orders add column note text default 'x'",
            "alter table orders add column at timestamptz default now()",
            "create table customers (id bigint primary key, email text not null)",
            "create index c_idx on customers (email)",
            "alter table customers add constraint c check (id > 0)",
            "-- drop table orders\nselect 'alter table orders alter column total type text'",
        ];
        assert!(rules(&safe, &[]).is_empty(), "{:?}", rules(&safe, &[]));
        let contract = [
            "alter table orders validate constraint total_nn",
            "alter table orders alter column total set not null",
            "drop table orders",
        ];
        let found = lint(&plan(&safe, &contract), &Catalog::offline(["orders"]));
        assert!(found.is_empty(), "{found:?}");
        // A validated CHECK on another condition does not make SET NOT NULL cheap.
        assert_eq!(
            rules(
                &[],
                &[
                    "alter table orders validate constraint c",
                    "alter table orders alter column total set not null"
                ]
            ),
            ["set-not-null-without-validated-check"]
        );
    }

    #[test]
    fn words_are_not_enough_the_syntax_tree_decides() {
        // Forms the word matcher missed: no CONSTRAINT keyword, no COLUMN keyword,
        // the second statement of a step.
        assert_eq!(
            rules(&["alter table orders add unique (total)"], &[]),
            ["unique-or-primary-key-without-index"]
        );
        assert_eq!(
            rules(&["alter table orders add check (total > 0)"], &[]),
            ["constraint-without-not-valid"]
        );
        assert_eq!(
            rules(&["alter table orders drop note"], &[]),
            ["drop-before-contract"]
        );
        assert_eq!(
            rules(
                &["alter table orders add column a int; create index i on orders (a)"],
                &[]
            ),
            ["index-without-concurrently"]
        );
        assert_eq!(
            rules(&["alter tabel orders add column a int"], &[]),
            ["unparsable"]
        );
        // A comment or a string cannot hide a problem.
        assert_eq!(
            rules(&["create /* concurrently */ index i on orders (a)"], &[]),
            ["index-without-concurrently"]
        );
    }

    #[test]
    fn what_squawk_does_not_cover_is_refused_too() {
        let cases: &[(&str, &str)] = &[
            (
                "alter table orders add column t text generated always as (lower(note)) stored",
                "stored-generated-column",
            ),
            (
                "alter table orders add column k uuid default gen_random_uuid()",
                "volatile-default",
            ),
            (
                "alter table orders add column n int not null",
                "not-null-without-default",
            ),
            (
                "alter table orders add primary key (id)",
                "unique-or-primary-key-without-index",
            ),
            (
                "alter table orders add constraint u unique (total)",
                "unique-or-primary-key-without-index",
            ),
            (
                "alter domain posint add constraint pos check (value > 0)",
                "domain-constraint-without-not-valid",
            ),
            ("drop database shop", "drop-database"),
            ("truncate orders", "truncate"),
            (
                "drop index orders_total_idx",
                "drop-index-without-concurrently",
            ),
            ("reindex table orders", "reindex-without-concurrently"),
            (
                "refresh materialized view totals",
                "refresh-without-concurrently",
            ),
            (
                "alter type mood rename value 'sad' to 'blue'",
                "rename-enum-value",
            ),
            ("alter table orders add column n bigserial", "serial-column"),
            (
                "alter table orders add column n bigint generated always as identity",
                "identity-column",
            ),
            ("update orders set total = 0", "whole-table-write"),
            ("delete from orders", "whole-table-write"),
            ("vacuum (full) orders", "vacuum-full"),
            ("vacuum full orders", "vacuum-full"),
            ("cluster orders using orders_pkey", "cluster"),
            ("lock orders", "explicit-lock"),
            ("lock table only orders in share mode", "explicit-lock"),
            ("alter table orders set unlogged", "table-rewrite"),
        ];
        for (sql, rule) in cases {
            let found = rules(&[sql], &[]);
            assert!(found.contains(rule), "{sql}: {found:?}");
        }
        // The safe forms of the same.
        for sql in [
            "vacuum (full false) orders",
            "update orders set total = 0 where id = 1",
            "create index concurrently new_idx on orders (total)",
            "reindex table concurrently orders",
            "alter type mood add value 'blue'",
            "alter table orders add constraint u unique using index u_idx",
        ] {
            let found = rules(&[sql], &["drop index concurrently orders_total_idx"]);
            assert!(found.is_empty(), "{sql}: {found:?}");
        }
    }

    #[test]
    fn the_live_schema_decides_type_changes_and_not_null() {
        let mut catalog = Catalog::offline(["orders"]);
        catalog.columns.insert(
            ("orders".into(), "note".into()),
            "character varying(20)".into(),
        );
        catalog
            .not_null_checks
            .insert(("orders".into(), "note".into()));
        let found = |sql: &str| -> Vec<&'static str> {
            lint(&plan(&[sql], &[]), &catalog)
                .into_iter()
                .map(|f| f.rule)
                .collect()
        };
        assert!(found("alter table orders alter column note type text").is_empty());
        assert!(found("alter table orders alter column note type varchar(40)").is_empty());
        assert_eq!(
            found("alter table orders alter column note type varchar(10)"),
            ["column-type-change"]
        );
        assert!(found("alter table orders alter column note set not null").is_empty());
        assert_eq!(
            found("alter table orders alter column total set not null"),
            ["set-not-null-without-validated-check"]
        );
    }

    #[test]
    fn findings_name_the_step_statement_table_why_and_what_instead() {
        let found = lint(
            &plan(
                &["alter table orders add column a int;\ncreate index i on orders (a)"],
                &[],
            ),
            &Catalog::offline(["orders"]),
        );
        assert_eq!(found.len(), 1);
        let line = found[0].to_string();
        assert_eq!(
            line,
            "expand[0] \"s0\" `create index i on orders (a)` on orders: index-without-concurrently — \
             CREATE INDEX blocks every write to the table while it builds; \
             instead: CREATE INDEX CONCURRENTLY (its own step, outside a transaction)"
        );
    }
}
