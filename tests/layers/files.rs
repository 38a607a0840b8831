//! No two files of `src/` import each other, directly or round a longer loop: whoever reads one
//! file of a cycle must read them all at once.
//!
//! A file imports the file that *defines* what it names through a path that starts with
//! `crate::`, `super::` or `self::` (in a `use` or in code), or, in a `use`, with a module the
//! file itself declares (`pub use conn::Conn`). The defining file is the deepest module file on
//! the path, followed through `pub use` re-exports (`crate::AppState` is `src/state.rs`).
//!
//! A module file naming its own submodules (`rpc/mod.rs` → `rpc/conn.rs`, and `lib.rs` →
//! everything) is the module's wiring, not an import, and is not counted; the submodules may
//! use the types their parent defines. Inline modules (`mod tests { … }`) are not read, and
//! glob imports (`use super::*`) name no file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::source::{code_only, root, rust_files};

/// One name a `use` brings in: the absolute module path (`["auth", "users", "User"]`) and the
/// name it goes by here (`User`, or its `as` alias).
#[derive(Debug, Clone, PartialEq)]
struct Import {
    path: Vec<String>,
    name: String,
    public: bool,
    line: usize,
}

/// What the check needs of one file.
struct Parsed {
    /// `src/auth/otp.rs` → `["auth", "otp"]`; `src/auth/mod.rs` → `["auth"]`.
    module: Vec<String>,
    /// Every path naming something of the crate, absolute, with its line.
    paths: Vec<(Vec<String>, usize)>,
    /// The `use` items, absolute, for following re-exports.
    uses: Vec<Import>,
}

/// The module path of a file of `src/`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let mut module: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_str().unwrap().to_owned())
        .collect();
    if matches!(
        module.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        module.pop();
    }
    module
}

/// The file that holds the module `path` (`[]` is `lib.rs`), if there is one.
fn file_of(path: &[String]) -> Option<PathBuf> {
    let src = root().join("src");
    if path.is_empty() {
        return Some(src.join("lib.rs"));
    }
    let base = path.iter().fold(src, |dir, seg| dir.join(seg));
    let file = base.with_extension("rs");
    if file.exists() {
        return Some(file);
    }
    Some(base.join("mod.rs")).filter(|f| f.exists())
}

