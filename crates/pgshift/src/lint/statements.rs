//! Rules on each statement's syntax tree (squawk's PostgreSQL parser): what
//! would lock, scan or rewrite a live table, or break the old shape before
//! contract. Comments and string literals are tokens of their own in the tree,
//! so they can neither hide a problem nor invent one.

use std::collections::{HashMap, HashSet};

use squawk_syntax::ast::{self, AstNode, NameLike};
use squawk_syntax::{SyntaxKind, SyntaxNode};

use super::{Catalog, Rule};

/// What the steps before this one did, in plan order.
#[derive(Default)]
pub(super) struct PlanState {
    /// Tables and indexes the plan creates: changed freely until they hold data.
    pub created_tables: HashSet<String>,
    pub created_indexes: HashSet<String>,
    /// `CHECK (col IS NOT NULL) NOT VALID` constraints added: name → (table, column).
    pub not_null_checks: HashMap<String, (String, String)>,
    /// (table, column) with such a check validated by an earlier step.
    pub validated_not_null: HashSet<(String, String)>,
}

/// Where a statement runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    /// expand and dual_write: both shapes must keep working.
    BeforeContract,
    Contract,
    Abort,
}

/// One problem a statement has: the rule and the table it concerns.
pub(super) struct Hit {
    pub rule: &'static Rule,
    pub table: Option<String>,
}

fn hit(rule: &'static Rule, table: Option<&str>) -> Hit {
    Hit {
        rule,
        table: table.map(str::to_owned),
    }
}

/// Whether `node` holds a token of `kind` (keywords only; comments and strings
/// are other kinds).
fn has_token(node: &SyntaxNode, kind: SyntaxKind) -> bool {
    node.descendants_with_tokens().any(|e| e.kind() == kind)
}

/// The bare name (no schema) of the last path segment under `node`.
fn bare_name(node: &SyntaxNode) -> Option<String> {
    node.descendants()
        .filter_map(|n| {
            ast::PathSegment::cast(n.clone())
                .map(|s| s.text())
                .or_else(|| ast::PathSegmentRef::cast(n).map(|s| s.text()))
        })
        .last()
}

/// The bare name of the first path under `node` (the first relation a statement names).
fn first_name(node: &SyntaxNode) -> Option<String> {
    let path = node
        .descendants()
        .find(|n| matches!(n.kind(), SyntaxKind::PATH | SyntaxKind::PATH_REF))?;
    bare_name(&path)
}

