//! Lint: refuse what would lock or rewrite a live table, before anything runs.
//!
//! The rules follow squawk's and strong_migrations' checklists. A table is
//! *live* if it exists before the migration; tables the plan itself creates
//! may be changed freely until they hold data.

use std::collections::HashSet;
use std::fmt;

use crate::plan::{Plan, Step};
use crate::sql;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where: `expand[2] "orders_total_minor"`.
    pub step: String,
    pub rule: &'static str,
    /// Why it is dangerous.
    pub why: &'static str,
    /// What to do instead.
    pub instead: &'static str,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} — {}; instead: {}",
            self.step, self.rule, self.why, self.instead
        )
    }
}

/// Words of a statement, lower-cased, with `(`, `)` and `,` as words of their own.
pub(crate) fn words(sql: &str) -> Vec<String> {
    sql.replace('(', " ( ")
        .replace(')', " ) ")
        .replace(',', " , ")
        .replace(';', " ; ")
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_lowercase())
        .collect()
}

fn contains_seq(words: &[String], seq: &[&str]) -> bool {
    words
        .windows(seq.len())
        .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
}

/// The word after the last of `prefix` (skipping `only`, `if`, `not`, `exists`).
fn name_after(words: &[String], prefix: &[&str]) -> Option<String> {
    let at = words
        .windows(prefix.len())
        .position(|w| w.iter().zip(prefix).all(|(a, b)| a == b))?;
    words[at + prefix.len()..]
        .iter()
        .find(|w| {
            !matches!(
                w.as_str(),
                "only" | "if" | "not" | "exists" | "concurrently"
            )
        })
        .cloned()
}

/// The table a `create index … on <table>` names.
fn index_table(words: &[String]) -> Option<String> {
    let on = words.iter().position(|w| w == "on")?;
    words[on + 1..].iter().find(|w| *w != "only").cloned()
}

