//! Reading a config file so that every problem of it is found in one run: the TOML is parsed
//! into a table, then read into [`Config`] again and again, each time a key is refused (an
//! unknown key, a value of the wrong type, a missing key) the problem is kept with the key's
//! path and the key taken out, until the rest reads. What is left is a config with the keys
//! at fault at their defaults, on which the rules across keys can still run.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::Config;
use super::problems::{Origins, Source, Sources, USERS_FILE_MARK};
use crate::auth::users::UserRecord;
use crate::domain::Problem;

/// Most keys refused in one file before giving up on the rest of it.
const MAX_REFUSED: usize = 200;

/// A config read with every problem found on the way (see the module's doc).
pub struct Loaded {
    pub config: Config,
    /// What reading found: syntax errors, unknown keys, values of the wrong type, a users
    /// file that cannot be read.
    pub problems: Vec<Problem>,
    /// The texts the problems point into.
    pub sources: Sources,
}

impl Config {
    /// Reads a config file and the users file it names, keeping every problem found (see
    /// [`Loaded`]); fails only when the config file itself cannot be read.
    pub fn read(path: &Path) -> anyhow::Result<Loaded> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read config file {}: {e}; check the path and that this user may read it",
                path.display()
            )
        })?;
        Ok(Self::read_text(&text, Some(path)))
    }

    /// [`Config::read`] of text; `path` names the file in problems and resolves a relative
    /// `users_file`.
    pub fn read_text(text: &str, path: Option<&Path>) -> Loaded {
        let mut problems = Vec::new();
        let mut sources = Sources::new(Source::new(path, text));
        let read = tolerant::<Config>(text, &mut problems);
        let mut config = read.value.unwrap_or_default();
        sources.set_origins(read.origins);
        let inline = config.users.len();
        if let Some(file) = config.users_file.clone() {
            let base = path.and_then(Path::parent);
            let file = base.map_or_else(|| file.clone(), |b| b.join(&file));
            match read_users(&file) {
                Ok((text, users, mut found, origins)) => {
                    config.users.extend(users);
                    sources.add_users_file(Source::new(Some(&file), &text), inline, origins);
                    for p in &mut found {
                        p.key.insert(0, USERS_FILE_MARK.to_owned());
                    }
                    problems.extend(found);
                }
                Err(message) => problems.push(Problem::new(&["users_file"], message)),
            }
        }
        Loaded {
            config,
            problems,
            sources,
        }
    }
}

/// The users file's `[[users]]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserRecord>,
}

type ReadUsers = (String, Vec<UserRecord>, Vec<Problem>, Origins);

fn read_users(file: &PathBuf) -> Result<ReadUsers, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        let file = file.display();
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "cannot read {file}: {e}; let the user that runs poolgate read it (for the \
                 service: chgrp poolgate {file}; chmod 0640 {file})"
            )
        } else {
            format!("cannot read {file}: {e}; create it (poolgate user --file {file} add NAME) or fix the path")
        }
    })?;
    let mut problems = Vec::new();
    let read = tolerant::<UsersFile>(&text, &mut problems);
    let users = read.value.map(|u| u.users).unwrap_or_default();
    Ok((text, users, problems, read.origins))
}

struct Read<T> {
    value: Option<T>,
    origins: Origins,
}

