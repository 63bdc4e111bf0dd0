//! Just enough of PostgreSQL's lexical structure to read a plan's steps
//! statement by statement: comments dropped, string literals and
//! dollar-quoted bodies opaque (a function body's `BEGIN … END` is not a
//! transaction), `"quoted"` identifiers kept exact and other words folded to
//! lower case as the server folds them. From that: transaction control
//! statements, what a step says it creates, and the dual-write triggers and
//! functions pgshift owns.

use std::fmt;

use crate::quote_ident;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// An unquoted word (keyword, name, number, `$1`), lower-cased.
    Word(String),
    /// A `"quoted"` identifier, exactly as written.
    Quoted(String),
    /// A string literal or dollar-quoted body: never looked into.
    Literal,
    /// Any other character: `(`, `)`, `,`, `.`, `;`, `=`, …
    Symbol(char),
}

impl Token {
    pub(crate) fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w == word)
    }

    /// The identifier this token names, as stored in the catalog.
    fn ident(&self) -> Option<&str> {
        match self {
            Token::Word(w) if !w.starts_with(|c: char| c.is_ascii_digit() || c == '$') => Some(w),
            Token::Quoted(q) => Some(q),
            _ => None,
        }
    }

    /// The token as SQL text again.
    fn to_sql(&self) -> String {
        match self {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => quote_ident(q),
            Token::Literal => "''".into(),
            Token::Symbol(c) => c.to_string(),
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The tokens of `sql`, comments dropped.
pub(crate) fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in PostgreSQL.
            let mut depth = 0;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            i = skip_string(&chars, i + 1, false);
            out.push(Token::Literal);
        } else if c == '"' {
            let mut ident = String::new();
            i += 1;
            while i < n {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        ident.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                ident.push(chars[i]);
                i += 1;
            }
            out.push(Token::Quoted(ident));
        } else if c == '$' && next.is_some_and(|d| d.is_ascii_digit()) {
            let start = i;
            i += 1;
            while i < n && chars[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else if c == '$' {
            // `$tag$ … $tag$` (the tag may be empty).
            let mut j = i + 1;
            while j < n && chars[j] != '$' && is_ident_char(chars[j]) {
                j += 1;
            }
            if j < n && chars[j] == '$' {
                let tag: Vec<char> = chars[i..=j].to_vec();
                i = j + 1;
                while i < n && !chars[i..].starts_with(&tag) {
                    i += 1;
                }
                i = (i + tag.len()).min(n);
                out.push(Token::Literal);
            } else {
                out.push(Token::Symbol('$'));
                i += 1;
            }
        } else if is_ident_start(c) || c.is_ascii_digit() {
            let start = i;
            while i < n && (is_ident_char(chars[i]) || chars[i].is_ascii_digit()) {
                i += 1;
            }
            // PostgreSQL folds only ASCII letters of unquoted names.
            let word: String = chars[start..i]
                .iter()
                .collect::<String>()
                .to_ascii_lowercase();
            if chars.get(i) == Some(&'\'') && matches!(word.as_str(), "e" | "b" | "x" | "n") {
                // E'…' (backslash escapes), B'…', X'…', N'…'.
                i = skip_string(&chars, i + 1, word == "e");
                out.push(Token::Literal);
            } else {
                out.push(Token::Word(word));
            }
        } else {
            out.push(Token::Symbol(c));
            i += 1;
        }
    }
    out
}

/// Past the end of a string literal whose body starts at `i`.
fn skip_string(chars: &[char], mut i: usize, backslash_escapes: bool) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' if backslash_escapes => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\'') => i += 2,
            '\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The statements of `sql`, each as its tokens (without the `;`). A
