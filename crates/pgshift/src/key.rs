//! The backfill key: one or more columns of the source table, of any type
//! with a btree order (integers, UUIDs, text, timestamps, composites of
//! them), walked in keyset order with row-value comparisons so every window
//! is an index range scan.
//!
//! A position in the key space is the text of each key column of one row
//! (`["5b0e…", "42"]`); it is bound as text and cast back with the column's
//! own type, so comparisons use the column's order and its index.
//!
//! The plan's SQL selects a window's rows in one of two ways:
//! - `{{key_range}}` (or `{{key_range alias}}` to qualify the columns):
//!   pgshift writes the predicate, `((a, b) > ($1::uuid, $2::uuid) and
//!   (a, b) <= ($3::uuid, $4::uuid))`, leaving out a bound the window does
//!   not have (the first window starts at the beginning of the key space,
//!   the last validation range runs to its end). Any key.
//! - `$1` and `$2` (bigint): `key > $1 and key <= $2`, with `i64::MIN` and
//!   `i64::MAX` for the open ends. Only for a key of one integer column: the
//!   form older plans use, kept as it was.

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool, Postgres};

use crate::{quote_ident, Error};

/// A position in the key space: each key column of one row, as text.
pub type Position = Vec<String>;

/// The placeholder's name in `{{key_range}}`.
const PLACEHOLDER: &str = "key_range";

/// A key of one or more columns, for keyset windows and row-value
/// comparisons over it (public through [`crate::toolkit`]).
#[derive(Debug, Clone)]
pub struct Key {
    /// The key columns, quoted.
    columns: Vec<String>,
    /// Each column's type as SQL (`uuid`, `character varying(20)`), for casts.
    types: Vec<String>,
    /// One column of type smallint, integer or bigint: `$1`/`$2` plans work.
    pub(crate) integer: bool,
}

/// How [`Key::window`] returns the last key of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// `array[a::text, b::text]`: a [`Position`], each column as text.
    Texts,
    /// `{"a": …, "b": …}`: a `jsonb` object of the key columns.
    Json,
}

impl Key {
    /// A key of `columns` (unquoted names, in key order) whose SQL types are
    /// `types` (as `format_type` writes them: `uuid`, `bigint`, `text`).
    pub fn new(columns: &[String], types: &[String]) -> Key {
        Key {
            columns: columns.iter().map(|c| quote_ident(c)).collect(),
            types: types.to_vec(),
            integer: columns.len() == 1
                && matches!(types[0].as_str(), "smallint" | "integer" | "bigint"),
        }
    }

    /// The key columns of `source` with their types from the catalog.
    pub(crate) async fn resolve(
        pool: &PgPool,
        source: &str,
        columns: &[String],
    ) -> Result<Key, Error> {
        let mut types = Vec::with_capacity(columns.len());
        let mut integer = columns.len() == 1;
        for column in columns {
            let found: Option<(String, String)> = sqlx::query_as(
                "select format_type(a.atttypid, a.atttypmod), t.typname::text
                 from pg_attribute a join pg_type t on t.oid = a.atttypid
                 where a.attrelid = to_regclass($1) and a.attname = $2 and a.attnum > 0 and not a.attisdropped",
            )
            .bind(quote_ident(source))
            .bind(column)
            .fetch_optional(pool)
            .await?;
            let Some((sql_type, typname)) = found else {
                return Err(Error::Plan(format!(
                    "backfill.key: table {source} has no column {column}"
                )));
            };
            integer &= matches!(typname.as_str(), "int2" | "int4" | "int8");
            types.push(sql_type);
        }
        Ok(Key {
            columns: columns.iter().map(|c| quote_ident(c)).collect(),
            types,
            integer,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.columns.len()
    }

    /// `(a, b)`, each column qualified by `alias` when given.
    pub fn row(&self, alias: Option<&str>) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| match alias {
                Some(a) => format!("{a}.{c}"),
                None => c.clone(),
            })
            .collect();
        format!("({})", cols.join(", "))
    }

    /// `(a, b) <op> (v1::type_a, v2::type_b)`: the key (qualified by
    /// `alias`) against one value per column, each an SQL expression cast
    /// to its column's type so that an index range scan can use it. A value
    /// that is not a single term (`x ->> 'a'`) must come in parentheses.
    /// Panics unless there is one value per key column.
    pub fn compare(&self, alias: Option<&str>, op: &str, values: &[String]) -> String {
        assert_eq!(values.len(), self.len(), "one value per key column");
        let cast: Vec<String> = values
            .iter()
            .zip(&self.types)
            .map(|(v, t)| format!("{v}::{t}"))
            .collect();
        format!("{} {op} ({})", self.row(alias), cast.join(", "))
    }

