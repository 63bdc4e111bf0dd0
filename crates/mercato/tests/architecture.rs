//! The shape of the code, checked against the design it claims
//! (`../shared/design/ARCHITECTURE.md`, and the crate docs in `src/lib.rs`):
//!
//! - no import cycle between files, nor between the top-level parts of the
//!   crate (a context is a folder: two contexts never import each other);
//! - layers: no part imports the wiring (`app`, `routes`, `bench`, `demo`),
//!   `http/` (web plumbing) and `config.rs` import no context, and a
//!   context's domain files (`model.rs`, `store.rs`) never import the web layer;
//! - every table the migrations create has exactly one owner, listed once in
//!   the crate docs (checked both ways), and every SQL statement in any file
//!   of a context names only tables that context owns.
//!
//! The import graph is drawn from `crate::…`, `super::…` and `self::…` paths
//! in the source (`use` items and paths written inline); `mod x;` declarations
//! are containment, not dependencies, and are left out. Each rule has a test
//! below that feeds it a violation, so a rule that can no longer fail fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `catalog/store.rs` → `["catalog", "store"]`; `catalog/mod.rs` → `["catalog"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Rust source read as the compiler tokenizes what matters here: line
/// comments dropped (prose that names a module is no dependency, and a `//`
/// inside a string such as `postgres://…` is no comment), and the string
/// literals collected: plain ones (with `\"` escapes) and raw ones
/// (`r#"…"#`, which may hold `"` themselves, as sqlx's column overrides do);
/// a `'"'` character literal opens none.
struct Scanned {
    code: String,
    literals: Vec<String>,
}

fn scan(source: &str) -> Scanned {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let raw_hashes = (c == 'r'
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')))
            .then(|| chars[i + 1..].iter().take_while(|c| **c == '#').count())
            .filter(|hashes| chars.get(i + 1 + hashes) == Some(&'"'));
        if let Some(hashes) = raw_hashes {
            let start = i + 2 + hashes;
            let closes = |at: usize| {
                chars[at] == '"' && (1..=hashes).all(|k| chars.get(at + k) == Some(&'#'))
            };
            let mut end = start;
            while end < chars.len() && !closes(end) {
                end += 1;
            }
            let stop = (end + 1 + hashes).min(chars.len());
            code.extend(&chars[i..stop]);
            literals.push(chars[start..end].iter().collect());
            i = stop;
        } else if c == '"' {
            let mut literal = String::new();
            code.push(c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    code.push(chars[i]);
                    i += 1;
                }
                if let Some(c) = chars.get(i) {
                    literal.push(*c);
                    code.push(*c);
                }
                i += 1;
            }
            if i < chars.len() {
                code.push('"');
            }
            literals.push(literal);
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' && chars.get(i + 1) == Some(&'"') && chars.get(i + 2) == Some(&'\'') {
            code.push_str("'\"'");
            i += 3;
        } else {
            code.push(c);
            i += 1;
        }
    }
    Scanned { code, literals }
}

/// The source without comments, so prose that names a module is no dependency.
fn code_of(source: &str) -> String {
    scan(source).code
}

/// Every path a file names: `crate::a::b`, `super::c`, and each leaf of a
/// `{…}` group, as module segments relative to the crate root.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // The module this path is relative to.
            let base: Vec<String> = match start {
                "crate::" => vec![],
                // `x/mod.rs` is module x and `x/y.rs` is x::y: super is the parent of either.
                "super::" => module[..module.len().saturating_sub(1)].to_vec(),
                _ => module.to_vec(),
            };
            let rest = &code[from..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                .unwrap_or(rest.len());
            let head = &rest[..end];
            let mut prefix = base.clone();
            prefix.extend(
                head.trim_end_matches('{')
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            if head.ends_with('{') {
                // A group: each comma-separated leaf (one level is enough here).
                let group_end = rest.find('}').unwrap_or(rest.len());
                for leaf in rest[end..group_end].split(',') {
                    let mut path = prefix.clone();
                    path.extend(
                        leaf.trim()
                            .split("::")
                            .filter(|s| !s.is_empty() && *s != "self")
                            .map(|s| s.split_whitespace().next().unwrap_or("").to_owned()),
                    );
                    found.push(path);
                }
            }
            found.push(prefix);
        }
    }
    found
}

