//! Where a problem is: the files a config was read from, a problem's key found in them (by
//! the spans `toml_edit` keeps), and the list `check-config` prints and `serve` refuses with,
//! one line each, in the order of the files: `FILE:LINE:COL: key: what is wrong; what to do`.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use crate::domain::Problem;

/// For each top-level array of tables, the index in the file of each table still read (tables
/// refused whole are taken out, which moves the later ones down).
pub type Origins = HashMap<String, Vec<usize>>;

/// The first part of a problem's key that points into the users file, not the config.
pub(super) const USERS_FILE_MARK: &str = "\0users_file";

/// One file read: its name (none for the embedded demo) and text.
pub struct Source {
    path: Option<PathBuf>,
    text: String,
}

impl Source {
    pub fn new(path: Option<&Path>, text: &str) -> Self {
        Source {
            path: path.map(Path::to_owned),
            text: text.to_owned(),
        }
    }
}

/// The config file and the users file it names, and which table of each a table of the
/// config read (`config.pools[1]`) came from.
pub struct Sources {
    config: Source,
    origins: Origins,
    /// The users file, how many users the config file defines inline (the file's come after
    /// them in `config.users`), and the file's own origins.
    users_file: Option<(Source, usize, Origins)>,
}

impl Sources {
    pub fn new(config: Source) -> Self {
        Sources {
            config,
            origins: Origins::new(),
            users_file: None,
        }
    }

    /// The embedded demo: no file to point into.
    pub fn none() -> Self {
        Sources::new(Source::new(None, ""))
    }

    pub(super) fn set_origins(&mut self, origins: Origins) {
        self.origins = origins;
    }

    pub(super) fn add_users_file(&mut self, file: Source, inline: usize, origins: Origins) {
        self.users_file = Some((file, inline, origins));
    }

    /// The config file's name, if it was read from one.
    pub fn path(&self) -> Option<&Path> {
        self.config.path.as_deref()
    }

    /// A problem found on the config as read (`config.pools[1]`, `config.users[7]`) named by
    /// the table it came from (the second `[[pools]]` of the file, the third of the users
    /// file): what problems of the checks after reading go through before [`render`].
    pub fn in_files(&self, mut problem: Problem) -> Problem {
        let (Some(top), Some(index)) = (
            problem.key.first().cloned(),
            problem.key.get(1).and_then(|i| i.parse::<usize>().ok()),
        ) else {
            return problem;
        };
        let origin = |origins: &Origins, i: usize| {
            origins
                .get(&top)
                .and_then(|o| o.get(i))
                .copied()
                .unwrap_or(i)
        };
        match &self.users_file {
            Some((_, inline, file_origins)) if top == "users" && index >= *inline => {
                problem.key[1] = origin(file_origins, index - inline).to_string();
                problem.key.insert(0, USERS_FILE_MARK.to_owned());
            }
            _ => problem.key[1] = origin(&self.origins, index).to_string(),
        }
        problem
    }

    /// The file a problem is in, the key as shown, and the byte offset of the key (or of the
    /// deepest table of its path that is in the file).
    fn place(&self, problem: &Problem, flags: &[&str]) -> (Option<&Path>, String, Option<usize>) {
        let mut key: &[String] = &problem.key;
        let mut source = &self.config;
        if key.first().map(String::as_str) == Some(USERS_FILE_MARK) {
            key = &key[1..];
            if let Some((file, _, _)) = &self.users_file {
                source = file;
            }
        }
        let path = source.path.as_deref();
        if let Some(offset) = key
            .first()
            .and_then(|k| k.strip_prefix("\0offset:"))
            .and_then(|o| o.parse().ok())
        {
            return (path, String::new(), Some(offset));
        }
        let shown = key.join(".");
        let offset = if path.is_none() || flags.contains(&shown.as_str()) {
            None
        } else {
            key_offset(&source.text, key)
        };
        (path, shown, offset)
    }