    /// `$n`, `$n+1`, …: one parameter per key column.
    fn params(&self, first: usize) -> Vec<String> {
        (0..self.len()).map(|i| format!("${}", first + i)).collect()
    }

    fn order(&self, direction: &str) -> String {
        self.columns
            .iter()
            .map(|c| format!("{c} {direction}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The predicate for the window `(after, upto]`: parameters `$1…` hold
    /// `after` (if any), then `upto` (if any).
    fn predicate(&self, alias: Option<&str>, after: bool, upto: bool) -> String {
        let mut parts = Vec::new();
        if after {
            parts.push(self.compare(alias, ">", &self.params(1)));
        }
        if upto {
            let first = if after { self.len() + 1 } else { 1 };
            parts.push(self.compare(alias, "<=", &self.params(first)));
        }
        if parts.is_empty() {
            "(true)".into()
        } else {
            format!("({})", parts.join(" and "))
        }
    }

    /// The next window of `source` after the position in `$1…` (or from the
    /// start), at most `$n+1` rows: how many rows it holds and its last
    /// position (NULL past the end). Backfill batches and validation ranges
    /// both walk the key space with it.
    pub(crate) fn window_sql(&self, source: &str, after: bool) -> String {
        let limit = if after { self.len() + 1 } else { 1 };
        self.window(
            source,
            &self.predicate(None, after, false),
            &format!("${limit}"),
            Last::Texts,
        )
    }

    /// The next window of keys: the first `limit` keys of `from` (in key
    /// order) among the rows that pass `filter`, as one row of how many keys
    /// the window holds (`bigint`) and the last of them (NULL for an empty
    /// window), written as `last` says. `filter` bounds the window's start
    /// (`compare(None, ">", …)`, or nothing for the first) and may narrow
    /// the rows further; `limit` is SQL (`$2`, `1000`).
    pub fn window(&self, from: &str, filter: &str, limit: &str, last: Last) -> String {
        let last = match last {
            Last::Texts => {
                let texts: Vec<String> =
                    self.columns.iter().map(|c| format!("{c}::text")).collect();
                format!("array[{}]", texts.join(", "))
            }
            Last::Json => "to_jsonb(w)".to_owned(),
        };
        format!(
            "with w as (select {cols} from {from} where {filter} order by {asc} limit {limit})
             select (select count(*) from w), (select {last} from w order by {desc} limit 1)",
            cols = self.columns.join(", "),
            asc = self.order("asc"),
            desc = self.order("desc"),
        )
    }

    /// The rows of `source` after the position in `$1…` (all without one).
    pub(crate) fn count_after_sql(&self, source: &str, after: bool) -> String {
        format!(
            "select count(*) from {source} where {}",
            self.predicate(None, after, false)
        )
    }

    /// `statement` of the plan ready to run over the window `(after, upto]`
    /// (`None`: open at that end), with its arguments. `step` names it in
    /// errors.
    pub(crate) fn bind(
        &self,
        step: &str,
        statement: &str,
        after: Option<&[String]>,
        upto: Option<&[String]>,
    ) -> Result<(String, PgArguments), Error> {
        let mut args = PgArguments::default();
        if uses_key_range(statement) {
            let sql = expand(statement, |alias| {
                self.predicate(alias, after.is_some(), upto.is_some())
            });
            for position in [after, upto].into_iter().flatten() {
                self.check_len(position)?;
                for value in position {
                    push(&mut args, step, value.clone())?;
                }
            }
            return Ok((sql, args));
        }
        if !self.integer {
            return Err(Error::Plan(format!(
                "{step}: $1/$2 are bigint bounds, for a key of one integer column; write {{{{key_range}}}} where the statement selects its rows"
            )));
        }
        let int = |p: Option<&[String]>, open: i64| -> Result<i64, Error> {
            match p {
                None => Ok(open),
                Some(p) => {
                    self.check_len(p)?;
                    p[0].parse().map_err(|_| {
                        Error::Plan(format!("{step}: key value {:?} is not an integer", p[0]))
                    })
                }
            }
        };
        push(&mut args, step, int(after, i64::MIN)?)?;
        push(&mut args, step, int(upto, i64::MAX)?)?;
        Ok((statement.to_owned(), args))
    }

    /// The arguments of [`Key::window_sql`] (with a limit) and
    /// [`Key::count_after_sql`] (without).
    pub(crate) fn window_args(
        &self,
        after: Option<&[String]>,
        limit: Option<i64>,
    ) -> Result<PgArguments, Error> {
        let mut args = PgArguments::default();
        if let Some(after) = after {
            self.check_len(after)?;
            for value in after {
                push(&mut args, "backfill.key", value.clone())?;
            }
        }
        if let Some(limit) = limit {
            push(&mut args, "backfill.key", limit)?;
        }
        Ok(args)
    }

    fn check_len(&self, position: &[String]) -> Result<(), Error> {
        if position.len() == self.len() {
            Ok(())
        } else {
            Err(Error::Plan(format!(
                "the recorded key position has {} value(s) but backfill.key has {} column(s): \
                 the key changed since the backfill started; abort and expand again",
                position.len(),
                self.len()
            )))
        }
    }
}

fn push<T>(args: &mut PgArguments, step: &str, value: T) -> Result<(), Error>
where
    T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value)
        .map_err(|e| Error::Plan(format!("{step}: {e}")))
}

/// Whether `sql` names the window with `{{key_range}}`.
pub(crate) fn uses_key_range(sql: &str) -> bool {
    sql.contains("{{")
}

/// Each `{{…}}` of `sql` checked: `{{key_range}}` or `{{key_range alias}}`.
pub(crate) fn check_placeholders(sql: &str) -> Result<(), String> {
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            return Err("a '{{' without its '}}'".into());
        };
        let inside = &rest[start + 2..start + 2 + len];
        parse_placeholder(inside)?;
        rest = &rest[start + 2 + len + 2..];
    }
    Ok(())
}

