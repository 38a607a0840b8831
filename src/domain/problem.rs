//! One thing wrong with a configuration, named by the path of its key: what every check of a
//! config returns (value rules, cross-references, files, what `--connect` reaches), so that
//! `check-config` and `serve` can list them all at once, each at its key's line and column.

/// One thing wrong with a config: which key, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key's path in the file, e.g. `["provisioners", "proxmox", "command"]`; a number
    /// picks a table of an array of tables (`["pools", "0", "id"]`). An environment
    /// variable's name when the value comes from there; empty when no key is to blame.
    pub key: Vec<String>,
    /// What is wrong, then (after `; `) what to do.
    pub message: String,
}

impl Problem {
    pub fn new(key: &[&str], message: impl Into<String>) -> Self {
        Problem {
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            message: message.into(),
        }
    }

    /// A problem at a path of owned parts (a pool's index, a provisioner's name).
    pub fn at(key: Vec<String>, message: impl Into<String>) -> Self {
        Problem {
            key,
            message: message.into(),
        }
    }

    /// The key as written in a file (`provisioners.proxmox.command`).
    pub fn key_path(&self) -> String {
        self.key.join(".")
    }
}