/// SQL-standard function body (`BEGIN ATOMIC … END`) stays in its statement.
pub(crate) fn statements(sql: &str) -> Vec<Vec<Token>> {
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    // Inside BEGIN ATOMIC: the depth of END still expected (CASE opens one too).
    let mut atomic_depth = 0usize;
    for token in tokens(sql) {
        if atomic_depth > 0 {
            if token.is_word("case") {
                atomic_depth += 1;
            } else if token.is_word("end") {
                atomic_depth -= 1;
            }
        } else if token.is_word("atomic") && current.last().is_some_and(|t| t.is_word("begin")) {
            atomic_depth = 1;
        } else if token == Token::Symbol(';') {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        current.push(token);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The transaction control statement (`BEGIN`, `COMMIT`, …) that starts
/// `statement`, if it is one.
fn transaction_control(statement: &[Token]) -> Option<&'static str> {
    let word = |i: usize| match statement.get(i) {
        Some(Token::Word(w)) => w.as_str(),
        _ => "",
    };
    Some(match (word(0), word(1)) {
        ("begin", _) => "BEGIN",
        ("start", "transaction") => "START TRANSACTION",
        ("commit", _) => "COMMIT",
        ("end", _) => "END",
        ("rollback", _) => "ROLLBACK",
        ("abort", _) => "ABORT",
        ("savepoint", _) => "SAVEPOINT",
        ("release", _) => "RELEASE",
        ("prepare", "transaction") => "PREPARE TRANSACTION",
        _ => return None,
    })
}

/// Every transaction control statement in `sql` (outside function bodies).
pub(crate) fn transaction_controls(sql: &str) -> Vec<&'static str> {
    statements(sql)
        .iter()
        .filter_map(|s| transaction_control(s))
        .collect()
}

/// Whether `sql` holds a statement that refuses a transaction block
/// (`CREATE INDEX CONCURRENTLY` and the like).
pub(crate) fn needs_no_transaction(sql: &str) -> bool {
    tokens(sql).iter().any(|t| t.is_word("concurrently"))
}

/// A possibly schema-qualified name, each part as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    pub schema: Option<String>,
    pub name: String,
}

impl Name {
    /// As SQL text, every part quoted (for `to_regclass` and DDL).
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// `name` in the schema of `table` when it names none itself (an index
    /// lives in its table's schema).
    fn beside(name: String, table: &Name) -> Name {
        Name {
            schema: table.schema.clone(),
            name,
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Reads a dotted name at `tokens[i]`; returns it and the index after it.
fn name_at(tokens: &[Token], i: usize) -> Option<(Name, usize)> {
    let mut parts = vec![tokens.get(i)?.ident()?.to_owned()];
    let mut i = i + 1;
    while tokens.get(i) == Some(&Token::Symbol('.')) {
        parts.push(tokens.get(i + 1)?.ident()?.to_owned());
        i += 2;
    }
    let name = parts.pop()?;
    Some((
        Name {
            schema: parts.pop(),
            name,
        },
        i,
    ))
}

/// Skips `words` at `tokens[i]` if they are all there.
fn skip_words(tokens: &[Token], i: usize, words: &[&str]) -> usize {
    let all = words
        .iter()
        .enumerate()
        .all(|(k, w)| tokens.get(i + k).is_some_and(|t| t.is_word(w)));
    if all {
        i + words.len()
    } else {
        i
    }
}

/// Something a step says it creates, checked in the catalog once it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    Table(Name),
    Column { table: Name, column: String },
    Index { name: Name, table: Name },
    Function { name: Name, args: String },
    Trigger { name: String, table: Name },
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Table(t) => write!(f, "table {t}"),
            Effect::Column { table, column } => write!(f, "column {table}.{column}"),
            Effect::Index { name, table } => write!(f, "index {name} on {table}"),
            Effect::Function { name, args } => write!(f, "function {name}({args})"),
            Effect::Trigger { name, table } => write!(f, "trigger {name} on {table}"),
        }
    }
}