fn bare(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

const VOLATILE_DEFAULTS: &[&str] = &[
    "random",
    "clock_timestamp",
    "gen_random_uuid",
    "uuid_generate_v4",
    "timeofday",
    "nextval",
];

fn transaction_control_finding(step: String) -> Finding {
    Finding {
        step,
        rule: "transaction-control",
        why: "BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE or PREPARE TRANSACTION in a step ends or splits \
              the transaction pgshift runs it in: a step can report success while its work was rolled back, \
              or commit apart from its record",
        instead: "leave transactions to pgshift: each step runs in one transaction (split work into steps)",
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

/// Lints every step. `live` holds the tables that exist before the migration.
pub fn lint(plan: &Plan, live: &HashSet<String>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut created: HashSet<String> = HashSet::new();
    let sections: [(&str, &[Step]); 4] = [
        ("expand", &plan.expand),
        ("dual_write", &plan.dual_write),
        ("contract", &plan.contract),
        ("abort", &plan.abort),
    ];
    for (section, steps) in sections {
        let mut validated_before = false;
        for (i, step) in steps.iter().enumerate() {
            let w = words(&step.sql);
            let at = format!("{section}[{i}] {:?}", step.name);
            let mut find = |rule, why, instead| {
                findings.push(Finding {
                    step: at.clone(),
                    rule,
                    why,
                    instead,
                })
            };
            if let Some(t) = name_after(&w, &["create", "table"]) {
                created.insert(bare(&t).to_owned());
            }
            let altered = name_after(&w, &["alter", "table"]).map(|t| bare(&t).to_owned());
            let is_live = |t: &Option<String>| {
                t.as_ref()
                    .is_some_and(|t| live.contains(t) && !created.contains(t))
            };
            let live_alter = is_live(&altered);
            let index_on = if contains_seq(&w, &["index"]) {
                index_table(&w).map(|t| bare(&t).to_owned())
            } else {
                None
            };
            let missing = [&altered, &index_on]
                .into_iter()
                .flatten()
                .any(|t| !live.contains(t) && !created.contains(t));
            if missing && section != "abort" {
                find(
                    "missing-table",
                    "the step names a table that neither exists nor is created earlier in the plan",
                    "check the table name, or create it in an earlier expand step",
                );
            }

            if contains_seq(&w, &["create", "index"])
                || contains_seq(&w, &["create", "unique", "index"])
            {
                let table = index_table(&w).map(|t| bare(&t).to_owned());
                if is_live(&table) && !w.iter().any(|x| x == "concurrently") {
                    find(
                        "index-without-concurrently",
                        "CREATE INDEX blocks every write to the table while it builds",
                        "CREATE INDEX CONCURRENTLY (its own step, outside a transaction)",
                    );
                }
            }
            if w.iter().any(|x| x == "concurrently") && w.iter().filter(|x| *x == ";").count() > 1 {
                find(
                    "concurrently-in-multi-statement-step",
                    "CONCURRENTLY cannot run inside the transaction a multi-statement step opens",
                    "put the statement in a step of its own",
                );
            }
            let adds_fk =
                w.iter().any(|x| x == "references") || contains_seq(&w, &["foreign", "key"]);
            if live_alter && adds_fk && !contains_seq(&w, &["not", "valid"]) {
                find(
                    "foreign-key-without-not-valid",
                    "adding a foreign key scans the table under a lock that blocks writes to both tables",
                    "ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in a later step",
                );
            }
            if live_alter
                && contains_seq(&w, &["add", "constraint"])
                && w.iter().any(|x| x == "check")
                && !contains_seq(&w, &["not", "valid"])
            {
                find(
                    "check-without-not-valid",
                    "adding a CHECK scans the whole table under an ACCESS EXCLUSIVE lock",
                    "ADD CONSTRAINT … CHECK (…) NOT VALID, then VALIDATE CONSTRAINT in a later step",
                );
            }
            if live_alter && contains_seq(&w, &["set", "not", "null"]) && !validated_before {
                find(
                    "set-not-null-without-validated-check",
                    "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
                    "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in an earlier step, then SET NOT NULL",
                );
            }
            if live_alter
                && w.iter().any(|x| x == "alter")
                && w.iter().any(|x| x == "type")
                && !contains_seq(&w, &["create", "type"])
            {
                find(
                    "column-type-change",
                    "changing a column's type rewrites the table and its indexes under an ACCESS EXCLUSIVE lock",
                    "add a new column, dual-write and backfill it, switch reads, drop the old one",
                );
            }
            if live_alter
                && contains_seq(&w, &["add", "column"])
                && w.iter().any(|x| x == "default")
            {
                let volatile = w.iter().any(|x| VOLATILE_DEFAULTS.contains(&x.as_str()));
                if volatile {
                    find(
                        "volatile-default",
                        "a volatile default is computed per row: the whole table is rewritten",
                        "add the column without a default (or with a constant), then backfill",
                    );
                }
            }
            let drops =
                contains_seq(&w, &["drop", "table"]) || contains_seq(&w, &["drop", "column"]);
            if drops && matches!(section, "expand" | "dual_write") {
                find(
                    "drop-before-contract",
                    "dropping breaks every reader and writer still on the old shape, and cannot be undone",
                    "move the drop to the contract steps",
                );
            }
            if live_alter && w.iter().any(|x| x == "rename") && section == "expand" {
                find(
                    "rename-live",
                    "renaming breaks every running reader and writer of the old name at once",
                    "add the new name alongside, dual-write, switch, drop the old in contract",
                );
            }
            if contains_seq(&w, &["lock", "table"])
                || contains_seq(&w, &["vacuum", "full"])
                || w.first().is_some_and(|x| x == "cluster")
            {
                find(
                    "explicit-heavy-lock",
                    "LOCK TABLE, VACUUM FULL and CLUSTER hold an ACCESS EXCLUSIVE lock for their whole run",
                    "leave them out of online migrations",
                );
            }
            if contains_seq(&w, &["validate", "constraint"]) {
                validated_before = true;
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
        let w = words(statement);
        if contains_seq(&w, &["do", "update"]) {
            findings.push(Finding {
                step: format!("backfill.transform[{i}]"),
                rule: "backfill-overwrites",
                why: "the backfill copies from an older snapshot; overwriting can put a stale row back over a newer dual-write",
                instead: "insert only what is missing: ON CONFLICT … DO NOTHING (dual-writes upsert, the backfill never overwrites)",
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
        let live: HashSet<String> = ["orders".to_owned()].into();
        lint(&plan(expand, contract), &live)
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
            ["foreign-key-without-not-valid"]
        );
        assert_eq!(
            rules(
                &["alter table orders add constraint c check (total > 0)"],
                &[]
            ),
            ["check-without-not-valid"]
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
        assert_eq!(rules(&["lock table orders"], &[]), ["explicit-heavy-lock"]);
        assert_eq!(
            rules(&["alter table nowhere add column x int"], &[]),
            ["missing-table"]
        );
    }

    #[test]
    fn a_backfill_that_overwrites_is_refused() {
        let mut p = plan(&[], &[]);
        p.backfill.transform = vec!["insert into t select * from orders where id > $1 and id <= $2 on conflict (id) do update set x = 1".into()];
        let found: Vec<_> = lint(&p, &HashSet::new())
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
        let found: Vec<_> = lint(&p, &HashSet::new())
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
            &["orders".to_owned()].into(),
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
        let live: HashSet<String> = ["orders".to_owned()].into();
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
    fn the_shipped_orders_plan_is_clean_and_its_effects_are_known() {
        let plan = Plan::parse(include_str!(
            "../../mercato/migrations/plans/orders_money_customers.toml"
        ))
        .expect("the shipped plan parses");
        let live: HashSet<String> = ["legacy_orders".to_owned(), "merchants".to_owned()].into();
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
                "table customers",
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
            "alter table orders add column note text default 'x'",
            "create table customers (id bigint primary key, email text not null)",
            "create index c_idx on customers (email)",
            "alter table customers add constraint c check (id > 0)",
        ];
        assert!(rules(&safe, &[]).is_empty(), "{:?}", rules(&safe, &[]));
        let contract = [
            "alter table orders validate constraint c",
            "alter table orders alter column total set not null",
            "drop table orders",
        ];
        assert!(
            rules(&[], &contract).is_empty(),
            "{:?}",
            rules(&[], &contract)
        );
    }
}
