//! Editing the users file for `poolgate user …`: `[[users]]` tables in TOML, edited with
//! toml_edit so comments and layout survive, and written atomically (temporary file in the
//! same directory, fsync, rename) so a crash never leaves half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};
use uuid::Uuid;

pub struct UsersFile {
    path: PathBuf,
    doc: DocumentMut,
}

/// One row of `user list`.
pub struct Listed {
    pub username: String,
    pub id: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub mfa: &'static str,
}

impl UsersFile {
    /// Opens a users file (or a config file with inline users); a missing file starts empty.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let doc: DocumentMut = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(UsersFile {
            path: path.to_owned(),
            doc,
        })
    }

    fn users(&mut self) -> anyhow::Result<&mut ArrayOfTables> {
        if !self.doc.contains_key("users") {
            self.doc["users"] = Item::ArrayOfTables(ArrayOfTables::new());
        }
        self.doc["users"]
            .as_array_of_tables_mut()
            .context("`users` must be an array of tables ([[users]])")
    }

    fn find(&mut self, username: &str) -> anyhow::Result<&mut Table> {
        self.users()?
            .iter_mut()
            .find(|t| t.get("username").and_then(|u| u.as_str()) == Some(username))
            .with_context(|| format!("no user {username:?}"))
    }

    /// Whether the file has a user of this name.
    pub fn contains(&mut self, username: &str) -> anyhow::Result<bool> {
        Ok(self
            .users()?
            .iter()
            .any(|t| t.get("username").and_then(|u| u.as_str()) == Some(username)))
    }

    pub fn add(
        &mut self,
        username: &str,
        password_hash: &str,
        roles: &[String],
        full_name: Option<&str>,
        email: Option<&str>,
    ) -> anyhow::Result<Uuid> {
        if username.is_empty()
            || username
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            bail!("a username must be non-empty, without spaces or control characters");
        }
        if self.find(username).is_ok() {
            bail!("user {username:?} already exists");
        }
        let id = Uuid::new_v4();
        let mut t = Table::new();
        t["username"] = value(username);
        t["id"] = value(id.to_string());
        if let Some(n) = full_name {
            t["full_name"] = value(n);
        }
        if let Some(e) = email {
            t["email"] = value(e);
        }
        let mut r = Array::new();
        for role in roles {
            r.push(role.as_str());
        }
        t["roles"] = value(r);
        t["password_hash"] = value(password_hash);
        // A file holding only comments keeps them in the document's trailing text; they
        // would end up after the table: move them in front of it.
        let trailing = self.doc.trailing().as_str().unwrap_or("").to_owned();
        if self.users()?.is_empty() && !trailing.trim().is_empty() {
            t.decor_mut().set_prefix(trailing);
            self.doc.set_trailing("");
        }
        self.users()?.push(t);
        Ok(id)
    }

    pub fn set_password(&mut self, username: &str, password_hash: &str) -> anyhow::Result<()> {
        self.find(username)?["password_hash"] = value(password_hash);
        Ok(())
    }

    pub fn set_disabled(&mut self, username: &str, disabled: bool) -> anyhow::Result<()> {
        self.find(username)?["disabled"] = value(disabled);
        Ok(())
    }

    /// Turns on TOTP for a user with a new base32 secret.
    pub fn set_totp(&mut self, username: &str, secret_base32: &str) -> anyhow::Result<()> {
        let t = self.find(username)?;
        t["otp_enabled"] = value(true);
        t["otp_method"] = value("totp");
        t["otp_secret"] = value(secret_base32);
        Ok(())
    }

    pub fn list(&mut self) -> anyhow::Result<Vec<Listed>> {
        let flag = |t: &Table, k: &str| t.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(self
            .users()?
            .iter()
            .map(|t| Listed {
                username: t
                    .get("username")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned(),
                id: t
                    .get("id")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned(),
                roles: t
                    .get("roles")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_else(|| vec!["user".into()]),
                disabled: flag(t, "disabled"),
                mfa: if flag(t, "otp_enabled") {
                    "otp"
                } else if flag(t, "adfs_enabled") {
                    "adfs"
                } else if flag(t, "hardware_token_enabled") {
                    "hardware-token"
                } else {
                    "-"
                },
            })
            .collect())
    }

    /// Writes the file atomically, keeping its permissions. A new file is 0600 (it holds
    /// hashes), except in a directory closed to others whose group is not the writer's own —
    /// `/etc/poolgate`, root:poolgate 0750 — where it is 0640 in the directory's group, so
    /// that the service can read what an administrator made.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .context("the users file needs a file name")?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mode = std::fs::metadata(&self.path).map_or_else(
                |_| {
                    if shared_dir_group(dir).is_some() {
                        0o640
                    } else {
                        0o600
                    }
                },
                |m| m.permissions().mode(),
            );
            opts.mode(mode & 0o777);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        #[cfg(unix)]
        if std::fs::metadata(&self.path).is_err()
            && let Some(gid) = shared_dir_group(dir)
        {
            std::os::unix::fs::fchown(&f, None, Some(gid))
                .with_context(|| format!("cannot give {} to group {gid}", tmp.display()))?;
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(&self.path) {
            // Keep the owner and group too: root editing /etc/poolgate/users.toml (root:poolgate,
            // 0640) must leave a file the service can still read. Only root may give a file
            // away; anyone else keeps their own, which is what they had.
            use std::os::unix::fs::MetadataExt;
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        }
        f.write_all(self.doc.to_string().as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        Ok(())
    }
}

/// The group of `dir` when a new users file there should be readable by it: the directory is
/// closed to others and its group is not this process's own.
#[cfg(unix)]
fn shared_dir_group(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).ok()?;
    let closed = meta.permissions().mode() & 0o007 == 0;
    // SAFETY: getegid has no preconditions and cannot fail.
    let own = unsafe { libc::getegid() };
    (closed && meta.gid() != own).then_some(meta.gid())
}
