//! The shape of the code, checked: dependencies point one way (no import cycle
//! through `http/`, domain files never import the web layer), and every SQL
//! statement in a context's `store.rs` names only tables that context owns.
//!
//! The import graph is drawn from `crate::…`, `super::…` and `self::…` paths
//! in the source (`use` items and paths written inline); `mod x;` declarations
//! are containment, not dependencies, and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who owns which tables (the same table as in `src/lib.rs`).
const OWNERS: &[(&str, &[&str])] = &[
    ("tenancy", &["merchants", "api_keys"]),
    ("catalog", &["products", "variants"]),
    ("inventory", &["stock", "reservations", "reservation_items"]),
    ("checkout", &["orders", "order_items"]),
    ("payments", &["payments"]),
    (
        "pricing",
        &[
            "pricing_settings",
            "pricing_rule_revisions",
            "pricing_rule_usage",
            "pricing_customer_usage",
            "pricing_order_uses",
            "pricing_rollouts",
            "pricing_rollout_orders",
            "pricing_alerts",
        ],
    ),
    (
        "events",
        &[
            "events",
            "webhook_endpoints",
            "webhook_deliveries",
            "webhook_attempts",
        ],
    ),
    (
        "remediation",
        &[
            "remediation_incidents",
            "order_adjustments",
            "remediation_effects",
        ],
    ),
    ("wallet", &["wallets", "wallet_entries"]),
    ("mail", &["mail_outbox"]),
    (
        "legacy_orders",
        &["legacy_orders", "order_records", "customers"],
    ),
];

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

/// The source without comments, so prose that names a module is no dependency.
fn code_of(source: &str) -> String {
    source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
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
    let found: Vec<String> = cycles(&g)
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" ⇄ ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn domain_files_know_nothing_of_http() {
    let g = graph();
    for (module, targets) in &g.edges {
        let file = module.last().map(String::as_str);
        if matches!(file, Some("model" | "store")) {
            for t in targets {
                assert!(
                    t.first().map(String::as_str) != Some("http")
                        && t.last().map(String::as_str) != Some("http"),
                    "{} imports the web layer ({})",
                    module.join("::"),
                    t.join("::")
                );
            }
        }
    }
}

/// Table names a statement reads or writes: the word after `from`, `join`,
/// `into`, `update` (and `delete from`) in the file's SQL string literals.
fn tables_named(code: &str) -> BTreeSet<String> {
    let mut tables = BTreeSet::new();
    for literal in code.split('"').skip(1).step_by(2) {
        let words: Vec<String> = literal
            .split(|c: char| c.is_whitespace() || c == '(' || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for pair in words.windows(2) {
            if matches!(pair[0].as_str(), "from" | "join" | "into" | "update") {
                let name = pair[1].trim_end_matches(';');
                if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    tables.insert(name.to_owned());
                }
            }
        }
    }
    tables
}

#[test]
fn each_store_names_only_its_own_tables() {
    let all: BTreeMap<&str, &str> = OWNERS
        .iter()
        .flat_map(|(owner, tables)| tables.iter().map(move |t| (*t, *owner)))
        .collect();
    let mut checked = 0;
    for (context, _) in OWNERS {
        let stores = [
            src_dir().join(context).join("store.rs"),
            src_dir().join(context).join("sandbox.rs"),
        ];
        for store in stores.iter().filter(|p| p.exists()) {
            let code = code_of(&std::fs::read_to_string(store).expect("read"));
            for table in tables_named(&code) {
                if let Some(owner) = all.get(table.as_str()) {
                    checked += 1;
                    assert_eq!(
                        owner,
                        context,
                        "{} names table {table}, which {owner} owns",
                        store.display()
                    );
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} table references found");
}

#[test]
fn the_ownership_table_in_the_crate_docs_matches() {
    let docs = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
    for (context, tables) in OWNERS {
        let row = docs
            .lines()
            .find(|l| l.starts_with(&format!("//! | `{context}`")))
            .unwrap_or_else(|| panic!("lib.rs lists {context}"));
        for table in *tables {
            assert!(row.contains(&format!("`{table}`")), "{row} lists {table}");
        }
    }
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