    /// One line per problem, in the order of the files (problems without a place last):
    /// `FILE:LINE:COL: key: message`; `FILE: key: message` when the key is not in the file
    /// (a default, a flag in `flags`, the environment); `key: message` without a file.
    pub fn render(&self, problems: &[Problem], flags: &[&str]) -> String {
        let mut lines: Vec<(bool, Option<&Path>, usize, String)> = problems
            .iter()
            .map(|p| {
                let (path, key, offset) = self.place(p, flags);
                let key = if key.is_empty() {
                    String::new()
                } else {
                    format!("{key}: ")
                };
                let text = match (path, offset) {
                    (Some(file), Some(at)) => {
                        let (line, col) = line_col(self.text_of(file), at);
                        format!("{}:{line}:{col}: {key}{}", file.display(), p.message)
                    }
                    (Some(file), None) => format!("{}: {key}{}", file.display(), p.message),
                    (None, _) => format!("{key}{}", p.message),
                };
                (offset.is_none(), path, offset.unwrap_or(0), text)
            })
            .collect();
        // Stable: problems at one place keep the order they were found in.
        lines.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        lines.into_iter().map(|l| l.3 + "\n").collect()
    }

    fn text_of(&self, file: &Path) -> &str {
        match &self.users_file {
            Some((source, _, _)) if source.path.as_deref() == Some(file) => &source.text,
            _ => &self.config.text,
        }
    }
}

/// Line and column (1-based, in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// The byte offset of a key in TOML text; when only a prefix of the path is there (the key is
/// absent and a default applies), of the deepest part that is. A part that is a number picks
/// a table of an array of tables (`pools.0.guacamole`).
pub fn key_offset(text: &str, key: &[String]) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut found = None;
    let mut parts = key.iter();
    while let Some(part) = parts.next() {
        let Some((k, item)) = table.get_key_value(part) else {
            break;
        };
        found = k.span().map(|s| s.start);
        if let Some(array) = item.as_array_of_tables() {
            match parts.next().and_then(|i| array.get(i.parse().ok()?)) {
                Some(t) => {
                    found = t.span().map(|s| s.start).or(found);
                    table = t;
                    continue;
                }
                None => break,
            }
        }
        match item.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
    }
    found
}

/// The line (1-based) of a key in TOML text (see [`key_offset`]).
pub fn key_line(text: &str, key: &[String]) -> Option<usize> {
    key_offset(text, key).map(|at| line_col(text, at).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn key_lines_point_into_arrays_of_tables_by_index() {
        let text =
            "[[pools]]\nname = \"a\"\n\n[[pools]]\nname = \"b\"\nguacamole = { url = \"u\" }\n";
        assert_eq!(key_line(text, &path("pools.1.guacamole")), Some(6));
        assert_eq!(key_line(text, &path("pools.1.guacamole.url")), Some(6));
        assert_eq!(key_line(text, &path("pools.0.guacamole")), Some(1));
        assert_eq!(key_line(text, &path("pools.7.guacamole")), Some(1));
    }

    #[test]
    fn key_lines_point_at_the_key_in_tables_and_inline_tables() {
        let text = "listen = \"x\"\n\n[provisioners.p]\nkind = \"command\"\ncommand = [\"a\"]\nenv_files = { T = \"/t\" }\n";
        assert_eq!(key_line(text, &path("listen")), Some(1));
        assert_eq!(key_line(text, &path("provisioners.p")), Some(3));
        assert_eq!(key_line(text, &path("provisioners.p.command")), Some(5));
        assert_eq!(key_line(text, &path("provisioners.p.env_files.T")), Some(6));
        assert_eq!(
            key_line(text, &path("provisioners.p.workdir")),
            Some(3),
            "the table"
        );
        assert_eq!(key_line(text, &path("tls_cert")), None);
    }

    #[test]
    fn problems_are_listed_in_file_order_with_line_and_column() {
        let text = "demo = true\n[[pools]]\n  id = 1\n";
        let sources = Sources::new(Source::new(Some(Path::new("p.toml")), text));
        let shown = sources.render(
            &[
                Problem::new(
                    &["pools", "0", "id"],
                    "used twice; give each pool its own id",
                ),
                Problem::new(&["tls_cert"], "needs tls_key"),
                Problem::new(&["demo"], "first"),
            ],
            &[],
        );
        assert_eq!(
            shown,
            "p.toml:1:1: demo: first\n\
             p.toml:3:3: pools.0.id: used twice; give each pool its own id\n\
             p.toml: tls_cert: needs tls_key\n"
        );
    }
}