/// Reads `text` into `T`, taking out each refused key (see the module's doc).
fn tolerant<T: DeserializeOwned>(text: &str, problems: &mut Vec<Problem>) -> Read<T> {
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            // A syntax error: nothing after it can be trusted.
            let message = e.message().trim_end().trim_end_matches('.');
            // toml names no key in "duplicate key": its span is the key.
            let key = e
                .span()
                .and_then(|s| text.get(s))
                .map(|k| k.trim().trim_matches('"'))
                .filter(|k| message.starts_with("duplicate key") && !k.is_empty());
            let message = match key {
                Some(key) => format!("`{key}` is set twice; keep one"),
                None => format!("{message}; fix the TOML syntax here"),
            };
            problems.push(Problem::at(
                vec![format!("\0offset:{}", e.span().map_or(0, |s| s.start))],
                message,
            ));
            return Read {
                value: None,
                origins: Origins::new(),
            };
        }
    };
    let mut origins: Origins = table
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), (0..v.as_array()?.len()).collect())))
        .collect();
    for _ in 0..MAX_REFUSED {
        let error =
            match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
                Ok(value) => {
                    return Read {
                        value: Some(value),
                        origins,
                    };
                }
                Err(e) => e,
            };
        let message = error.inner().message().trim_end().to_owned();
        let mut path: Vec<Part> = error
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Part::Index(*index)),
                Segment::Map { key } => Some(Part::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        // Inside a tagged enum (`[provisioners.NAME]`) the path stops at the table: the
        // unknown key is named in the message.
        if let Some(name) = quoted_after(&message, "unknown field `")
            && path.last() != Some(&Part::Key(name.clone()))
        {
            path.push(Part::Key(name));
        }
        let shown = shown_path(&path, &origins);
        // A key taken out for its value is not also "missing" (its table goes then).
        let follows = quoted_after(&message, "missing field `").is_some_and(|name| {
            let mut key = shown.clone();
            key.push(name);
            problems.iter().any(|p| p.key == key)
        });
        if !follows {
            problems.push(Problem::at(shown.clone(), explain(&message, &shown)));
        }
        if !remove(&mut table, &path, &mut origins) {
            break;
        }
    }
    Read {
        value: None,
        origins,
    }
}

#[derive(Debug, PartialEq)]
enum Part {
    Key(String),
    Index(usize),
}

/// The path as problems name it, a table of a top-level array by its index in the file.
fn shown_path(path: &[Part], origins: &Origins) -> Vec<String> {
    let mut shown = Vec::new();
    for (i, part) in path.iter().enumerate() {
        shown.push(match (part, &path[..i]) {
            (Part::Index(n), [Part::Key(top)]) => origins
                .get(top)
                .and_then(|o| o.get(*n))
                .unwrap_or(n)
                .to_string(),
            (Part::Index(n), _) => n.to_string(),
            (Part::Key(k), _) => k.clone(),
        });
    }
    shown
}

/// Takes the value at `path` out of `table`; false if there is none (nothing more to try).
fn remove(table: &mut toml::Table, path: &[Part], origins: &mut Origins) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut value: &mut toml::Value = match parents.first() {
        Some(Part::Key(k)) => match table.get_mut(k) {
            Some(v) => v,
            None => return false,
        },
        Some(Part::Index(_)) => return false,
        None => {
            let Part::Key(k) = last else { return false };
            return table.remove(k).is_some();
        }
    };
    for part in &parents[1..] {
        let next = match (part, value) {
            (Part::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Part::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => value = v,
            None => return false,
        }
    }
    match (last, value) {
        (Part::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        (Part::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            if let [Part::Key(top)] = parents
                && let Some(o) = origins.get_mut(top)
                && *i < o.len()
            {
                o.remove(*i);
            }
            true
        }
        _ => false,
    }
}

/// The name between `prefix` and the next backquote.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_owned())
}

/// Serde's message made into "what is wrong; what to do".
fn explain(message: &str, key: &[String]) -> String {
    let here = key.last().map_or("", String::as_str);
    if let Some(name) = quoted_after(message, "unknown field `") {
        let known = expected(message);
        return match closest(&name, &known) {
            Some(near) => format!("unknown key; did you mean `{near}`?"),
            None if key.len() == 1 => {
                "unknown key; remove it or correct its name (the configuration table lists every key)"
                    .to_owned()
            }
            None => format!("unknown key; the keys here are {}", list(&known)),
        };
    }
    if let Some(value) = quoted_after(message, "unknown variant `") {
        let known = expected(message);
        return match closest(&value, &known) {
            Some(near) => format!("unknown value {value:?}; did you mean {near:?}?"),
            None => format!("unknown value {value:?}; use one of {}", list(&known)),
        };
    }
    if let Some(name) = quoted_after(message, "missing field `") {
        return format!("`{name}` is missing; add `{name} = …` to this table");
    }
    let first = message.lines().next().unwrap_or(message);
    // serde's words for Rust types, in a person's.
    let said = first
        .replace("expected f64", "expected a number")
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected usize", "expected a whole number")
        .replace("expected i64", "expected a whole number");
    let what = if first.contains("expected f64") {
        format!("write a number (durations are seconds, e.g. {here} = 300)")
    } else if first.contains("expected u") || first.contains("expected i") {
        "write a whole number".to_owned()
    } else if first.contains("expected a boolean") {
        format!("write true or false (without quotes), e.g. {here} = true")
    } else if first.contains("expected a string") {
        "write it in double quotes".to_owned()
    } else if first.contains("expected a sequence") {
        format!("write a list, e.g. {here} = [\"…\"]")
    } else if first.contains("socket address") {
        format!("write an address and port, e.g. {here} = \"127.0.0.1:8080\"")
    } else if first.contains("UUID") {
        "write a UUID, e.g. one uuidgen makes".to_owned()
    } else {
        "correct the value".to_owned()
    };
    format!("{}; {what}", said.trim_end_matches('.'))
}