/// `code` with the bodies of inline modules (`mod tests { … }`) blanked.
fn without_inline_modules(code: &str) -> String {
    let mut out: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < out.len() {
        if out[i] != 'm' {
            i += 1;
            continue;
        }
        let rest: String = out[i..out.len().min(i + 120)].iter().collect();
        let starts_word = i == 0 || !(out[i - 1].is_alphanumeric() || out[i - 1] == '_');
        let inline = starts_word
            && rest.starts_with("mod ")
            && rest
                .split_once(['{', ';'])
                .is_some_and(|(head, _)| rest.as_bytes()[head.len()] == b'{');
        if !inline {
            i += 1;
            continue;
        }
        let open = i + out[i..].iter().position(|&c| c == '{').unwrap();
        let mut depth = 0;
        let mut j = open;
        while j < out.len() {
            match out[j] {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if out[j] != '\n' {
                out[j] = ' ';
            }
            j += 1;
            if depth == 0 {
                break;
            }
        }
        i = j;
    }
    out.into_iter().collect()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A cursor over code, tracking the line.
struct Cursor<'a> {
    chars: &'a [char],
    at: usize,
}

impl Cursor<'_> {
    fn skip_space(&mut self) {
        while self.at < self.chars.len() && self.chars[self.at].is_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        let ahead: String = self.chars[self.at..(self.at + n).min(self.chars.len())]
            .iter()
            .collect();
        if ahead == s {
            self.at += n;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(is_ident) {
            self.at += 1;
        }
        (self.at > start).then(|| self.chars[start..self.at].iter().collect())
    }

    /// One `use` tree after `prefix`: `a::b`, `a::{b, c::d}`, `a as b`, `a::*`, `self`. Pushes
    /// (path, name) for each leaf; a glob has no name and is left out.
    fn use_tree(&mut self, prefix: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let mut path = prefix;
        loop {
            self.skip_space();
            if self.eat("{") {
                loop {
                    self.skip_space();
                    if self.eat("}") || self.peek().is_none() {
                        return;
                    }
                    self.use_tree(path.clone(), out);
                    self.skip_space();
                    self.eat(",");
                }
            }
            if self.eat("*") {
                return;
            }
            let Some(seg) = self.ident() else { return };
            path.push(seg);
            self.skip_space();
            if !self.eat("::") {
                break;
            }
        }
        self.skip_space();
        let mut name = path.last().cloned().unwrap_or_default();
        if self.eat("as") {
            self.skip_space();
            name = self.ident().unwrap_or_default();
        }
        if path.last().is_some_and(|s| s == "self") {
            path.pop();
            name = path.last().cloned().unwrap_or_default();
        }
        out.push((path, name));
    }
}

/// Makes a path as written in `module` absolute: `crate::a` → `[a]`, `super::a` → the parent's
/// `a`, `self::a` and a declared submodule `a::b` → under `module`. `None` for another crate's.
fn absolute(
    path: &[String],
    module: &[String],
    children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        child if children.contains(child) => [module, &[child.to_owned()]].concat(),
        _ => return None,
    };
    let mut rest = rest;
    while let Some(("super", more)) = rest.split_first().map(|(s, m)| (s.as_str(), m)) {
        base.pop();
        rest = more;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Line (from 1) of the character at `at`, given where each line starts.
fn line_at(starts: &[usize], at: usize) -> usize {
    starts.partition_point(|&start| start <= at)
}

/// Reads a file's `use` items and its other `crate::`/`super::`/`self::` paths.
fn parse(file: &Path, text: &str) -> Parsed {
    let module = module_of(file);
    let code = without_inline_modules(&code_only(text));
    let chars: Vec<char> = code.chars().collect();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            (0..chars.len())
                .filter(|&i| chars[i] == '\n')
                .map(|i| i + 1),
        )
        .collect();
    let children: BTreeSet<String> = code
        .split(';')
        .filter_map(|stmt| {
            let words: Vec<&str> = stmt.split_whitespace().collect();
            match words.as_slice() {
                [.., "mod", name] if name.chars().all(is_ident) => Some((*name).to_owned()),
                _ => None,
            }
        })
        .collect();
    let mut uses = Vec::new();
    let mut paths = Vec::new();
    let mut in_use = vec![false; chars.len()];
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        if !starts_word || !chars[i..].starts_with(&['u', 's', 'e', ' ']) {
            i += 1;
            continue;
        }
        let statement_start = chars[..i]
            .iter()
            .rposition(|c| matches!(c, ';' | '{' | '}'))
            .map_or(0, |at| at + 1);
        let public = chars[statement_start..i]
            .iter()
            .collect::<String>()
            .contains("pub");
        let mut cursor = Cursor {
            chars: &chars,
            at: i + 4,
        };
        let mut tree = Vec::new();
        cursor.use_tree(Vec::new(), &mut tree);
        let line = line_at(&starts, i);
        for (path, name) in tree {
            if let Some(path) = absolute(&path, &module, &children) {
                paths.push((path.clone(), line));
                uses.push(Import {
                    path,
                    name,
                    public,
                    line,
                });
            }
        }
        in_use[i..cursor.at].iter_mut().for_each(|b| *b = true);
        i = cursor.at.max(i + 1);
    }
    for prefix in ["crate::", "super::", "self::"] {
        let p: Vec<char> = prefix.chars().collect();
        for at in 0..chars.len() {
            let starts_word =
                at == 0 || !(is_ident(chars[at - 1]) || matches!(chars[at - 1], ':' | '$'));
            if in_use[at] || !starts_word || !chars[at..].starts_with(&p) {
                continue;
            }
            let mut cursor = Cursor { chars: &chars, at };
            let mut path = Vec::new();
            while let Some(seg) = cursor.ident() {
                path.push(seg);
                if !cursor.eat("::") {
                    break;
                }
            }
            if let Some(path) = absolute(&path, &module, &children) {
                paths.push((path, line_at(&starts, at)));
            }
        }
    }
    Parsed {
        module,
        paths,
        uses,
    }
}

/// The file that defines what `path` names: the deepest module file on it, then through that
/// file's `pub use` of the next name, if it re-exports it.
fn defining_file(path: &[String], parsed: &BTreeMap<PathBuf, Parsed>, depth: usize) -> PathBuf {
    let mut file = file_of(&[]).unwrap();
    for (k, seg) in path.iter().enumerate() {
        if let Some(deeper) = file_of(&path[..=k]) {
            file = deeper;
            continue;
        }
        let reexport = parsed
            .get(&file)
            .and_then(|p| p.uses.iter().find(|u| u.public && &u.name == seg));
        if let Some(reexport) = reexport.filter(|_| depth < 8) {
            let target = [&reexport.path[..], &path[k + 1..]].concat();
            return defining_file(&target, parsed, depth + 1);
        }
        break;
    }
    file
}

