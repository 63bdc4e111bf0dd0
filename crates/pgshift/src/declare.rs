//! The declarative form of a plan: say the new columns (type and `up`, from
//! the old shape) and the old columns that go (with `down`, from the new
//! shape), and pgshift writes the whole migration: the expand DDL, a sync
//! trigger that keeps both shapes current whichever one a writer uses, the
//! backfill, the validation checksums, contract and abort; and, on request, a
//! schema of views per version so that raw-SQL clients and old application
//! versions read and write their own shape (`SET search_path`).
//!
//! The change is made in place, on the table itself (as Reshape and pgroll
//! do): new columns are added nullable, the trigger fills them, the backfill
//! touches the rows written before it existed, and contract drops the old
//! columns and makes the new ones NOT NULL through validated checks (no scan
//! under an exclusive lock). Compiling is pure: the result is an ordinary
//! [`Plan`], checked and run like a hand-written one.

use serde::Deserialize;

use crate::plan::{Backfill, Plan, Step, Switch, Validate};
use crate::{quote_ident, Error};

/// A declarative plan as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Declared {
    name: String,
    /// The table that changes shape (in the connection's search_path).
    table: String,
    /// Its key: one column or several, as the backfill's.
    #[serde(deserialize_with = "crate::plan::one_or_many")]
    key: Vec<String>,
    /// Two schema names, the old shape's and the new shape's: each gets a
    /// view named like the table with that version's columns, granted as
    /// the table is. Optional.
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    readers: Vec<String>,
    #[serde(default = "crate::plan::default_lock_timeout_ms")]
    lock_timeout_ms: u64,
    #[serde(default)]
    add: Vec<Added>,
    #[serde(default)]
    remove: Vec<Removed>,
    #[serde(default)]
    backfill: Tuning,
    switch: Option<Switch>,
    #[serde(default)]
    validate: Chunking,
    /// Hand-written steps for what the declarative form cannot say, run
    /// after the generated ones of their section.
    #[serde(default)]
    expand: Vec<Step>,
    #[serde(default)]
    contract: Vec<Step>,
    #[serde(default)]
    abort: Vec<Step>,
}

/// A column of the new shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Added {
    column: String,
    /// Its SQL type (`text`, `bigint`, `numeric(12, 2)`, …).
    #[serde(rename = "type")]
    sql_type: String,
    /// Its value from the old shape's columns (an SQL expression over them).
    up: String,
    /// May it be NULL once the migration is done? (default: no)
    #[serde(default)]
    null: bool,
    /// A CHECK condition on the new shape, validated before contract.
    check: Option<String>,
}

