//! Checks on the crate's own structure: the modules' imports form no cycle,
//! and the top-level layers only import the ones below them (the order in
//! the crate docs' Layout). Read from the source's `use crate::` lines;
//! `cargo test -p host --lib structure -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, highest layer first: each may import only those
/// after it (and its own submodules). `fuzzing` drives the input parsers of
/// every layer, so it sits above them all. `config` gathers each layer's
/// settings (their types live with the layers) and only `cli` and `serve`
/// read it.
const LAYERS: &[&str] = &[
    "fuzzing",
    "cli",
    "serve",
    "config",
    "admin",
    "front",
    "apps",
    "cluster",
    "routing",
    "runtime",
    "kv",
    "redis_link",
    "http",
    "metrics",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `apps/registry.rs` → `apps::registry`; `apps/mod.rs` → `apps`.
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" || one == "tests" => None,
        _ => Some(parts.join("::")),
    }
}

/// The module `super::` names in `file`, with a trailing `::` (empty for
/// the crate root).
fn parent_of(file: &Path, root: &Path) -> String {
    let module = module_of(root, file).unwrap_or_default();
    let mut parts: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
    parts.pop();
    parts.iter().map(|p| format!("{p}::")).collect()
}

/// Every path a `use` tree names: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| match p.as_str() {
            "self" => prefix.to_string(),
            _ if prefix.is_empty() => p,
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// Module → the modules its `use crate::` lines import.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter_map(|f| Some((module_of(&root, f)?, f.clone())))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read source");
        // Comments (doc links included) are not imports: whole comment
        // lines, and the rest of a line after ` //`.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| l.find(" //").map_or(l, |at| &l[..at]))
            .collect::<Vec<_>>()
            .join("\n")
            // `super::` is the parent module (a test module's `super::*` is
            // its own file, and is left out).
            .replace("super::*", "")
            .replace("super::", &format!("crate::{}", parent_of(file, &root)));
        let mut paths = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let statement = &rest[at + "crate::".len()..];
            if rest[..at].ends_with("use ") {
                let end = statement.find(';').unwrap_or(statement.len());
                paths.extend(expand(&statement[..end]));
                rest = &statement[end..];
            } else {
                // A path in code: `crate::a::b::f(...)`.
                let end = statement
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(statement.len());
                paths.push(statement[..end].trim_end_matches(':').to_string());
                rest = &statement[end..];
            }
        }
        let mut deps = BTreeSet::new();
        {
            for path in paths {
                // The longest module the path starts with.
                let mut target = path.as_str();
                let found = loop {
                    if modules.contains_key(target) {
                        break Some(target.to_string());
                    }
                    match target.rfind("::") {
                        Some(i) => target = &target[..i],
                        None => break None,
                    }
                };
                if let Some(target) = found
                    && target != *module
                {
                    deps.insert(target);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
}

#[test]
fn structure_no_import_cycles() {
    let graph = graph();
    for (module, deps) in &graph {
        println!(
            "{module} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    // Layers: only downwards (or within one top-level module).
    let mut backward = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            let same_top = module.split("::").next() == dep.split("::").next();
            if !same_top && layer(dep) <= layer(module) {
                backward.push(format!("{module} -> {dep}"));
            }
        }
    }
    assert!(
        backward.is_empty(),
        "imports against the layers: {backward:#?}"
    );
    // No cycle: repeatedly remove modules that import nothing left.
    let mut left = graph.clone();
    loop {
        let leaves: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if leaves.is_empty() {
            break;
        }
        for leaf in leaves {
            left.remove(&leaf);
        }
    }
    // What is left depends on a cycle; drop what nothing left imports, so
    // that only the cycles remain to be shown.
    loop {
        let imported: BTreeSet<String> = left.values().flatten().cloned().collect();
        let roots: Vec<String> = left
            .keys()
            .filter(|m| !imported.contains(*m))
            .cloned()
            .collect();
        if roots.is_empty() {
            break;
        }
        for root in roots {
            left.remove(&root);
        }
    }
    assert!(
        left.is_empty(),
        "these modules import each other in a cycle: {:#?}",
        left.iter()
            .map(|(m, deps)| format!(
                "{m} -> {}",
                deps.iter()
                    .filter(|d| left.contains_key(*d))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .collect::<Vec<_>>()
    );
}

#[test]
fn structure_check_reads_use_trees() {
    assert_eq!(
        expand("apps::{records::{AppRecord, VersionRecord}, error::AppError}"),
        [
            "apps::records::AppRecord",
            "apps::records::VersionRecord",
            "apps::error::AppError"
        ]
    );
    assert_eq!(
        expand("runtime::component::{self, Pre}"),
        ["runtime::component", "runtime::component::Pre"]
    );
    assert_eq!(expand("metrics::metrics as m"), ["metrics::metrics"]);
}