/// Checks one statement. `multi` says whether it shares its step with others.
pub(super) fn check(
    stmt: &ast::Stmt,
    section: Section,
    multi: bool,
    catalog: &Catalog,
    state: &mut PlanState,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    let live = |t: &str, state: &PlanState| {
        catalog.tables.contains(t) && !state.created_tables.contains(t)
    };
    let before_contract = section == Section::BeforeContract;
    let syntax = stmt.syntax();
    if multi && has_token(syntax, SyntaxKind::CONCURRENTLY_KW) {
        hits.push(hit(&super::CONCURRENTLY_IN_MULTI, None));
    }
    match stmt {
        ast::Stmt::CreateTable(create) => {
            if let Some(name) = create.table_name().and_then(|n| bare_name(n.syntax())) {
                state.created_tables.insert(name);
            }
        }
        ast::Stmt::CreateIndex(index) => {
            let table = index
                .table_relation_name()
                .and_then(|r| bare_name(r.syntax()));
            if let Some(name) = index.index().and_then(|n| bare_name(n.syntax())) {
                state.created_indexes.insert(name);
            }
            if let Some(t) = &table {
                if !live(t, state) && !state.created_tables.contains(t) {
                    if section != Section::Abort {
                        hits.push(hit(&super::MISSING_TABLE, Some(t)));
                    }
                } else if live(t, state) && index.concurrently_token().is_none() {
                    hits.push(hit(&super::INDEX_WITHOUT_CONCURRENTLY, Some(t)));
                }
            }
        }
        ast::Stmt::DropIndex(drop) => {
            let names: Vec<String> = drop
                .index_refs()
                .filter_map(|r| bare_name(r.syntax()))
                .collect();
            let existing = names.iter().any(|n| !state.created_indexes.contains(n));
            if existing && drop.concurrently_token().is_none() {
                hits.push(hit(&super::DROP_INDEX_WITHOUT_CONCURRENTLY, None));
            }
            if existing && before_contract {
                hits.push(hit(&super::DROP_BEFORE_CONTRACT, None));
            }
        }
        ast::Stmt::Reindex(reindex) => {
            let concurrently = has_token(reindex.syntax(), SyntaxKind::CONCURRENTLY_KW);
            if !concurrently {
                hits.push(hit(&super::REINDEX_WITHOUT_CONCURRENTLY, None));
            }
        }
        ast::Stmt::Refresh(refresh) if refresh.concurrently_token().is_none() => {
            let view = refresh.view_ref().and_then(|v| bare_name(v.syntax()));
            hits.push(hit(&super::REFRESH_WITHOUT_CONCURRENTLY, view.as_deref()));
        }
        ast::Stmt::AlterTable(alter) => {
            let table = alter
                .table_relation_name()
                .and_then(|r| bare_name(r.syntax()));
            let Some(table) = table else {
                return hits;
            };
            if !catalog.tables.contains(&table) && !state.created_tables.contains(&table) {
                if section != Section::Abort {
                    hits.push(hit(&super::MISSING_TABLE, Some(&table)));
                }
                return hits;
            }
            let is_live = live(&table, state);
            for action in alter.actions() {
                alter_table_action(
                    &action,
                    &table,
                    is_live,
                    before_contract,
                    catalog,
                    state,
                    &mut hits,
                );
            }
        }
        ast::Stmt::AlterDomain(domain) => {
            if let Some(ast::AlterDomainAction::AddConstraint(add)) = domain.action() {
                let not_valid = add.constraint().is_some_and(|c| c.is_not_valid())
                    || has_token(add.syntax(), SyntaxKind::VALID_KW);
                if !not_valid {
                    let name = domain.domain_ref().and_then(|d| bare_name(d.syntax()));
                    hits.push(hit(
                        &super::DOMAIN_CONSTRAINT_WITHOUT_NOT_VALID,
                        name.as_deref(),
                    ));
                }
            }
        }
        ast::Stmt::AlterType(alter) => match alter.action() {
            Some(ast::AlterTypeAction::RenameValue(_)) if before_contract => {
                hits.push(hit(&super::RENAME_ENUM_VALUE, None));
            }
            Some(
                ast::AlterTypeAction::TypeRenameTo(_) | ast::AlterTypeAction::RenameAttribute(_),
            ) if before_contract => {
                hits.push(hit(&super::RENAME_LIVE, None));
            }
            _ => {}
        },
        ast::Stmt::Truncate(truncate) => {
            let table = first_name(truncate.syntax());
            if table.as_deref().is_none_or(|t| live(t, state)) {
                hits.push(hit(&super::TRUNCATE, table.as_deref()));
            }
        }
        ast::Stmt::Lock(lock) => {
            hits.push(hit(
                &super::EXPLICIT_LOCK,
                first_name(lock.syntax()).as_deref(),
            ));
        }
        ast::Stmt::Vacuum(vacuum) if is_vacuum_full(vacuum) => {
            hits.push(hit(
                &super::VACUUM_FULL,
                first_name(vacuum.syntax()).as_deref(),
            ));
        }
        ast::Stmt::Cluster(cluster) => {
            hits.push(hit(
                &super::CLUSTER,
                first_name(cluster.syntax()).as_deref(),
            ));
        }
        ast::Stmt::DropDatabase(_) => hits.push(hit(&super::DROP_DATABASE, None)),
        ast::Stmt::DropTable(drop) if before_contract => {
            for name in drop.table_name_refs().filter_map(|t| bare_name(t.syntax())) {
                if live(&name, state) {
                    hits.push(hit(&super::DROP_BEFORE_CONTRACT, Some(&name)));
                }
            }
        }
        ast::Stmt::Update(update) => {
            let table = update.relation_name().and_then(|r| bare_name(r.syntax()));
            if update.where_clause_or_current_of().is_none()
                && table.as_deref().is_some_and(|t| live(t, state))
            {
                hits.push(hit(&super::WHOLE_TABLE_WRITE, table.as_deref()));
            }
        }
        ast::Stmt::Delete(delete) => {
            let table = delete.relation_name().and_then(|r| bare_name(r.syntax()));
            if delete.where_clause_or_current_of().is_none()
                && table.as_deref().is_some_and(|t| live(t, state))
            {
                hits.push(hit(&super::WHOLE_TABLE_WRITE, table.as_deref()));
            }
        }
        _ => {}
    }
    hits
}