/// The names serde lists after "expected" (`one of `a`, `b``, `` `a` or `b` ``).
fn expected(message: &str) -> Vec<String> {
    let Some(at) = message.find("expected") else {
        return Vec::new();
    };
    message[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The known name a mistyped one most likely meant: within two edits (one for short names),
/// or the known name it starts or ends with.
pub fn closest(name: &str, known: &[String]) -> Option<String> {
    let limit = if name.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
        .or_else(|| {
            let lower = name.to_lowercase();
            known
                .iter()
                .find(|k| lower == k.to_lowercase() || lower.replace('-', "_") == **k)
                .cloned()
        })
}

fn list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<(String, String)> {
        Config::read_text(text, None)
            .problems
            .into_iter()
            .map(|p| (p.key_path(), p.message))
            .collect()
    }

    #[test]
    fn every_refused_key_is_kept_and_the_rest_still_reads() {
        let text = "lisen = \"127.0.0.1:1\"\ntoken_ttl = \"soon\"\ndemo = true\n\
                    [[pools]]\nname = \"a\"\n\
                    [[pools]]\nid = \"6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a01\"\nname = \"b\"\n\
                    pool_type = \"X\"\nos_type = \"Y\"\nconnection_types = []\nuzers = []\n\
                    [provisioners.lab]\nkind = \"command\"\ncomand = [\"x\"]\n";
        let loaded = Config::read_text(text, None);
        let mut found: Vec<String> = loaded.problems.iter().map(Problem::key_path).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "lisen",
                "pools.0",
                "pools.1.uzers",
                "provisioners.lab",
                "provisioners.lab.comand",
                "token_ttl",
            ],
            "{:?}",
            loaded.problems
        );
        assert!(loaded.config.demo, "the rest is read");
        assert_eq!(loaded.config.pools.len(), 1, "the second pool reads");
        let mut messages = keys(text);
        messages.sort();
        let said: Vec<&str> = messages.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(said[0], "unknown key; did you mean `listen`?");
        assert!(said[1].starts_with("`id` is missing"), "{}", said[1]);
        assert_eq!(said[2], "unknown key; did you mean `users`?");
        assert_eq!(said[4], "unknown key; did you mean `command`?");
        assert!(said[5].contains("token_ttl = 300"), "{}", said[5]);
    }

    #[test]
    fn a_key_taken_out_for_its_value_is_not_also_missing() {
        let text = "[[pools]]\nid = \"not-a-uuid\"\nname = \"a\"\npool_type = \"X\"\n\
                    os_type = \"Y\"\nconnection_types = []\n\
                    [provisioners.lab]\nkind = \"comand\"\n";
        let found = keys(text);
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["pools.0.id", "provisioners.lab.kind"], "{found:?}");
        assert!(found[0].1.contains("uuidgen"), "{}", found[0].1);
        assert_eq!(
            found[1].1,
            "unknown value \"comand\"; did you mean \"command\"?"
        );
    }

    #[test]
    fn near_misses_are_suggested_and_far_ones_are_not() {
        let known: Vec<String> = ["listen", "data_dir", "demo"].map(String::from).to_vec();
        assert_eq!(closest("lsiten", &known).as_deref(), Some("listen"));
        assert_eq!(closest("data-dir", &known).as_deref(), Some("data_dir"));
        assert_eq!(closest("dmo", &known).as_deref(), Some("demo"));
        assert_eq!(closest("colour", &known), None);
    }
}