/// A column of the old shape that the new one no longer has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Removed {
    column: String,
    /// Its value from the new shape's columns, for writers on the new shape
    /// while old readers remain. Without it, such writes leave the column to
    /// its default (so it needs one, or to allow NULL).
    down: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tuning {
    batch_size: Option<i64>,
    max_batch_size: Option<i64>,
    target_batch_ms: Option<f64>,
    duty_cycle: Option<f64>,
    max_probe_ms: Option<f64>,
    max_lock_waiters: Option<i64>,
    max_replication_lag_s: Option<f64>,
    vacuum: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Chunking {
    chunk_size: Option<i64>,
}

/// Whether a plan's text is in the declarative form (it names a `table`).
pub(crate) fn is_declarative(value: &toml::Table) -> bool {
    value.contains_key("table")
}

impl Declared {
    /// The plan this declaration stands for.
    pub(crate) fn compile(self) -> Result<Plan, Error> {
        let bad = |m: String| Err(Error::Plan(m));
        if self.add.is_empty() && self.remove.is_empty() {
            return bad("add/remove: declare at least one column".into());
        }
        if !self.versions.is_empty() && self.versions.len() != 2 {
            return bad("versions: name two schemas, the old shape's then the new shape's".into());
        }
        if self.versions.len() == 2 && self.versions[0] == self.versions[1] {
            return bad("versions: the two schemas must differ".into());
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, c) in self.add.iter().map(|a| &a.column).enumerate() {
            if c.is_empty() || seen.contains(&c.as_str()) || self.key.contains(c) {
                return bad(format!(
                    "add[{i}].column: {c:?} is empty, named twice or a key column"
                ));
            }
            seen.push(c);
        }
        for (i, r) in self.remove.iter().enumerate() {
            if r.column.is_empty()
                || seen.contains(&r.column.as_str())
                || self.key.contains(&r.column)
            {
                return bad(format!(
                    "remove[{i}].column: {:?} is empty, named twice or a key column",
                    r.column
                ));
            }
            seen.push(&r.column);
        }
        let t = quote_ident(&self.table);
        let name = &self.name;
        let sync = quote_ident(&format!("pgshift_{name}_sync"));
        let adds: Vec<String> = self.add.iter().map(|a| quote_ident(&a.column)).collect();
        let removes: Vec<String> = self.remove.iter().map(|r| quote_ident(&r.column)).collect();
        let key: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
        let not_null: Vec<(String, String)> = self
            .add
            .iter()
            .filter(|a| !a.null)
            .map(|a| {
                let constraint = format!("{}_{}_not_null", self.table, a.column);
                (quote_ident(&a.column), quote_ident(&constraint))
            })
            .collect();
        let checks: Vec<(String, &str)> = self
            .add
            .iter()
            .filter_map(|a| {
                let check = a.check.as_deref()?;
                Some((
                    quote_ident(&format!("{}_{}_check", self.table, a.column)),
                    check,
                ))
            })
            .collect();

        let mut expand = vec![Step {
            name: format!(
                "add {}",
                self.add
                    .iter()
                    .map(|a| a.column.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            sql: format!(
                "alter table {t} {}",
                self.add
                    .iter()
                    .map(|a| format!("add column {} {}", quote_ident(&a.column), a.sql_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }];
        let constraints: Vec<String> =
            not_null
                .iter()
                .map(|(c, name)| format!("add constraint {name} check ({c} is not null) not valid"))
                .chain(checks.iter().map(|(name, check)| {
                    format!("add constraint {name} check ({check}) not valid")
                }))
                .collect();
        // Added once the trigger fills the new columns (a dual_write step
        // after it): before, an old-shape insert would leave them NULL.
        let constraints_step = (!constraints.is_empty()).then(|| Step {
            name: "constraints of the new columns (checked on writes, validated before contract)"
                .into(),
            sql: format!("alter table {t} {}", constraints.join(", ")),
        });
        if self.add.is_empty() {
            // Nothing to add: only removals, whose columns the new shape's
            // view leaves out; the steps below still need a first step.
            expand.clear();
        }
        expand.extend(self.expand);

        let up = assign(
            &self
                .add
                .iter()
                .map(|a| (&a.column, a.up.as_str()))
                .collect::<Vec<_>>(),
        );
        let down_columns: Vec<(&String, &str)> = self
            .remove
            .iter()
            .filter_map(|r| Some((&r.column, r.down.as_deref()?)))
            .collect();
        let down = assign(&down_columns);
        let row = |prefix: &str, cols: &[String]| {
            format!(
                "row({})",
                cols.iter()
                    .map(|c| format!("{prefix}.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut body = String::from("#variable_conflict use_column\nbegin\n");
        if !adds.is_empty() {
            // Which shape wrote. An insert whose new columns are all NULL came
            // from the old shape; any other from the new one. An update that
            // changed the new columns came from the new shape; one that changed
            // the removed columns (with none removed: any other column) from
            // the old one; one that changed neither leaves the row be, unless
            // its new columns are not filled yet (the backfill's touch).
            let new_adds = row("new", &adds);
            body.push_str(&format!(
                "    if tg_op = 'INSERT' then\n        if {new_adds} is null then\n{up}"
            ));
            if !down.is_empty() {
                body.push_str(&format!("        else\n{down}"));
            }
            body.push_str("        end if;\n");
            // The new shape's writer on a row not filled yet (the backfill
            // has not reached it): what it did not set comes from the old
            // shape first, so `down` sees a whole row.
            let fill = fill_unset(&self.add);
            body.push_str(&format!(
                "    elsif {} is null and {new_adds} is distinct from {} then\n{fill}{down}",
                row("old", &adds),
                row("old", &adds)
            ));
            body.push_str(&format!(
                "    elsif {new_adds} is distinct from {} then\n{}",
                row("old", &adds),
                if down.is_empty() {
                    "        null;\n"
                } else {
                    &down
                }
            ));
            let old_side_changed = if removes.is_empty() {
                let others = format!(
                    "array[{}]::text[]",
                    self.add
                        .iter()
                        .map(|a| sql_literal(&a.column))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                format!("(to_jsonb(new) - {others}) is distinct from (to_jsonb(old) - {others})")
            } else {
                format!(
                    "{} is distinct from {}",
                    row("new", &removes),
                    row("old", &removes)
                )
            };
            body.push_str(&format!(
                "    elsif {old_side_changed} or {new_adds} is null then\n{up}    end if;\n"
            ));
        } else if !down.is_empty() {
            body.push_str(&format!(
                "    if tg_op = 'INSERT' then\n{down}    end if;\n"
            ));
        }
        body.push_str("    return new;\nend");
        let mut dual_write = vec![Step {
            name: "sync both shapes".into(),
            sql: format!(
                "create function {sync}() returns trigger language plpgsql as $pgshift$\n{body}\n$pgshift$;\n\
                 create trigger {sync} before insert or update on {t}\n    for each row execute function {sync}()"
            ),
        }];
        dual_write.extend(constraints_step);
        let mut contract = Vec::new();
        let mut abort_sql = Vec::new();
        if let [old, new] = self.versions.as_slice() {
            let dropped_from = |version: &str, columns: &[&str]| Step {
                name: format!("views of version {version}"),
                sql: version_view(&self.table, version, columns),
            };
            let added: Vec<&str> = self.add.iter().map(|a| a.column.as_str()).collect();
            let removed: Vec<&str> = self.remove.iter().map(|r| r.column.as_str()).collect();
            dual_write.push(dropped_from(old, &added));
            dual_write.push(dropped_from(new, &removed));
            contract.push(format!(
                "drop view if exists {}.{t}; drop schema if exists {}",
                quote_ident(old),
                quote_ident(old)
            ));
            for v in [old, new] {
                abort_sql.push(format!(
                    "drop view if exists {}.{t}; drop schema if exists {}",
                    quote_ident(v),
                    quote_ident(v)
                ));
            }
        }
        let mut contract_steps = Vec::new();
        if !removes.is_empty() || !contract.is_empty() {
            if !removes.is_empty() {
                contract.push(format!(
                    "alter table {t} {}",
                    removes
                        .iter()
                        .map(|c| format!("drop column {c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            contract_steps.push(Step {
                name: "drop the old shape".into(),
                sql: contract.join(";\n"),
            });
        }
        let validated: Vec<String> = not_null
            .iter()
            .map(|(_, n)| n)
            .chain(checks.iter().map(|(n, _)| n))
            .map(|n| format!("alter table {t} validate constraint {n}"))
            .collect();
        if !validated.is_empty() {
            contract_steps.push(Step {
                name: "validate the new columns' constraints (a scan that blocks no writer)".into(),
                sql: validated.join(";\n"),
            });
        }
        if !not_null.is_empty() {
            contract_steps.push(Step {
                name: "the new columns NOT NULL (proved by the validated checks: no scan)".into(),
                sql: format!(
                    "alter table {t} {}",
                    not_null
                        .iter()
                        .map(|(c, _)| format!("alter column {c} set not null"))
                        .chain(not_null.iter().map(|(_, n)| format!("drop constraint {n}")))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        contract_steps.extend(self.contract);
        if !adds.is_empty() {
            abort_sql.push(format!(
                "alter table {t} {}",
                adds.iter()
                    .map(|c| format!("drop column if exists {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut abort = vec![Step {
            name: "drop the new shape".into(),
            sql: abort_sql.join(";\n"),
        }];
        abort.extend(self.abort);

        let key_list = key.join(", ");
        let new_row = format!("row({key_list}, {})", adds.join(", "));
        let up_row = format!(
            "row({key_list}, {})",
            self.add
                .iter()
                .map(|a| format!("({})::{}", a.up, a.sql_type))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A row is consistent if its new columns are `up` of its old ones, or
        // (written on the new shape) its old columns are `down` of its new
        // ones: `down` need not undo `up` exactly (a name split at the first
        // space, then joined again), only agree with what was written.
        let expected =
            if down_columns.is_empty() {
                up_row
            } else {
                format!(
                "case when row({}) is not distinct from row({}) then {new_row} else {up_row} end",
                down_columns.iter().map(|(c, _)| quote_ident(c)).collect::<Vec<_>>().join(", "),
                down_columns.iter().map(|(_, d)| format!("({d})")).collect::<Vec<_>>().join(", "),
            )
            };
        let checksum = |value: &str| {
            format!(
                "select count(*), md5(string_agg(({value})::text, ',' order by {key_list})) from {t} where {{{{key_range}}}}"
            )
        };
        let (validate_source, validate_target) = if adds.is_empty() {
            // Only removals: nothing new to compare; the counts still must agree.
            let rows = format!("row({key_list})");
            (checksum(&rows), checksum(&rows))
        } else {
            (checksum(&expected), checksum(&new_row))
        };
        let defaults = crate::plan::Backfill::defaults();
        let tuning = self.backfill;
        let backfill = Backfill {
            source: self.table.clone(),
            key: self.key.clone(),
            // A touch: the sync trigger fills the row's new columns from its
            // old ones. Only rows not filled yet, so a row written on the new
            // shape is never recomputed from its `down` values.
            transform: vec![if adds.is_empty() {
                format!("select 1 from {t} where {{{{key_range}}}} limit 0")
            } else {
                format!(
                    "update {t} set {k} = {k} where {{{{key_range}}}} and row({}) is null",
                    adds.join(", "),
                    k = key[0]
                )
            }],
            batch_size: tuning.batch_size.unwrap_or(defaults.batch_size),
            max_batch_size: tuning.max_batch_size.unwrap_or(defaults.max_batch_size),
            target_batch_ms: tuning.target_batch_ms.unwrap_or(defaults.target_batch_ms),
            duty_cycle: tuning.duty_cycle.unwrap_or(defaults.duty_cycle),
            max_probe_ms: tuning.max_probe_ms.unwrap_or(defaults.max_probe_ms),
            max_lock_waiters: tuning.max_lock_waiters.unwrap_or(defaults.max_lock_waiters),
            max_replication_lag_s: tuning
                .max_replication_lag_s
                .unwrap_or(defaults.max_replication_lag_s),
            vacuum: tuning.vacuum.unwrap_or(defaults.vacuum),
            vacuum_cost_delay_ms: defaults.vacuum_cost_delay_ms,
        };
        Ok(Plan {
            name: self.name,
            readers: self.readers,
            lock_timeout_ms: self.lock_timeout_ms,
            expand,
            dual_write,
            backfill,
            switch: self.switch,
            validate: Validate {
                source: validate_source,
                target: validate_target,
                chunk_size: self.validate.chunk_size.unwrap_or(10_000),
            },
            contract: contract_steps,
            abort,
        })
    }
}

/// PL/pgSQL setting `columns` of `new` to their expressions, evaluated over
/// the row as it is being written (columns named bare, as in the plan).
fn assign(columns: &[(&String, &str)]) -> String {
    if columns.is_empty() {
        return String::new();
    }
    format!(
        "            select {} into {} from (select new.*) as row_being_written;\n",
        columns
            .iter()
            .map(|(_, e)| format!("({e})"))
            .collect::<Vec<_>>()
            .join(", "),
        columns
            .iter()
            .map(|(c, _)| format!("new.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// PL/pgSQL setting each new column the writer left NULL to its `up`.
fn fill_unset(added: &[Added]) -> String {
    format!(
        "            select {} into {} from (select new.*) as row_being_written;\n",
        added
            .iter()
            .map(|a| format!(
                "coalesce(row_being_written.{}, ({}))",
                quote_ident(&a.column),
                a.up
            ))
            .collect::<Vec<_>>()
            .join(", "),
        added
            .iter()
            .map(|a| format!("new.{}", quote_ident(&a.column)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A DO block creating schema `version` with a view named like `table`: every
/// column of the table but `hidden`, with the caller's privileges and row
/// security (`security_invoker`), granted to whoever holds privileges on the
/// table. Auto-updatable, so clients write through it (the sync trigger fills
/// the other shape); the column list is read from the catalog when it runs.
fn version_view(table: &str, version: &str, hidden: &[&str]) -> String {
    let lit = sql_literal;
    let hidden = hidden.iter().map(|c| lit(c)).collect::<Vec<_>>().join(", ");
    format!(
        "do $pgshift$
declare
    t regclass := to_regclass({table_ident});
    cols text;
    g record;
begin
    if t is null then
        raise exception 'table % does not exist', {table_lit};
    end if;
    execute format('create schema if not exists %I', {version_lit});
    select string_agg(quote_ident(attname), ', ' order by attnum) into cols
    from pg_attribute
    where attrelid = t and attnum > 0 and not attisdropped and attname <> all (array[{hidden}]::text[]);
    execute format('create or replace view %I.%I with (security_invoker = true) as select %s from %s',
                   {version_lit}, {table_lit}, cols, t);
    for g in
        select distinct a.privilege_type as privilege, a.grantee
        from pg_class c, aclexplode(c.relacl) a
        where c.oid = t and a.privilege_type in ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
          and a.grantee <> c.relowner
    loop
        execute format('grant usage on schema %I to %s', {version_lit},
                       case when g.grantee = 0 then 'public' else g.grantee::regrole::text end);
        execute format('grant %s on %I.%I to %s', g.privilege, {version_lit}, {table_lit},
                       case when g.grantee = 0 then 'public' else g.grantee::regrole::text end);
    end loop;
end $pgshift$",
        table_ident = lit(&quote_ident(table)),
        table_lit = lit(table),
        version_lit = lit(version),
    )
}

fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/declarative.toml");

    #[test]
    fn the_example_compiles_to_a_whole_plan_that_lints_clean() {
        let plan = Plan::parse(EXAMPLE).expect("parses");
        let names = |steps: &[Step]| steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plan.expand).len(), 1, "{:?}", names(&plan.expand));
        assert_eq!(
            names(&plan.dual_write),
            [
                "sync both shapes",
                "constraints of the new columns (checked on writes, validated before contract)",
                "views of version members_v1",
                "views of version members_v2"
            ]
        );
        assert_eq!(
            names(&plan.contract).len(),
            3,
            "{:?}",
            names(&plan.contract)
        );
        assert_eq!(plan.backfill.source, "members");
        assert_eq!(plan.backfill.key, ["id"]);
        assert!(plan.switch.is_none() && plan.readers.is_empty());
        let findings = crate::lint::lint(&plan, &crate::lint::Catalog::offline(["members"]));
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn declarations_that_cannot_work_are_refused_naming_the_field() {
        let with = |extra: &str| {
            Plan::parse(&format!(
                "name = \"p\"\ntable = \"t\"\nkey = \"id\"\n{extra}"
            ))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let add = |col: &str| format!("[[add]]\ncolumn = \"{col}\"\ntype = \"int\"\nup = \"1\"\n");
        assert!(with("").contains("add/remove"));
        assert!(with(&add("id")).contains("add[0].column"));
        assert!(with(&format!("{}{}", add("a"), add("a"))).contains("add[1].column"));
        assert!(
            with(&format!("{}[[remove]]\ncolumn = \"a\"\n", add("a"))).contains("remove[0].column")
        );
        assert!(with(&format!("versions = [\"v1\"]\n{}", add("a"))).contains("versions"));
        assert!(with(&format!("versions = [\"v\", \"v\"]\n{}", add("a"))).contains("versions"));
        assert!(with(&format!("{}colour = 1\n", add("a"))).contains("unknown field"));
        assert_eq!(with(&add("a")), "");
    }
}