/// `VACUUM FULL t`, `VACUUM (FULL) t`, `VACUUM (FULL true, …)`; not `(FULL false)`.
fn is_vacuum_full(vacuum: &ast::Vacuum) -> bool {
    if vacuum.full_token().is_some() {
        return true;
    }
    let Some(options) = vacuum.vacuum_option_list() else {
        return false;
    };
    let text = options.syntax().text().to_string().to_lowercase();
    text.trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(|o| o.split_whitespace().collect::<Vec<_>>())
        .any(|words| {
            words.first() == Some(&"full")
                && !matches!(words.get(1), Some(&("false" | "off" | "0")))
        })
}

#[allow(clippy::too_many_arguments)]
fn alter_table_action(
    action: &ast::AlterTableAction,
    table: &str,
    is_live: bool,
    before_contract: bool,
    catalog: &Catalog,
    state: &mut PlanState,
    hits: &mut Vec<Hit>,
) {
    let t = Some(table);
    match action {
        ast::AlterTableAction::AddConstraint(add) => {
            let Some(constraint) = add.constraint() else {
                return;
            };
            let name = constraint_name(&constraint);
            if let ast::Constraint::CheckConstraint(check) = &constraint {
                if let (Some(name), Some(column)) =
                    (name.clone(), check.expr().and_then(|e| not_null_check(&e)))
                {
                    if constraint.is_not_valid() {
                        state
                            .not_null_checks
                            .insert(name, (table.to_owned(), column.clone()));
                    } else {
                        // Validated as it is added (a scan: flagged below on a live table).
                        state.validated_not_null.insert((table.to_owned(), column));
                    }
                }
            }
            if !is_live {
                return;
            }
            match &constraint {
                ast::Constraint::CheckConstraint(_) | ast::Constraint::ForeignKeyConstraint(_)
                    if !constraint.is_not_valid() =>
                {
                    hits.push(hit(&super::CONSTRAINT_WITHOUT_NOT_VALID, t));
                }
                ast::Constraint::UniqueConstraint(u) if u.using_index().is_none() => {
                    hits.push(hit(&super::UNIQUE_WITHOUT_INDEX, t));
                }
                ast::Constraint::PrimaryKeyConstraint(p) if p.using_index().is_none() => {
                    hits.push(hit(&super::UNIQUE_WITHOUT_INDEX, t));
                }
                ast::Constraint::ExcludeConstraint(_) => {
                    hits.push(hit(&super::UNIQUE_WITHOUT_INDEX, t));
                }
                _ => {}
            }
        }
        ast::AlterTableAction::ValidateConstraint(validate) => {
            if let Some(name) = validate
                .constraint_name_ref()
                .and_then(|n| bare_name(n.syntax()))
            {
                if let Some(pair) = state.not_null_checks.get(&name) {
                    state.validated_not_null.insert(pair.clone());
                }
            }
        }
        ast::AlterTableAction::AddColumn(add) if is_live => add_column(add, table, catalog, hits),
        ast::AlterTableAction::AlterColumn(alter) => {
            let column = alter.column_name_ref().map(|c| c.text());
            match alter.option() {
                Some(ast::AlterColumnOption::SetType(set)) if is_live => {
                    let new = set.ty().map(|ty| ty.syntax().text().to_string());
                    let old = column
                        .as_ref()
                        .and_then(|c| catalog.columns.get(&(table.to_owned(), c.clone())));
                    let keeps_data = set.using_expr().is_none()
                        && matches!((old, &new), (Some(old), Some(new)) if type_widens(old, new));
                    if !keeps_data {
                        hits.push(hit(&super::COLUMN_TYPE_CHANGE, t));
                    }
                }
                Some(ast::AlterColumnOption::SetNotNull(_)) if is_live => {
                    let pair = (table.to_owned(), column.unwrap_or_default());
                    if !catalog.not_null_checks.contains(&pair)
                        && !state.validated_not_null.contains(&pair)
                    {
                        hits.push(hit(&super::SET_NOT_NULL, t));
                    }
                }
                _ => {}
            }
        }
        ast::AlterTableAction::SetLogged(_)
        | ast::AlterTableAction::SetUnlogged(_)
        | ast::AlterTableAction::SetTablespace(_)
        | ast::AlterTableAction::SetAccessMethod(_)
            if is_live =>
        {
            hits.push(hit(&super::TABLE_REWRITE, t));
        }
        ast::AlterTableAction::DetachPartition(detach) if is_live => {
            let concurrently = has_token(detach.syntax(), SyntaxKind::CONCURRENTLY_KW);
            if !concurrently {
                hits.push(hit(&super::DETACH_WITHOUT_CONCURRENTLY, t));
            }
            if before_contract {
                hits.push(hit(&super::DROP_BEFORE_CONTRACT, t));
            }
        }
        ast::AlterTableAction::DropColumn(_) if is_live && before_contract => {
            hits.push(hit(&super::DROP_BEFORE_CONTRACT, t));
        }
        // Dropping a CHECK only relaxes; dropping a key changes what writers rely on.
        ast::AlterTableAction::DropConstraint(drop) if is_live && before_contract => {
            let name = bare_name(drop.syntax()).or_else(|| {
                drop.syntax()
                    .descendants()
                    .find_map(ast::NameRef::cast)
                    .map(|n| n.text())
            });
            if name.is_some_and(|n| catalog.keys.contains(&n)) {
                hits.push(hit(&super::DROP_BEFORE_CONTRACT, t));
            }
        }
        ast::AlterTableAction::RenameColumn(_) | ast::AlterTableAction::TableRenameTo(_)
            if is_live && before_contract =>
        {
            hits.push(hit(&super::RENAME_LIVE, t));
        }
        _ => {}
    }
}