/// File → the files it imports, each with the first line that does.
fn file_graph() -> BTreeMap<PathBuf, BTreeMap<PathBuf, usize>> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let parsed: BTreeMap<PathBuf, Parsed> = files
        .iter()
        .filter(|f| !f.ends_with("src/main.rs") && !f.starts_with(root().join("src/bin")))
        .map(|f| (f.clone(), parse(f, &std::fs::read_to_string(f).unwrap())))
        .collect();
    let mut graph = BTreeMap::new();
    for (file, p) in &parsed {
        let mut edges: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for (path, line) in &p.paths {
            let to = defining_file(path, &parsed, 0);
            let wiring = parsed.get(&to).is_some_and(|t| {
                t.module.len() > p.module.len() && t.module.starts_with(&p.module)
            });
            if &to != file && !wiring {
                edges.entry(to).or_insert(*line);
            }
        }
        graph.insert(file.clone(), edges);
    }
    graph
}

/// The strongly connected components of more than one file (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<PathBuf, BTreeMap<PathBuf, usize>>) -> Vec<Vec<PathBuf>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<PathBuf, BTreeMap<PathBuf, usize>>,
        index: BTreeMap<&'a PathBuf, (usize, usize)>,
        stack: Vec<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a PathBuf) {
        let n = w.index.len();
        w.index.insert(v, (n, n));
        w.stack.push(v);
        for to in w.graph.get(v).into_iter().flat_map(|e| e.keys()) {
            if !w.index.contains_key(to) {
                visit(w, to);
                let low = w.index[to].1.min(w.index[v].1);
                w.index.get_mut(v).unwrap().1 = low;
            } else if w.stack.contains(&to) {
                let low = w.index[to].0.min(w.index[v].1);
                w.index.get_mut(v).unwrap().1 = low;
            }
        }
        if w.index[v].0 == w.index[v].1 {
            let at = w.stack.iter().position(|f| *f == v).unwrap();
            let component: Vec<PathBuf> = w.stack.drain(at..).cloned().collect();
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

fn relative(file: &Path) -> String {
    file.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn no_two_files_of_src_import_each_other_in_a_cycle() {
    let graph = file_graph();
    let mut report = Vec::new();
    for component in cycles(&graph) {
        let names: Vec<String> = component.iter().map(|f| relative(f)).collect();
        let mut lines = vec![format!("cycle: {}", names.join(", "))];
        for from in &component {
            for (to, line) in &graph[from] {
                if component.contains(to) {
                    lines.push(format!("  {}:{line} uses {}", relative(from), relative(to)));
                }
            }
        }
        report.push(lines.join("\n"));
    }
    assert!(
        report.is_empty(),
        "files importing each other (move what both need into one of them, or below both):\n{}",
        report.join("\n")
    );
}

#[test]
fn the_path_reader_resolves_groups_aliases_parents_and_children() {
    let file = root().join("src/auth/otp.rs");
    let text = "use super::users::{User, TotpOrDate as T};\n\
                use crate::{store::Store, error::{Error, self}};\n\
                // use crate::ws::x;\n\
                pub use conn::Conn;\n\
                mod conn;\n\
                fn f() { let s = \"crate::rest::x\"; crate::metrics::Metrics::new(); }\n\
                mod tests { use crate::server::app; }\n";
    let parsed = parse(&file, text);
    let paths: Vec<(String, usize)> = parsed
        .paths
        .iter()
        .map(|(p, line)| (p.join("::"), *line))
        .collect();
    assert_eq!(
        paths,
        [
            ("auth::users::User".to_owned(), 1),
            ("auth::users::TotpOrDate".to_owned(), 1),
            ("store::Store".to_owned(), 2),
            ("error::Error".to_owned(), 2),
            ("error".to_owned(), 2),
            ("auth::otp::conn::Conn".to_owned(), 4),
            ("metrics::Metrics::new".to_owned(), 6),
        ]
    );
    let names: Vec<&str> = parsed.uses.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["User", "T", "Store", "Error", "error", "Conn"]);
    assert!(parsed.uses.iter().all(|u| u.public == (u.name == "Conn")));
}

#[test]
fn a_re_export_leads_to_the_file_that_defines_the_item() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let parsed: BTreeMap<PathBuf, Parsed> = files
        .iter()
        .map(|f| (f.clone(), parse(f, &std::fs::read_to_string(f).unwrap())))
        .collect();
    let path = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        defining_file(&path("AppState"), &parsed, 0),
        root().join("src/state.rs")
    );
    assert_eq!(
        defining_file(&path("auth::users::User"), &parsed, 0),
        root().join("src/auth/users.rs")
    );
}