struct Graph {
    modules: BTreeSet<Vec<String>>,
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        if file.ends_with("main.rs") {
            continue; // the binary: it uses the library from outside
        }
        let module = module_of(file);
        let code = code_of(&std::fs::read_to_string(file).expect("read"));
        // Unit tests may reach anywhere.
        let code = match code.find("#[cfg(test)]") {
            Some(i) => code[..i].to_owned(),
            None => code,
        };
        for path in named_paths(&module, &code) {
            // The longest prefix of the path that is a module file.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(target) = target {
                if target != module && !target.is_empty() {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    Graph { modules, edges }
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let g = s.g;
        for w in g.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in &g.modules {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_import_graph_has_no_cycle() {
    let g = graph();
    assert!(
        g.edges.values().map(BTreeSet::len).sum::<usize>() > 30,
        "the graph was drawn (edges: {:?})",
        g.edges
    );
    let found = cycle_names(&g);
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

fn cycle_names(g: &Graph) -> Vec<String> {
    cycles(g)
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" ⇄ ")
        })
        .collect()
}

/// The parts that put the house together; they may import anything, and
/// nothing but the binary imports them (`state` is the `AppState` idiom:
/// every context's routes are typed by it, see `folder_graph`).
const WIRING: &[&str] = &["app", "routes", "state", "bench", "demo", "main"];

/// Infrastructure every context may use: no context of its own.
const FOUNDATIONS: &[&str] = &[
    "db",
    "validation",
    "pagination",
    "telemetry",
    "config",
    "http",
];

fn part(module: &[String]) -> &str {
    module.first().map(String::as_str).unwrap_or("lib")
}

/// `x/cli.rs`: a command, which composes contexts like the wiring does.
fn is_command(module: &[String]) -> bool {
    module.last().is_some_and(|m| m == "cli")
        || part(module) == "reprice"
        || part(module) == "shift"
}

/// The graph between top-level parts: an arrow `a → b` when a file of `a`
/// (not a command) imports a file of `b`. The wiring and the `AppState` idiom
/// (`x → state`) are left out: what remains must be acyclic.
fn folder_graph(g: &Graph) -> Graph {
    let mut parts = Graph {
        modules: BTreeSet::new(),
        edges: BTreeMap::new(),
    };
    for (from, targets) in &g.edges {
        let a = part(from);
        if WIRING.contains(&a) || is_command(from) || a == "lib" {
            continue;
        }
        parts.modules.insert(vec![a.to_owned()]);
        for to in targets {
            let b = part(to);
            if b == a || WIRING.contains(&b) || b == "lib" {
                continue;
            }
            parts.modules.insert(vec![b.to_owned()]);
            parts
                .edges
                .entry(vec![a.to_owned()])
                .or_default()
                .insert(vec![b.to_owned()]);
        }
    }
    parts
}

#[test]
fn no_two_parts_of_the_crate_import_each_other() {
    let parts = folder_graph(&graph());
    assert!(
        parts.modules.len() >= 15,
        "the parts were found: {:?}",
        parts.modules
    );
    let found = cycles(&parts);
    // Name the files behind each arrow of a cycle: that is where to cut.
    let g = graph();
    let mut why = Vec::new();
    for component in &found {
        let inside: BTreeSet<&str> = component.iter().map(|m| m[0].as_str()).collect();
        for (from, targets) in &g.edges {
            for to in targets {
                let (a, b) = (part(from), part(to));
                if a != b
                    && inside.contains(a)
                    && inside.contains(b)
                    && !is_command(from)
                    && !WIRING.contains(&a)
                {
                    why.push(format!(
                        "{a} → {b}: {} → {}",
                        from.join("::"),
                        to.join("::")
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "folder-level import cycles: {:#?}\nthrough: {why:#?}",
        cycle_names(&parts)
    );
}

#[test]
fn the_folder_cycle_check_fails_on_a_two_way_pair() {
    let mut g = graph();
    // checkout → pricing is allowed; add the way back, as it once was.
    g.edges
        .entry(vec!["pricing".into(), "rollout".into()])
        .or_default()
        .insert(vec!["checkout".into(), "facts".into()]);
    g.edges
        .entry(vec!["checkout".into(), "saga".into()])
        .or_default()
        .insert(vec!["pricing".into()]);
    let found = cycle_names(&folder_graph(&g));
    assert!(
        found
            .iter()
            .any(|c| c.contains("pricing") && c.contains("checkout")),
        "a planted cycle was not found: {found:?}"
    );
}

/// Every import that breaks a layer rule, as `from → to: rule`.
fn layer_violations(g: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for (from, targets) in &g.edges {
        let a = part(from);
        for to in targets {
            let b = part(to);
            let name = |rule: &str| format!("{} → {}: {rule}", from.join("::"), to.join("::"));
            let is_context = !WIRING.contains(&b) && !FOUNDATIONS.contains(&b) && b != "lib";
            if matches!(b, "app" | "routes" | "bench" | "demo")
                && !matches!(a, "app" | "routes" | "bench" | "demo" | "main")
            {
                found.push(name("only the wiring imports the wiring"));
            }
            if b == "demo" && a == "demo" {
                continue;
            }
            if a == "demo" && b == "bench" {
                found.push(name("the demo does not depend on the benchmarks"));
            }
            if a == "http" && is_context {
                found.push(name("http/ is plumbing and imports no context"));
            }
            if a == "config" && (is_context || WIRING.contains(&b)) {
                found.push(name("config.rs holds values and imports no context"));
            }
            let file = from.last().map(String::as_str);
            if matches!(file, Some("model" | "store"))
                && (b == "http" || to.last().map(String::as_str) == Some("http"))
            {
                found.push(name("domain files know nothing of HTTP"));
            }
        }
    }
    found
}

#[test]
fn the_layers_point_one_way() {
    let found = layer_violations(&graph());
    assert!(found.is_empty(), "layer violations: {found:#?}");
}

#[test]
fn each_layer_rule_fails_when_violated() {
    let planted: &[(&[&str], &[&str], &str)] = &[
        (&["catalog", "http"], &["app"], "only the wiring"),
        (&["checkout", "saga"], &["bench", "load"], "only the wiring"),
        (
            &["demo", "incident"],
            &["bench", "load"],
            "the demo does not depend",
        ),
        (&["http", "auth"], &["tenancy"], "http/ is plumbing"),
        (&["config"], &["analytics"], "config.rs holds values"),
        (&["inventory", "model"], &["http", "error"], "domain files"),
    ];
    for (from, to, rule) in planted {
        let mut g = graph();
        let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
        let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
        g.edges.entry(from.clone()).or_default().insert(to.clone());
        let found = layer_violations(&g);
        assert!(
            found.iter().any(|v| v.contains(rule)),
            "planting {from:?} → {to:?} broke no rule: {found:?}"
        );
    }
}

/// The string literals of Rust source (see `scan`).
fn string_literals(code: &str) -> Vec<String> {
    scan(code).literals
}

/// Table names a statement reads or writes: the word after `from`, `join`,
/// `into`, `update`, `table` (and `delete from`) in the file's SQL string literals.
fn tables_named(code: &str) -> BTreeSet<String> {
    let mut tables = BTreeSet::new();
    for literal in string_literals(code) {
        let words: Vec<String> = literal
            .split(|c: char| c.is_whitespace() || c == '(' || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for pair in words.windows(2) {
            if matches!(
                pair[0].as_str(),
                "from" | "join" | "into" | "update" | "table"
            ) {
                let name = pair[1].trim_end_matches(';');
                if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    tables.insert(name.to_owned());
                }
            }
        }
    }
    tables
}

/// The ownership list: the table in the crate docs (`src/lib.rs`), the only
/// place it is written. Table name → owning context.
fn owners() -> BTreeMap<String, String> {
    let docs = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
    owners_in(&docs)
}

fn owners_in(docs: &str) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    let section = docs
        .split("## Who owns which tables")
        .nth(1)
        .expect("lib.rs has its ownership table");
    // The rest of the heading's line, then the table.
    for line in section.lines().skip(1).take_while(|l| l.starts_with("//!")) {
        let cells: Vec<&str> = line.trim_start_matches("//!").split('|').collect();
        if cells.len() < 4 || cells[1].contains("---") || cells[1].trim() == "context" {
            continue;
        }
        let owner = cells[1].split('`').nth(1).expect("owner in backticks");
        for table in cells[2].split('`').skip(1).step_by(2) {
            let previous = owners.insert(table.to_owned(), owner.to_owned());
            assert!(
                previous.is_none(),
                "lib.rs gives table {table} two owners: {previous:?} and {owner}"
            );
        }
    }
    owners
}

/// Every table the service's schema creates: `migrations/*.sql`, and the
/// pgshift plans' expand steps under `migrations/plans`.
fn tables_created() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("migrations")
        .chain(std::fs::read_dir(dir.join("plans")).expect("plans"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql" || e == "toml"))
        .collect();
    files.sort();
    let mut tables = BTreeSet::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("read").to_lowercase();
        for at in sql.match_indices("create table ").map(|(i, _)| i) {
            let rest = sql[at + "create table ".len()..].trim_start();
            let rest = rest.strip_prefix("if not exists ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            if !name.contains('.') {
                tables.insert(name);
            }
        }
    }
    tables
}

#[test]
fn every_table_has_one_owner_listed_once_in_the_crate_docs() {
    let owners = owners();
    let created = tables_created();
    assert!(created.len() >= 30, "tables found: {created:?}");
    let unowned: Vec<_> = created
        .iter()
        .filter(|t| !owners.contains_key(*t))
        .collect();
    assert!(
        unowned.is_empty(),
        "tables with no owner in lib.rs: {unowned:?}"
    );
    let unknown: Vec<_> = owners.keys().filter(|t| !created.contains(*t)).collect();
    assert!(
        unknown.is_empty(),
        "lib.rs lists tables no migration creates: {unknown:?}"
    );
    for owner in owners.values().collect::<BTreeSet<_>>() {
        let path = owner.split("::").collect::<Vec<_>>().join("/");
        assert!(
            src_dir().join(&path).is_dir() || src_dir().join(format!("{path}.rs")).is_file(),
            "lib.rs names owner {owner}, which is no module"
        );
    }
}

#[test]
fn the_ownership_parser_reads_a_table_and_refuses_two_owners() {
    let docs = "//! ## Who owns which tables\n//! | context | tables |\n//! |---|---|\n//! | `a` | `x`, `y` |\n//! | `b` | `z` |\n";
    let owners = owners_in(docs);
    assert_eq!(owners.len(), 3);
    assert_eq!(owners["z"], "b");
    let twice = std::panic::catch_unwind(|| {
        owners_in("//! ## Who owns which tables\n//! | `a` | `x` |\n//! | `b` | `x` |\n")
    });
    assert!(twice.is_err(), "a table with two owners was accepted");
}

/// The statements that name another context's table on purpose, each with
/// why: the only ones. The list can only shrink (an entry no longer needed
/// fails `every_statement_of_a_context_names_only_its_own_tables`).
const READS_ACROSS: &[(&str, &str, &str)] = &[
    (
        "analytics/export.rs",
        "events",
        "the export is the outbox's consumer: it reads events by commit position (xid8), read-only, in batches no function of events could page as cheaply",
    ),
    (
        "cells/mover/capture.rs",
        "merchants",
        "every cell holds its merchants' rows (foreign keys point at them); the move copies the merchant's row as data, like any tenant row (the cleanup deletes it through `mercato_forget_departed_merchant()`)",
    ),
    (
        "cells/mover/record.rs",
        "merchants",
        "a move names its merchant by id or slug (`find_merchant`), read from the directory's merchants",
    ),
    (
        "cells/cli.rs",
        "merchants",
        "`mercato tenants status` prints each merchant's slug beside its cell in one join over the main database",
    ),
];

/// Every table a file names that its context does not own, as `file: table (owner)`.
fn foreign_tables(owners: &BTreeMap<String, String>) -> (usize, Vec<String>) {
    let (checked, found, _) = crossings(owners);
    (checked, found)
}

/// `foreign_tables`, with every crossing seen (listed or not) as `(file, table)`.
fn crossings(
    owners: &BTreeMap<String, String>,
) -> (usize, Vec<String>, BTreeSet<(String, String)>) {
    let mut crossings = BTreeSet::new();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut checked = 0;
    let mut found = Vec::new();
    for file in files {
        let module = module_of(&file);
        let code = code_of(&std::fs::read_to_string(&file).expect("read"));
        let code = match code.find("#[cfg(test)]") {
            Some(i) => code[..i].to_owned(),
            None => code,
        };
        let context = module.join("::");
        for table in tables_named(&code) {
            let Some(owner) = owners.get(&table) else {
                continue;
            };
            checked += 1;
            let owns = context == *owner || context.starts_with(&format!("{owner}::"));
            // The wiring seeds and measures; it owns nothing and may name anything.
            if !owns && !WIRING.contains(&part(&module)) {
                let rel = file.strip_prefix(src_dir()).expect("under src");
                let rel = rel.to_string_lossy().into_owned();
                if !READS_ACROSS
                    .iter()
                    .any(|(f, t, _)| *f == rel && *t == table)
                {
                    found.push(format!("{rel}: {table} ({owner})"));
                }
                crossings.insert((rel, table.clone()));
            }
        }
    }
    (checked, found, crossings)
}

#[test]
fn every_statement_of_a_context_names_only_its_own_tables() {
    let (checked, found, crossings) = crossings(&owners());
    for (file, table, _) in READS_ACROSS {
        assert!(
            crossings.contains(&(file.to_string(), table.to_string())),
            "{file} no longer names {table}: take it off READS_ACROSS"
        );
    }
    assert!(
        found.is_empty(),
        "tables named outside their owner: {found:#?}"
    );
    // Distinct (file, table) pairs: enough that the SQL was really read.
    assert!(checked >= 50, "only {checked} table references found");
}

#[test]
fn the_table_check_fails_when_a_context_names_another_s_table() {
    let mut owners = owners();
    // Hand `orders` to another context: checkout's statements now trespass.
    owners.insert("orders".into(), "catalog".into());
    let (_, found) = foreign_tables(&owners);
    assert!(
        found
            .iter()
            .any(|f| f.contains("checkout") && f.contains("orders")),
        "no trespass found: {found:?}"
    );
}

/// Every metric family the source records is described in `FAMILIES` (its
/// `# HELP` on /metrics) with the kind it is recorded as, and every family
/// described is recorded somewhere: the list is the whole set, once.
#[test]
fn every_metric_recorded_is_described_once_and_nothing_else_is() {
    use mercato::http::metrics::FAMILIES;
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut recorded: BTreeSet<(String, String)> = BTreeSet::new();
    for file in &files {
        let code = code_of(&std::fs::read_to_string(file).expect("read a source file"));
        for (kind, call) in [
            ("Counter", "counter!("),
            ("Gauge", "gauge!("),
            ("Histogram", "histogram!("),
        ] {
            for (at, _) in code.match_indices(call) {
                let rest = code[at + call.len()..].trim_start();
                let name = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(name, _)| name.to_owned())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: a metric's name is a literal, to be checked here",
                            file.display()
                        )
                    });
                recorded.insert((name, kind.to_owned()));
            }
        }
    }
    let described: BTreeSet<(String, String)> = FAMILIES
        .iter()
        .map(|f| (f.name.to_owned(), format!("{:?}", f.kind)))
        .collect();
    assert_eq!(
        described.len(),
        FAMILIES.len(),
        "a family is described twice"
    );
    let undescribed: Vec<_> = recorded.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "recorded but not in http::metrics::FAMILIES (or as another kind): {undescribed:?}"
    );
    let unrecorded: Vec<_> = described.difference(&recorded).collect();
    assert!(
        unrecorded.is_empty(),
        "described in http::metrics::FAMILIES but recorded nowhere: {unrecorded:?}"
    );
    assert!(FAMILIES.iter().all(|f| !f.help.trim().is_empty()));
    assert!(
        recorded.len() >= 20,
        "only {} families found",
        recorded.len()
    );
}

/// The folder-level graph as text, for a reader (and for comparing two
/// commits): `cargo test -p mercato --test architecture
/// print_the_folder_graph -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_the_folder_graph() {
    let parts = folder_graph(&graph());
    let mut arrows = 0;
    for (from, targets) in &parts.edges {
        for to in targets {
            println!("{} -> {}", from[0], to[0]);
            arrows += 1;
        }
    }
    println!("{} parts, {arrows} arrows", parts.modules.len());
    for cycle in cycle_names(&parts) {
        println!("cycle: {cycle}");
    }
}

#[test]
fn the_scanner_reads_raw_strings_escapes_and_comments_as_rust_does() {
    let source = "let q = r#\"select count(*) as \"n!\" from orders\"#; // crate::app\n\
                  let u = \"postgres://h/db\"; let c = '\"'; let e = \"a \\\" from stock\";";
    let scanned = scan(source);
    assert!(!scanned.code.contains("crate::app"), "{}", scanned.code);
    assert!(scanned.code.contains("postgres://h/db"), "{}", scanned.code);
    assert_eq!(
        scanned.literals,
        [
            "select count(*) as \"n!\" from orders",
            "postgres://h/db",
            "a \" from stock"
        ]
    );
    assert_eq!(
        tables_named(&scanned.code),
        BTreeSet::from(["orders".to_owned(), "stock".to_owned()])
    );
}
