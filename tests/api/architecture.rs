//! The shape of the code, checked: the library's layers import only layers
//! below them, no two files import each other (directly or around a loop), no
//! source file outgrows its bound, and every folder says what it holds. See
//! ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's layers, lowest first; each may use only those before it.
const LAYERS: [&str; 9] = [
    "proto", "domain", "metrics", "store", "webhooks", "verify", "api", "serve", "config",
];

/// Non-test lines a source file may have.
const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, relative to it.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path.strip_prefix(src()).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.sort();
    out
}

/// The file's text before its `#[cfg(test)]` module, if any.
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// The module path of a file: `store/mod.rs` is `store`, `store/tokens.rs` is
/// `store::tokens`.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The `crate::a::b` paths a library file names (in `use` lists too).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let mut path = Vec::new();
        let mut tail = rest;
        loop {
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if end == 0 {
                break;
            }
            path.push(tail[..end].to_owned());
            tail = &tail[end..];
            let Some(next) = tail.strip_prefix("::") else {
                break;
            };
            tail = next;
        }
        if tail.starts_with('{') {
            // `crate::a::{b, c::d}`: each item extends the path.
            let group = &tail[1..tail.find('}').unwrap_or(tail.len())];
            for item in group.split(',') {
                let head = item.trim().split("::").next().unwrap_or("").trim();
                if !head.is_empty() && head != "self" {
                    let mut full = path.clone();
                    full.push(head.to_owned());
                    paths.push(full);
                }
            }
        }
        if !path.is_empty() {
            paths.push(path);
        }
    }
    paths
}

/// Edges between the library's files: which file names which.
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<PathBuf> = sources()
        .into_iter()
        .filter(|file| !file.starts_with("cli") && file != Path::new("main.rs"))
        .collect();
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|file| (module_of(file), file.display().to_string()))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(src().join(file)).unwrap();
        let edges = graph.entry(name.clone()).or_default();
        for path in crate_paths(non_test(&text)) {
            // The longest prefix that is a module file.
            let target = (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]));
            if let Some(target) = target
                && *target != name
            {
                edges.insert(target.clone());
            }
        }
    }
    graph
}

fn layer_of(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// A loop in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn layers_import_only_the_layers_below_them() {
    let graph = file_graph();
    let mut upward = Vec::new();
    for (file, targets) in &graph {
        let from = layer_of(file);
        let Some(from_rank) = LAYERS.iter().position(|layer| *layer == from) else {
            assert_eq!(from, "lib", "{file} is in no layer: add it to LAYERS");
            continue;
        };
        for target in targets {
            let to = layer_of(target);
            let to_rank = LAYERS.iter().position(|layer| *layer == to);
            if to != from && to_rank.is_none_or(|rank| rank > from_rank) {
                upward.push(format!("{file} -> {target}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that go up a layer: {upward:#?}");
}

#[test]
fn no_file_imports_itself_around_a_loop() {
    let graph = file_graph();
    assert!(graph.len() > 20, "the graph was read: {graph:?}");
    assert!(
        graph["verify/mod.rs"].contains("store/mod.rs"),
        "edges are found: {:?}",
        graph["verify/mod.rs"]
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a.rs", vec!["b.rs"]),
        ("b.rs", vec!["c.rs"]),
        ("c.rs", vec!["a.rs"]),
    ]
    .into_iter()
    .map(|(from, to)| (from.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).unwrap().len(), 3);
    assert_eq!(
        crate_paths("use crate::store::{Store, tokens::Row};\ncrate::domain::clock::now()"),
        vec![
            vec!["store".to_owned(), "Store".to_owned()],
            vec!["store".to_owned(), "tokens".to_owned()],
            vec!["store".to_owned()],
            vec!["domain".to_owned(), "clock".to_owned(), "now".to_owned()],
        ]
    );
}

#[test]
fn no_source_file_outgrows_its_bound() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(src().join(&file)).unwrap();
            let lines = non_test(&text).lines().count();
            (lines > MAX_LINES).then(|| format!("src/{} has {lines} lines", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} non-test lines: {long:?}");
}

#[test]
fn every_folder_says_what_it_holds_and_may_use() {
    for file in sources() {
        if file.file_name().is_some_and(|name| name == "mod.rs") {
            let text = std::fs::read_to_string(src().join(&file)).unwrap();
            let doc: String = text
                .lines()
                .take_while(|line| line.starts_with("//!"))
                .collect();
            assert!(
                !doc.is_empty() && doc.contains("May use"),
                "src/{} does not start with a //! comment saying what it may use",
                file.display()
            );
        }
    }
}

/// Every `.rs` file of the client crate, with its text.
fn client_crate_sources() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/patd-client/src");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect();
    files.sort();
    files
}

/// The server library does not use patd-client (only the binary's command line
/// does), and patd-client uses nothing of the server: no `patd::` path, no sqlx,
/// no envoy-types; its files keep the same bound as the server's.
#[test]
fn the_client_crate_and_the_server_stay_apart() {
    for file in sources() {
        let in_binary = file.starts_with("cli") || file == Path::new("main.rs");
        let text = std::fs::read_to_string(src().join(&file)).unwrap();
        assert!(
            in_binary || !text.contains("patd_client"),
            "src/{} (the library) uses patd_client",
            file.display()
        );
    }
    let files = client_crate_sources();
    assert!(files.len() >= 5, "the client crate was read: {files:?}");
    for (path, text) in &files {
        assert!(
            !text.contains("patd::"),
            "{} uses the server",
            path.display()
        );
        let lines = non_test(text).lines().count();
        assert!(lines <= MAX_LINES, "{} has {lines} lines", path.display());
    }
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/patd-client/Cargo.toml"),
    )
    .unwrap();
    for server_only in ["sqlx", "envoy-types", "path = \"../.."] {
        assert!(
            !manifest.contains(server_only),
            "patd-client depends on {server_only}"
        );
    }
}
