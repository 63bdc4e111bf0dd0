//! The catalogue: the tenant tables a move carries, parents first, and the
//! SQL each phase runs on one of them, written from its name, key and
//! columns with `pgshift::toolkit` (quoting, key comparisons, windows, row
//! hashes). A key travels as a JSON object of its columns (`{"id": …}`), the
//! form the capture triggers record it in.

use pgshift::toolkit::{self, column_list, quote_ident, quote_literal, Key, Last};
use serde_json::Value;
use sqlx::PgPool;

/// Tables that stay in the main database whatever cell serves the merchant
/// (the directory: who the merchant is and its keys), and the cells' own.
const NOT_MOVED: &[&str] = &[
    "merchants",
    "api_keys",
    "staff",
    "staff_invitations",
    "publishable_keys",
    "people",
    "sessions",
    "tenant_directory",
    "tenant_moves",
    "cell_absent",
    "move_changes",
    "_sqlx_migrations",
];

/// A tenant table as the move sees it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub key: Vec<String>,
    /// The SQL types of `key`, in order.
    pub key_types: Vec<String>,
    /// Columns an INSERT may name (generated ones are left out).
    pub columns: Vec<String>,
    /// Its foreign keys to other tenant tables: (parent, columns here,
    /// columns there).
    pub parents: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Table {
    /// The table's name as SQL.
    pub(super) fn sql(&self) -> String {
        quote_ident(&self.name)
    }

    /// The key, for row-value comparisons and keyset windows.
    pub(super) fn key_columns(&self) -> Key {
        Key::new(&self.key, &self.key_types)
    }

    /// `(key) <op> (the key of JSON parameter $n)`, with the parameter cast
    /// to the key's types so an index range scan can use it.
    pub(super) fn key_vs(&self, op: &str, param: usize) -> String {
        self.key_against(op, &format!("${param}::jsonb"))
    }

    /// `key_vs` with the key inlined as a literal: for `COPY`, which takes
    /// no parameters (the cast of a constant is folded, so the range scan
    /// is the same).
    pub(super) fn key_vs_literal(&self, op: &str, key: &Value) -> String {
        self.key_against(op, &format!("{}::jsonb", quote_literal(&key.to_string())))
    }

    fn key_against(&self, op: &str, json: &str) -> String {
        let fields: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("({json} ->> {})", quote_literal(k)))
            .collect();
        self.key_columns().compare(Some(&self.sql()), op, &fields)
    }

    /// `and (key) > (cursor)`, the key inlined (nothing for a `null` cursor).
    pub(super) fn after_cursor(&self, cursor: &Value) -> String {
        if cursor.is_null() {
            String::new()
        } else {
            format!("and {}", self.key_vs_literal(">", cursor))
        }
    }

    /// The merchant's (`$1`) next keys after `cursor` (`null`: from its
    /// first), at most `$2`: how many there are, and the last of them (a
    /// key object).
    pub(super) fn next_keys(&self, cursor: &Value) -> String {
        let filter = format!("merchant_id = $1 {}", self.after_cursor(cursor));
        self.key_columns()
            .window(&self.sql(), &filter, "$2", Last::Json)
    }

    /// The merchant's (`$1`) rows in a key range: the conditions, and the
    /// parameters from `$2` on.
    pub(super) fn range_filter(&self, range: &KeyRange) -> (String, Vec<Value>) {
        let mut conditions = vec!["merchant_id = $1".to_owned()];
        let mut params = Vec::new();
        if let Some(after) = &range.after {
            params.push(after.clone());
            conditions.push(self.key_vs(">", params.len() + 1));
        }
        if let Some(up_to) = &range.up_to {
            params.push(up_to.clone());
            conditions.push(self.key_vs("<=", params.len() + 1));
        }
        (conditions.join(" and "), params)
    }

    /// `t join jsonb_populate_recordset(null::t, $1) k on (key) = (k.key)`:
    /// the table's rows of the keys given as a JSON array in `$1`.
    pub(super) fn rows_of_keys(&self) -> String {
        let (t, key) = (self.sql(), self.key_columns());
        format!(
            "{t} join jsonb_populate_recordset(null::{t}, $1) k on {} = {}",
            key.row(Some(&t)),
            key.row(Some("k")),
        )
    }

    /// `jsonb_build_object('k1', t.k1, …)`: a row's key as the capture writes it.
    pub(super) fn key_object(&self) -> String {
        let t = self.sql();
        let fields = self
            .key
            .iter()
            .map(|k| format!("{}, {t}.{}", quote_literal(k), quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("jsonb_build_object({fields})")
    }

    /// A hash of a whole row, the same in every cell: over the insertable
    /// columns but events' `xid` (a commit position local to a cell: the
    /// mover writes 0 there, see migration 0019).
    pub(super) fn row_hash(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.as_str() != "xid")
            .cloned()
            .collect();
        toolkit::row_hash(Some(&self.sql()), &cols)
    }

    /// `insert into table (columns) select … on conflict (key) do update
    /// …`: rows replace any with the same key.
    pub(super) fn upsert_sql(&self, from: UpsertFrom) -> String {
        let cols = column_list(&self.columns, None);
        let rows = match from {
            UpsertFrom::CopiedBatch => format!(
                "select {cols} from pg_temp.mercato_copy c where {}",
                self.parents_present("c")
            ),
            UpsertFrom::JsonRows => format!(
                "select {cols} from jsonb_populate_recordset(null::{}, $1)",
                self.sql()
            ),
        };
        let rest: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .cloned()
            .collect();
        let on_conflict = if rest.is_empty() {
            "do nothing".to_owned()
        } else {
            format!(
                "do update set ({}) = row({})",
                column_list(&rest, None),
                column_list(&rest, Some("excluded")),
            )
        };
        format!(
            "insert into {} ({cols}) {rows} on conflict ({}) {on_conflict}",
            self.sql(),
            column_list(&self.key, None),
        )
    }

    /// `true` for a row (of this table, as `alias`) whose parents are all in
    /// the target already. The copy leaves the others out, as the row-by-row
    /// path would: written since the capture began, they arrive with the
    /// replay. At the tail of a big table (the rows the live merchant wrote
    /// during the copy) nearly every batch has such a row, and each sent the
    /// whole batch row by row: the copy of `orders` fell to 50 rows/s there.
    fn parents_present(&self, alias: &str) -> String {
        let mut conditions = vec!["true".to_owned()];
        for (parent, here, there) in &self.parents {
            let any_null = here
                .iter()
                .map(|c| format!("{alias}.{} is null", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" or ");
            conditions.push(format!(
                "({any_null} or exists (select 1 from {} p where ({}) = ({})))",
                quote_ident(parent),
                column_list(there, Some("p")),
                column_list(here, Some(alias)),
            ));
        }
        conditions.join(" and ")
    }
}

/// Where the rows of an upsert come from.
#[derive(Debug, Clone, Copy)]
pub(super) enum UpsertFrom {
    /// The batch a binary `COPY` put in `pg_temp.mercato_copy`, but the rows
    /// whose parents are not in the target yet (see `parents_present`).
    CopiedBatch,
    /// Whole rows given as a JSON array in `$1`.
    JsonRows,
}

/// The keys of a table in `(after, up_to]` (`None`: unbounded).
#[derive(Debug, Clone, Default)]
pub(super) struct KeyRange {
    pub after: Option<Value>,
    pub up_to: Option<Value>,
}

/// A table's name, key columns, key types and insertable columns.
type CatalogRow = (String, Vec<String>, Vec<String>, Vec<String>);

/// The tenant tables of a database, parents before children.
pub async fn tenant_tables(pool: &PgPool) -> Result<Vec<Table>, sqlx::Error> {
    let rows: Vec<CatalogRow> = sqlx::query_as(
        "select c.relname::text,
                array(select a.attname::text from pg_index i
                      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
                      where i.indrelid = c.oid and i.indisprimary
                      order by array_position(i.indkey::int2[], a.attnum)),
                array(select format_type(a.atttypid, a.atttypmod) from pg_index i
                      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
                      where i.indrelid = c.oid and i.indisprimary
                      order by array_position(i.indkey::int2[], a.attnum)),
                array(select a.attname::text from pg_attribute a
                      where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                        and a.attgenerated = ''
                      order by a.attnum)
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p')
           and exists (select 1 from pg_attribute a where a.attrelid = c.oid
                       and a.attname = 'merchant_id' and not a.attisdropped)
           and c.relname <> all ($1)
         order by c.relname",
    )
    .bind(NOT_MOVED)
    .fetch_all(pool)
    .await?;
    let foreign_keys: Vec<(String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "select c.relname::text, p.relname::text,
                array(select a.attname::text from unnest(k.conkey) with ordinality u (n, i)
                      join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n order by u.i),
                array(select a.attname::text from unnest(k.confkey) with ordinality u (n, i)
                      join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.n order by u.i)
         from pg_constraint k
         join pg_class c on c.oid = k.conrelid join pg_class p on p.oid = k.confrelid
         where k.contype = 'f' and c.relnamespace = 'public'::regnamespace and c.oid <> p.oid",
    )
    .fetch_all(pool)
    .await?;
    let edges: Vec<(String, String)> = foreign_keys
        .iter()
        .map(|(child, parent, _, _)| (child.clone(), parent.clone()))
        .collect();
    let moved: Vec<&str> = rows.iter().map(|(name, ..)| name.as_str()).collect();
    let tables: Vec<Table> = rows
        .iter()
        .filter(|(_, key, _, _)| !key.is_empty())
        .map(|(name, key, key_types, columns)| Table {
            name: name.clone(),
            key: key.clone(),
            key_types: key_types.clone(),
            columns: columns.clone(),
            parents: foreign_keys
                .iter()
                .filter(|(child, parent, _, _)| child == name && moved.contains(&parent.as_str()))
                .map(|(_, parent, here, there)| (parent.clone(), here.clone(), there.clone()))
                .collect(),
        })
        .collect();
    Ok(parents_first(tables, &edges))
}

/// Kahn's order (by name among equals) over the foreign keys `edges`
/// (child, parent).
fn parents_first(mut tables: Vec<Table>, edges: &[(String, String)]) -> Vec<Table> {
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut ordered = Vec::with_capacity(tables.len());
    let mut placed: Vec<String> = Vec::new();
    while !tables.is_empty() {
        let ready = tables.iter().position(|t| {
            edges.iter().all(|(child, parent)| {
                child != &t.name || !names.contains(parent) || placed.contains(parent)
            })
        });
        // A cycle (none in Mercato's schema) would keep its tables' order.
        let at = ready.unwrap_or(0);
        let table = tables.remove(at);
        placed.push(table.name.clone());
        ordered.push(table);
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_lines() -> Table {
        Table {
            name: "order_lines".into(),
            key: vec!["order_id".into(), "line".into()],
            key_types: vec!["uuid".into(), "integer".into()],
            columns: vec![
                "order_id".into(),
                "line".into(),
                "merchant_id".into(),
                "xid".into(),
            ],
            parents: vec![("orders".into(), vec!["order_id".into()], vec!["id".into()])],
        }
    }

    /// The text the mover ran before it wrote these with pgshift's toolkit.
    #[test]
    fn key_comparisons_and_lookups_read_as_before() {
        let t = order_lines();
        assert_eq!(
            t.key_vs(">", 2),
            r#"("order_lines"."order_id", "order_lines"."line") > (($2::jsonb ->> 'order_id')::uuid, ($2::jsonb ->> 'line')::integer)"#
        );
        assert_eq!(
            t.key_vs_literal("<=", &serde_json::json!({"line": 1, "order_id": "a'b"})),
            r#"("order_lines"."order_id", "order_lines"."line") <= (('{"line":1,"order_id":"a''b"}'::jsonb ->> 'order_id')::uuid, ('{"line":1,"order_id":"a''b"}'::jsonb ->> 'line')::integer)"#
        );
        assert_eq!(
            t.rows_of_keys(),
            r#""order_lines" join jsonb_populate_recordset(null::"order_lines", $1) k on ("order_lines"."order_id", "order_lines"."line") = (k."order_id", k."line")"#
        );
        assert_eq!(
            t.row_hash(),
            r#"hashtextextended(row("order_lines"."order_id", "order_lines"."line", "order_lines"."merchant_id")::text, 0)"#
        );
        let (cols, set) = (
            r#""order_id", "line", "merchant_id", "xid""#,
            r#"on conflict ("order_id", "line") do update set ("merchant_id", "xid") = row(excluded."merchant_id", excluded."xid")"#,
        );
        assert_eq!(
            t.upsert_sql(UpsertFrom::JsonRows),
            format!(
                r#"insert into "order_lines" ({cols}) select {cols} from jsonb_populate_recordset(null::"order_lines", $1) {set}"#
            )
        );
        assert_eq!(
            t.upsert_sql(UpsertFrom::CopiedBatch),
            format!(
                r#"insert into "order_lines" ({cols}) select {cols} from pg_temp.mercato_copy c where true and (c."order_id" is null or exists (select 1 from "orders" p where (p."id") = (c."order_id"))) {set}"#
            )
        );
    }

    #[test]
    fn parents_come_before_their_children() {
        let table = |name: &str| Table {
            name: name.into(),
            parents: vec![],
            ..order_lines()
        };
        let edges = [
            ("order_lines".to_owned(), "orders".to_owned()),
            ("orders".to_owned(), "customers".to_owned()),
        ];
        let ordered = parents_first(
            vec![table("order_lines"), table("orders"), table("customers")],
            &edges,
        );
        let names: Vec<&str> = ordered.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["customers", "orders", "order_lines"]);
    }
}