/// What the statements of `sql` create: tables (`CREATE TABLE t`), columns
/// (`ALTER TABLE t ADD [COLUMN] c`), named indexes (`CREATE INDEX i ON t`),
/// functions and triggers. Temporary tables and anything else are not listed.
pub(crate) fn effects(sql: &str) -> Vec<Effect> {
    let mut out = Vec::new();
    for s in statements(sql) {
        if !s
            .first()
            .is_some_and(|t| t.is_word("create") || t.is_word("alter"))
        {
            continue;
        }
        if s[0].is_word("alter") {
            out.extend(added_columns(&s));
            continue;
        }
        let mut i = skip_words(&s, 1, &["or", "replace"]);
        let mut temporary = false;
        while let Some(Token::Word(w)) = s.get(i) {
            match w.as_str() {
                "temp" | "temporary" => temporary = true,
                "global" | "local" | "unlogged" => {}
                _ => break,
            }
            i += 1;
        }
        let unique = s.get(i).is_some_and(|t| t.is_word("unique"));
        if unique {
            i += 1;
        }
        match s.get(i) {
            Some(t) if t.is_word("table") && !temporary => {
                let i = skip_words(&s, i + 1, &["if", "not", "exists"]);
                if let Some((name, _)) = name_at(&s, i) {
                    out.push(Effect::Table(name));
                }
            }
            Some(t) if t.is_word("index") => {
                let i = skip_words(&s, i + 1, &["concurrently"]);
                let i = skip_words(&s, i, &["if", "not", "exists"]);
                if s.get(i).is_some_and(|t| t.is_word("on")) {
                    continue; // no name to look for
                }
                let Some((name, i)) = name_at(&s, i) else {
                    continue;
                };
                let i = skip_words(&s, i, &["on"]);
                let i = skip_words(&s, i, &["only"]);
                if let Some((table, _)) = name_at(&s, i) {
                    let name = match name.schema {
                        Some(_) => name,
                        None => Name::beside(name.name, &table),
                    };
                    out.push(Effect::Index { name, table });
                }
            }
            Some(t) if t.is_word("function") => {
                if let Some(effect) = created_function(&s, i + 1) {
                    out.push(effect);
                }
            }
            Some(t) if t.is_word("trigger") || t.is_word("constraint") => {
                let i = skip_words(&s, i, &["constraint"]);
                if !s.get(i).is_some_and(|t| t.is_word("trigger")) {
                    continue;
                }
                let Some(name) = s.get(i + 1).and_then(Token::ident) else {
                    continue;
                };
                // The table follows the first ON (events such as
                // `UPDATE OF a, b` come before it).
                let Some(on) = s[i + 2..].iter().position(|t| t.is_word("on")) else {
                    continue;
                };
                if let Some((table, _)) = name_at(&s, i + 3 + on) {
                    out.push(Effect::Trigger {
                        name: name.to_owned(),
                        table,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// `CREATE FUNCTION name (args)` from `tokens[i]` (the name): the argument
/// list as DROP FUNCTION takes it (modes, names and types; no defaults).
fn created_function(s: &[Token], i: usize) -> Option<Effect> {
    let (name, i) = name_at(s, i)?;
    if s.get(i) != Some(&Token::Symbol('(')) {
        return None;
    }
    let mut depth = 0usize;
    let mut args: Vec<Vec<&Token>> = vec![Vec::new()];
    let mut in_default = false;
    for token in &s[i + 1..] {
        match token {
            Token::Symbol('(') => depth += 1,
            Token::Symbol(')') if depth == 0 => break,
            Token::Symbol(')') => depth -= 1,
            Token::Symbol(',') if depth == 0 => {
                args.push(Vec::new());
                in_default = false;
                continue;
            }
            _ => {}
        }
        if depth == 0 && (token.is_word("default") || *token == Token::Symbol('=')) {
            in_default = true;
        }
        if !in_default {
            args.last_mut()?.push(token);
        }
    }
    let args = args
        .iter()
        .filter(|a| !a.is_empty())
        .map(|a| join_sql(a))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Effect::Function { name, args })
}

/// Tokens as SQL text, spaced except around `.`, `(`, `)`, `[` and `]`.
fn join_sql(tokens: &[&Token]) -> String {
    let mut out = String::new();
    let tight = |t: &Token| matches!(t, Token::Symbol('.' | '(' | ')' | '[' | ']' | ','));
    for (k, t) in tokens.iter().enumerate() {
        if k > 0 && !tight(t) && !tight(tokens[k - 1]) {
            out.push(' ');
        }
        if k > 0 && *tokens[k - 1] == Token::Symbol(',') {
            out.push(' ');
        }
        out.push_str(&t.to_sql());
    }
    out
}

/// `ALTER TABLE [IF EXISTS] [ONLY] t ADD [COLUMN] [IF NOT EXISTS] c …, ADD …`.
fn added_columns(s: &[Token]) -> Vec<Effect> {
    let mut out = Vec::new();
    if !s.get(1).is_some_and(|t| t.is_word("table")) {
        return out;
    }
    let i = skip_words(s, 2, &["if", "exists"]);
    let i = skip_words(s, i, &["only"]);
    let Some((table, mut i)) = name_at(s, i) else {
        return out;
    };
    if s.get(i) == Some(&Token::Symbol('*')) {
        i += 1;
    }
    // Actions are separated by commas outside parentheses.
    let mut depth = 0usize;
    let mut start = i;
    for k in i..=s.len() {
        let end = k == s.len();
        if !end {
            match s[k] {
                Token::Symbol('(') => depth += 1,
                Token::Symbol(')') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if end || (depth == 0 && s[k] == Token::Symbol(',')) {
            let action = &s[start..k];
            start = k + 1;
            if !action.first().is_some_and(|t| t.is_word("add")) {
                continue;
            }
            let j = skip_words(action, 1, &["column"]);
            let explicit = j > 1;
            let j = skip_words(action, j, &["if", "not", "exists"]);
            let constraint = matches!(action.get(j), Some(Token::Word(w)) if matches!(
                w.as_str(),
                "constraint" | "primary" | "unique" | "check" | "foreign" | "exclude"
            ));
            if constraint && !explicit {
                continue;
            }
            if let Some(column) = action.get(j).and_then(Token::ident) {
                out.push(Effect::Column {
                    table: table.clone(),
                    column: column.to_owned(),
                });
            }
        }
    }
    out
}

/// The triggers and functions `sql` creates (a dual_write step): pgshift
/// owns them and drops them at contract and abort.
pub(crate) fn owned_objects(sql: &str) -> Vec<Effect> {
    effects(sql)
        .into_iter()
        .filter(|e| matches!(e, Effect::Function { .. } | Effect::Trigger { .. }))
        .collect()
}

/// DROP statements for owned objects: triggers first, then their functions.
pub(crate) fn drop_owned(objects: &[Effect]) -> Option<String> {
    let triggers = objects.iter().filter_map(|e| match e {
        Effect::Trigger { name, table } => Some(format!(
            "drop trigger if exists {} on {};",
            quote_ident(name),
            table.sql()
        )),
        _ => None,
    });
    let functions = objects.iter().filter_map(|e| match e {
        Effect::Function { name, args } => {
            Some(format!("drop function if exists {}({args});", name.sql()))
        }
        _ => None,
    });
    let sql: Vec<String> = triggers.chain(functions).collect();
    (!sql.is_empty()).then(|| sql.join("\n"))
}

/// The owned objects (from `owned`) that `sql` drops without IF EXISTS.
pub(crate) fn drops_without_if_exists<'a>(sql: &str, owned: &'a [Effect]) -> Vec<&'a Effect> {
    let mut out = Vec::new();
    for s in statements(sql) {
        if !s.first().is_some_and(|t| t.is_word("drop")) {
            continue;
        }
        let kind = s.get(1);
        let if_exists = skip_words(&s, 2, &["if", "exists"]) > 2;
        if if_exists {
            continue;
        }
        let Some((name, after)) = name_at(&s, 2) else {
            continue;
        };
        for object in owned {
            let hit = match object {
                Effect::Trigger { name: t, table } => {
                    kind.is_some_and(|k| k.is_word("trigger"))
                        && name.schema.is_none()
                        && name.name == *t
                        && s.get(after).is_some_and(|o| o.is_word("on"))
                        && name_at(&s, after + 1).is_some_and(|(n, _)| n.name == table.name)
                }
                Effect::Function { name: f, .. } => {
                    kind.is_some_and(|k| k.is_word("function"))
                        && name.name == f.name
                        && name.schema == f.schema
                }
                _ => false,
            };
            if hit {
                out.push(object);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        match s.split_once('.') {
            Some((schema, name)) => Name {
                schema: Some(schema.into()),
                name: name.into(),
            },
            None => Name {
                schema: None,
                name: s.into(),
            },
        }
    }

    #[test]
    fn bodies_strings_and_comments_hide_their_words() {
        let sql = r#"
            create function f() returns trigger language plpgsql as $body$
            begin
                insert into t values ('it''s; commit');
                return new;
            end $body$;
            -- begin;
            /* commit; /* nested */ rollback; */
            select E'\'; begin', 'x';
            do $$ begin perform 1; end $$
        "#;
        assert!(transaction_controls(sql).is_empty());
        assert_eq!(statements(sql).len(), 3);
    }

    #[test]
    fn transaction_control_is_found_in_any_case_and_position() {
        for (sql, found) in [
            ("BEGIN; alter table t add column x int", vec!["BEGIN"]),
            (
                "begin transaction; select 1; commit",
                vec!["BEGIN", "COMMIT"],
            ),
            (
                "start transaction isolation level serializable",
                vec!["START TRANSACTION"],
            ),
            ("select 1; END", vec!["END"]),
            ("select 1;\nrollback;", vec!["ROLLBACK"]),
            ("abort", vec!["ABORT"]),
            (
                "savepoint s; release savepoint s",
                vec!["SAVEPOINT", "RELEASE"],
            ),
            ("prepare transaction 'x'", vec!["PREPARE TRANSACTION"]),
            ("commit prepared 'x'", vec!["COMMIT"]),
        ] {
            assert_eq!(transaction_controls(sql), found, "{sql}");
        }
        for sql in [
            "prepare q as select 1",
            "alter table t add column begin_at timestamptz",
            "create function f() returns int language sql begin atomic select case when true then 1 end; end",
            "set transaction isolation level serializable",
        ] {
            assert!(transaction_controls(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn effects_name_tables_columns_indexes_functions_and_triggers() {
        let sql = r#"
            create table if not exists "Customers" (id bigint primary key, note text default 'a, b');
            create unlogged table scratch (x int);
            create temp table gone (x int);
            alter table if exists archive.people add column first_name text,
                add last_name varchar(10) default 'x', add constraint c check (x > 0),
                add column if not exists "Nick" numeric(12, 2), alter column y set default 1;
            create unique index concurrently if not exists people_by_name on only archive.people (first_name);
            create index on people (x);
            create or replace function public.sync(a integer, b text default 'x', variadic c int[]) returns trigger as $$ begin end $$ language plpgsql;
            create trigger sync_t before update of a, b on public.people for each row execute function public.sync();
        "#;
        let effects = effects(sql);
        let people = name("archive.people");
        assert_eq!(
            effects,
            [
                Effect::Table(name("Customers")),
                Effect::Table(name("scratch")),
                Effect::Column {
                    table: people.clone(),
                    column: "first_name".into()
                },
                Effect::Column {
                    table: people.clone(),
                    column: "last_name".into()
                },
                Effect::Column {
                    table: people.clone(),
                    column: "Nick".into()
                },
                Effect::Index {
                    name: name("archive.people_by_name"),
                    table: people
                },
                Effect::Function {
                    name: name("public.sync"),
                    args: "a integer, b text, variadic c int[]".into()
                },
                Effect::Trigger {
                    name: "sync_t".into(),
                    table: name("public.people")
                },
            ]
        );
    }

    #[test]
    fn owned_objects_are_dropped_triggers_first() {
        let owned = owned_objects(
            "create function s() returns trigger language plpgsql as $$ begin return new; end $$;
             create trigger s after insert on accounts for each row execute function s();",
        );
        assert_eq!(
            drop_owned(&owned).unwrap(),
            "drop trigger if exists \"s\" on \"accounts\";\ndrop function if exists \"s\"();"
        );
        assert_eq!(
            drops_without_if_exists("drop trigger s on accounts; drop function s()", &owned).len(),
            2
        );
        assert!(drops_without_if_exists(
            "drop trigger if exists s on accounts; drop function if exists s() cascade",
            &owned
        )
        .is_empty());
        assert!(drop_owned(&[]).is_none());
    }
}