fn constraint_name(constraint: &ast::Constraint) -> Option<String> {
    constraint.constraint_name().map(|n| n.text())
}

/// `col IS NOT NULL` (as a CHECK's whole expression): the column.
fn not_null_check(expr: &ast::Expr) -> Option<String> {
    let ast::Expr::BinExpr(bin) = expr else {
        if let ast::Expr::ParenExpr(paren) = expr {
            return not_null_check(&paren.expr()?);
        }
        return None;
    };
    let ast::BinOp::IsNot(_) = bin.op()? else {
        return None;
    };
    let ast::Expr::Literal(lit) = bin.rhs()? else {
        return None;
    };
    if !matches!(lit.kind(), Some(ast::LitKind::Null(_))) {
        return None;
    }
    match bin.lhs()? {
        ast::Expr::NameRef(name) => Some(name.text()),
        _ => None,
    }
}

fn add_column(add: &ast::AddColumn, table: &str, catalog: &Catalog, hits: &mut Vec<Hit>) {
    let t = Some(table);
    let ty = add
        .ty()
        .map(|ty| ty.syntax().text().to_string().to_lowercase())
        .unwrap_or_default();
    if matches!(
        ty.trim(),
        "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8"
    ) {
        hits.push(hit(&super::SERIAL_COLUMN, t));
    }
    let mut not_null = false;
    let mut has_default = false;
    for constraint in add.constraints() {
        match &constraint {
            ast::Constraint::NotNullConstraint(_) => not_null = true,
            ast::Constraint::DefaultConstraint(default) => {
                has_default = true;
                if default.expr().is_some_and(|e| is_volatile(&e, catalog)) {
                    hits.push(hit(&super::VOLATILE_DEFAULT, t));
                }
            }
            ast::Constraint::GeneratedConstraint(generated) => {
                if has_token(generated.syntax(), SyntaxKind::IDENTITY_KW) {
                    hits.push(hit(&super::IDENTITY_COLUMN, t));
                } else {
                    hits.push(hit(&super::STORED_GENERATED, t));
                }
            }
            ast::Constraint::PrimaryKeyConstraint(_)
            | ast::Constraint::UniqueConstraint(_)
            | ast::Constraint::ExcludeConstraint(_) => {
                hits.push(hit(&super::UNIQUE_WITHOUT_INDEX, t));
            }
            ast::Constraint::CheckConstraint(_) if !constraint.is_not_valid() => {
                hits.push(hit(&super::CONSTRAINT_WITHOUT_NOT_VALID, t));
            }
            _ => {}
        }
    }
    if not_null && !has_default {
        hits.push(hit(&super::NOT_NULL_WITHOUT_DEFAULT, t));
    }
}

