//! The layering of `server/` (see the table in `server/mod.rs`), checked on the source:
//! every `crate::server::X` a module names must sit in its own layer or one below, and
//! no two modules may depend on each other in a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top to bottom, as in the table of `server/mod.rs`.
const LAYERS: [&[&str]; 10] = [
    &["startup", "cli", "fuzz_tests", "layout_tests"],
    &["scheduler"],
    &["http"],
    &["state"],
    &["error"],
    &["keys", "accounts", "events"],
    &["storage"],
    &["audit"],
    &["config", "telemetry"],
    &["crypto", "files"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("server::{module} is in no layer of server/mod.rs"))
}

/// What `server/mod.rs` re-exports, by the module it comes from.
fn reexported_from(name: &str) -> Option<&'static str> {
    match name {
        "AppState" => Some("state"),
        "Config" => Some("config"),
        "Application" | "ServeOptions" => Some("startup"),
        _ => None,
    }
}

/// A file without its comments (whole-line ones, and ` // ...` after code; a `//` inside
/// a string such as `"http://"` stays).
fn code_of(source: &str) -> String {
    source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" //").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The server modules named after each `prefix` in `code` (`crate::server::`, or the
/// `super::` of a file directly in `server/`): `prefix::a::..`, `prefix::{a, b::c}`, and
/// the names `server/mod.rs` re-exports.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, m) in code.match_indices(prefix) {
        // `super::super::x` is not this file's `super::x`.
        if prefix == "super::" && code[..i].ends_with("super::") {
            continue;
        }
        let rest = &code[i + m.len()..];
        let items: Vec<String> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(ident)
                .collect(),
            None => vec![ident(rest)],
        };
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            match reexported_from(&item) {
                Some(module) => names.insert(module.to_string()),
                None if item.starts_with(|c: char| c.is_ascii_lowercase()) => names.insert(item),
                None => false,
            };
        }
    }
    names.remove("self");
    names.remove("super");
    names
}

/// The server modules a file names. `top_level`: the file sits directly in `server/`,
/// so its `super::` is `crate::server::`.
fn named(source: &str, top_level: bool) -> BTreeSet<String> {
    let code = code_of(source);
    let mut names = names_after(&code, "crate::server::");
    if top_level {
        names.extend(names_after(&code, "super::"));
    }
    names
}

/// Each top-level module of `server/` and the other server modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let top = top.trim_end_matches(".rs").to_string();
            if top == "mod" {
                continue;
            }
            let top_level = rel.components().count() == 1;
            let mut deps = named(&std::fs::read_to_string(&path).unwrap(), top_level);
            deps.remove(&top);
            graph.entry(top).or_default().extend(deps);
        }
    }
    graph
}

#[test]
fn dependencies_only_point_down() {
    let graph = graph();
    assert!(graph.contains_key("keys") && graph.contains_key("http"));
    let mut upward = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if layer(dep) < layer(module) {
                upward.push(format!(
                    "server::{module} uses server::{dep}, a layer above it"
                ));
            }
        }
    }
    assert!(upward.is_empty(), "{}", upward.join("\n"));
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let graph = graph();
    for start in graph.keys() {
        // Everything reachable from `start`'s dependencies must not lead back to it.
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = graph[start].iter().collect();
        while let Some(m) = stack.pop() {
            assert_ne!(
                m, start,
                "server::{start} depends on itself through other modules"
            );
            if seen.insert(m.clone()) {
                stack.extend(graph.get(m).into_iter().flatten());
            }
        }
    }
}

#[test]
fn every_way_of_naming_a_module_is_found() {
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let source = "use crate::server::http::api; // crate::server::cli\n\
                  // use crate::server::scheduler;\n\
                  use crate::server::{audit, keys::KeyService, self};\n\
                  fn f(s: crate::server::AppState) { let _ = \"http://x\"; }\n\
                  use super::files;\n\
                  use super::super::telemetry;";
    assert_eq!(
        named(source, false),
        set(&["audit", "http", "keys", "state"])
    );
    assert_eq!(
        named(source, true),
        set(&["audit", "files", "http", "keys", "state"])
    );
    assert!(layer("http") < layer("keys"));
}

#[test]
fn the_server_uses_the_ui_only_to_mount_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let mut pending = vec![root.clone()];
    let mut uses = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n != "layout_tests.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
                for line in code.filter(|l| l.contains("crate::app")) {
                    uses.push(format!("{}: {}", path.display(), line.trim()));
                }
            }
        }
    }
    assert_eq!(uses.len(), 1, "{uses:#?}");
    assert!(
        uses[0].ends_with("use crate::app::{App, shell};"),
        "{uses:#?}"
    );
}
