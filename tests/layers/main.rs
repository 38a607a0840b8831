//! The layers drawn in `src/lib.rs` are true: every `crate::…` path in a module names a module
//! of its own layer or one below, no two top-level modules import each other in a cycle, and
//! every module declared in `lib.rs` is drawn exactly once. docs/architecture.md draws the
//! same layers.
//!
//! The drawing is read from `lib.rs`'s module doc, lines of the form
//! `//! N. `a`, `b` — what they are`, so the picture and the check cannot drift apart.
//!
//! Beside it, the shape of `src/` below the modules: no two files import each other in a cycle
//! (`files.rs`), and no file or function grows past what one can read (`sizes.rs`).

mod files;
mod sizes;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use source::{root, rust_files};

/// `N. `a`, `b` — …` → (N, [a, b]).
fn layer_line(text: &str) -> Option<(usize, Vec<String>)> {
    let (n, rest) = text.trim().split_once(". ")?;
    let n: usize = n.parse().ok()?;
    let names = rest.split(" — ").next()?;
    let modules: Vec<String> = names
        .split(',')
        .map(|m| m.trim().trim_matches('`').trim_end_matches('/').to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    Some((n, modules))
}

/// Module → layer, as `lib.rs` draws it.
fn drawn_layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut layers = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("//!")) {
        if let Some((n, modules)) = layer_line(line) {
            for m in modules {
                assert!(
                    layers.insert(m.clone(), n).is_none(),
                    "lib.rs draws `{m}` twice"
                );
            }
        }
    }
    assert!(layers.len() > 10, "lib.rs draws no layers: {layers:?}");
    layers
}

/// Items `lib.rs` re-exports at the crate root (`pub use app::{Application, ServerHandle};`),
/// by the module they come from.
fn root_reexports() -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut names = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            let name = item
                .rsplit(" as ")
                .next()
                .unwrap_or(item)
                .rsplit("::")
                .next()
                .unwrap();
            names.insert(name.trim().to_owned(), module.to_owned());
        }
    }
    names
}

/// The top-level module a file belongs to (`src/pools/runner.rs` → `pools`).
fn owner(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// Top-level modules a file names through `crate::`, with the line of each: `crate::x`
/// anywhere in code, and every item of a `use crate::{a, b::c}` group.
fn imports(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut group: Option<(usize, usize)> = None; // (brace depth, line) inside `use crate::{`
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            // `poolgate::…` or `$crate::…` are not this crate's internal paths.
            let before = &rest[..at];
            if before.ends_with('$') || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
            {
                rest = after;
                continue;
            }
            if after.starts_with('{') {
                group = Some((1, i + 1));
                break;
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((name, i + 1));
            }
            rest = after;
        }
        if let Some((mut depth, _)) = group {
            // Items at depth 1 of the group: their first path segment is a top-level module.
            let start = if code.contains("crate::{") {
                code.split_once("crate::{").unwrap().1
            } else {
                code
            };
            let mut item = String::new();
            let mut at_item_start = true;
            for c in start.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_item_start = true,
                    c if depth == 1 && at_item_start && (c.is_alphanumeric() || c == '_') => {
                        item.push(c);
                        continue;
                    }
                    _ => {}
                }
                if !item.is_empty() {
                    found.push((std::mem::take(&mut item), i + 1));
                    at_item_start = false;
                }
            }
            if !item.is_empty() {
                found.push((item, i + 1));
            }
            group = (depth > 0).then_some((depth, i + 1));
        }
    }
    found
}

#[test]
fn every_module_imports_only_its_own_layer_and_those_below() {
    let layers = drawn_layers();
    let reexports = root_reexports();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let from = owner(file);
        if from == "lib" || from == "main" || from == "bin" {
            continue;
        }
        let Some(&from_layer) = layers.get(&from) else {
            panic!(
                "{} belongs to `{from}`, which lib.rs does not draw",
                file.display()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (to, line) in imports(&text) {
            // A crate-root re-export (`crate::AppState`) counts as the module it comes from.
            let to = reexports.get(&to).cloned().unwrap_or(to);
            let Some(&to_layer) = layers.get(&to) else {
                continue;
            };
            if to_layer > from_layer {
                upward.push(format!(
                    "{}:{line}: `{from}` (layer {from_layer}) uses `{to}` (layer {to_layer})",
                    file.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn no_two_top_level_modules_import_each_other_in_a_cycle() {
    let layers = drawn_layers();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = owner(file);
        if !layers.contains_key(&from) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (to, _) in imports(&text) {
            if to != from && layers.contains_key(&to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn every_module_is_drawn_once_and_readme_draws_the_same_layers() {
    let layers = drawn_layers();
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let missing: Vec<_> = declared
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "declared in lib.rs but not drawn: {missing:?}"
    );
    let absent: Vec<_> = layers
        .keys()
        .filter(|m| *m != "main.rs")
        .filter(|m| {
            let src = root().join("src");
            !src.join(format!("{m}.rs")).exists() && !src.join(m).join("mod.rs").exists()
        })
        .collect();
    assert!(absent.is_empty(), "drawn but no such module: {absent:?}");

    let readme = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut readme_layers = BTreeMap::new();
    for line in readme.lines() {
        if let Some((n, modules)) = layer_line(line) {
            for m in modules {
                readme_layers.insert(m, n);
            }
        }
    }
    assert_eq!(
        readme_layers, layers,
        "docs/architecture.md's Layout section draws other layers than lib.rs"
    );
}

#[test]
fn the_import_reader_sees_paths_and_groups_and_skips_comments() {
    let text = "use crate::store::Store;\n\
                // use crate::ws::x;\n\
                use crate::{auth::users::User, error::{Error, MfaKind},\n    pools};\n\
                let x = crate::metrics::Metrics::new();\n\
                use poolgate::state::AppState;\n";
    let names: Vec<String> = imports(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["store", "auth", "error", "pools", "metrics"]);
}