/// Whether a default is computed per row: a call of a function the database
/// marks volatile (or does not know), anywhere in the expression.
fn is_volatile(expr: &ast::Expr, catalog: &Catalog) -> bool {
    expr.syntax()
        .descendants()
        .filter_map(ast::CallExpr::cast)
        .any(|call| {
            let name = call
                .expr()
                .and_then(|e| bare_name(e.syntax()).or_else(|| Some(e.syntax().text().to_string())))
                .unwrap_or_default()
                .to_lowercase();
            catalog.volatility.get(&name).is_none_or(|v| *v == 'v')
        })
}

/// A type spelled as PostgreSQL's `format_type` and the DSL alike: lower case,
/// aliases folded, no spaces around its modifiers.
fn normalize_type(raw: &str) -> (String, Vec<i64>) {
    let raw = raw.trim().to_lowercase();
    let (base, args) = match raw.split_once('(') {
        Some((base, rest)) => (
            base.trim().to_owned(),
            rest.trim_end_matches(')')
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect(),
        ),
        None => (raw.clone(), Vec::new()),
    };
    let base = match base
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .as_str()
    {
        "character varying" | "varchar" => "varchar".to_owned(),
        "decimal" | "numeric" => "numeric".to_owned(),
        "int" | "int4" | "integer" => "integer".to_owned(),
        "int8" | "bigint" => "bigint".to_owned(),
        other => other.to_owned(),
    };
    (base, args)
}

/// Whether changing a column from `old` (as `format_type` spells it) to `new`
/// keeps every stored value as it is: PostgreSQL then changes the catalog only,
/// without a rewrite or a scan (a longer or unlimited `varchar`, `varchar` ↔
/// `text`, more `numeric` precision at the same scale).
pub(super) fn type_widens(old: &str, new: &str) -> bool {
    let (old_base, old_args) = normalize_type(old);
    let (new_base, new_args) = normalize_type(new);
    match (old_base.as_str(), new_base.as_str()) {
        (o, n) if o == n && old_args == new_args => true,
        ("varchar", "text") | ("text", "text") => true,
        ("varchar" | "text", "varchar") => match (old_args.first(), new_args.first()) {
            (_, None) => true,
            (Some(o), Some(n)) => n >= o,
            (None, Some(_)) => false,
        },
        ("numeric", "numeric") => match (old_args.as_slice(), new_args.as_slice()) {
            (_, []) => true,
            ([p, s], [np, ns]) => ns == s && np >= p,
            ([p], [np]) => np >= p,
            ([p, 0], [np]) => np >= p,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::type_widens;

    #[test]
    fn widening_types_keep_their_values() {
        for (old, new) in [
            ("character varying(20)", "varchar(50)"),
            ("character varying(20)", "text"),
            ("character varying(20)", "varchar"),
            ("text", "varchar"),
            ("numeric(10,2)", "numeric(12, 2)"),
            ("numeric(10,2)", "numeric"),
            ("bigint", "int8"),
        ] {
            assert!(type_widens(old, new), "{old} -> {new}");
        }
        for (old, new) in [
            ("character varying(20)", "varchar(10)"),
            ("integer", "bigint"),
            ("text", "varchar(100)"),
            ("numeric(10,2)", "numeric(12,3)"),
            ("timestamp without time zone", "timestamptz"),
        ] {
            assert!(!type_widens(old, new), "{old} -> {new}");
        }
    }
}