/// The alias of `{{key_range alias}}` (`None` without one).
fn parse_placeholder(inside: &str) -> Result<Option<&str>, String> {
    let mut words = inside.split_whitespace();
    if words.next() != Some(PLACEHOLDER) {
        return Err(format!(
            "unknown placeholder {{{{{inside}}}}}; pgshift knows {{{{key_range}}}} and {{{{key_range alias}}}}"
        ));
    }
    let alias = words.next();
    if words.next().is_some() || alias.is_some_and(|a| !is_alias(a)) {
        return Err(format!(
            "{{{{{inside}}}}}: write {{{{key_range}}}} or {{{{key_range alias}}}} with one table alias"
        ));
    }
    Ok(alias)
}

fn is_alias(a: &str) -> bool {
    let quoted = a.len() > 2 && a.starts_with('"') && a.ends_with('"');
    quoted
        || (a.starts_with(|c: char| c.is_alphabetic() || c == '_')
            && a.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$'))
}

/// `sql` with each `{{key_range [alias]}}` replaced by `predicate(alias)`.
/// (Placeholders were checked when the plan was read.)
fn expand(sql: &str, predicate: impl Fn(Option<&str>) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let alias = parse_placeholder(&rest[start + 2..start + 2 + len]).unwrap_or(None);
        out.push_str(&predicate(alias));
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

/// A position as people read it: `42`, or `(5b0e…, 42)` for several columns.
pub(crate) fn show(position: &[String]) -> String {
    match position {
        [one] => one.clone(),
        many => format!("({})", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(columns: &[&str], types: &[&str]) -> Key {
        Key {
            columns: columns.iter().map(|c| quote_ident(c)).collect(),
            types: types.iter().map(|t| t.to_string()).collect(),
            integer: false,
        }
    }

    #[test]
    fn key_range_expands_to_row_comparisons_with_the_columns_types() {
        let k = key(&["merchant_id", "id"], &["uuid", "uuid"]);
        let s = |after, upto| {
            expand(
                "select 1 from t o where {{key_range o}} and {{ key_range }}",
                |a| k.predicate(a, after, upto),
            )
        };
        assert_eq!(
            s(true, true),
            r#"select 1 from t o where ((o."merchant_id", o."id") > ($1::uuid, $2::uuid) and (o."merchant_id", o."id") <= ($3::uuid, $4::uuid)) and (("merchant_id", "id") > ($1::uuid, $2::uuid) and ("merchant_id", "id") <= ($3::uuid, $4::uuid))"#
        );
        assert_eq!(
            s(false, true),
            r#"select 1 from t o where ((o."merchant_id", o."id") <= ($1::uuid, $2::uuid)) and (("merchant_id", "id") <= ($1::uuid, $2::uuid))"#
        );
        assert_eq!(s(false, false), "select 1 from t o where (true) and (true)");
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        assert!(check_placeholders("where {{key_range}} and {{key_range o}}").is_ok());
        assert!(check_placeholders("where {{key_range \"O\"}}").is_ok());
        assert!(check_placeholders("where {{range}}")
            .unwrap_err()
            .contains("unknown placeholder {{range}}"));
        assert!(check_placeholders("where {{key_range a b}}").is_err());
        assert!(check_placeholders("where {{key_range a;drop}}").is_err());
        assert!(check_placeholders("where {{key_range").is_err());
    }

    #[test]
    fn positions_read_as_one_value_or_a_tuple() {
        assert_eq!(show(&["42".into()]), "42");
        assert_eq!(show(&["a".into(), "7".into()]), "(a, 7)");
    }
}
