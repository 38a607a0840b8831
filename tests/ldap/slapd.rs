//! A real OpenLDAP server for the cases: `slapd` (Debian: `slapd`) started on a free loopback
//! port from a generated config, loaded with `ldapadd` (Debian: `ldap-utils`), stopped with the
//! test. The data: people, groups (with the `memberof` overlay), a service account, an AD-style
//! disabled account (`userAccountControl` 514), a ppolicy-locked account, and a user whose name
//! holds filter metacharacters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";
pub const SERVICE_DN: &str = "cn=poolgate,ou=services,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service-secret";
pub const USERS_GROUP: &str = "cn=vdi-users,ou=groups,dc=example,dc=org";
pub const ADMINS_GROUP: &str = "cn=vdi-admins,ou=groups,dc=example,dc=org";
/// A username made of filter metacharacters (RFC 4515: `*`, `(`, `)`, `\`).
pub const ODD_NAME: &str = r"star*(user)\";

const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
const ROOT_PASSWORD: &str = "root-secret";

/// A directory config for `slapd` (groups by `memberOf`, `vdi-admins` the admin group, a 2 s
/// timeout), its service password in a file of `dir`.
pub fn directory_config(
    slapd: &Slapd,
    dir: &std::path::Path,
) -> poolgate::auth::directory::DirectoryConfig {
    let password_file = dir.join("ldap-password");
    std::fs::write(&password_file, format!("{SERVICE_PASSWORD}\n")).unwrap();
    poolgate::auth::directory::DirectoryConfig {
        url: slapd.url(),
        start_tls: false,
        ca_file: None,
        bind_dn: SERVICE_DN.into(),
        bind_password_file: Some(password_file),
        user_base: PEOPLE.into(),
        user_filter: "(&(objectClass=person)(uid={username}))".into(),
        group_attribute: "memberOf".into(),
        group_base: None,
        group_filter: "(member={dn})".into(),
        admin_groups: vec![ADMINS_GROUP.into()],
        timeout: std::time::Duration::from_secs(2),
    }
}

/// A running slapd; stopped on drop.
pub struct Slapd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Slapd {
    /// Starts slapd on a free port and loads the people and groups.
    pub fn start() -> Slapd {
        Self::start_with(|conf| conf)
    }

    /// The same, with the config (tests/ldap/slapd.conf filled in) changed by `edit` first.
    pub fn start_with(edit: impl Fn(String) -> String) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("slapd.conf"), edit(config(dir.path()))).unwrap();
        std::fs::write(dir.path().join("data.ldif"), DATA).unwrap();
        let mut slapd = Slapd {
            port: crate::helpers::free_port(),
            dir,
            child: None,
        };
        slapd.resume();
        let out = Command::new("ldapadd")
            .args([
                "-x",
                "-H",
                &slapd.url(),
                "-D",
                ROOT_DN,
                "-w",
                ROOT_PASSWORD,
                "-f",
            ])
            .arg(slapd.dir.path().join("data.ldif"))
            .output()
            .expect("cannot run ldapadd (Debian: apt-get install ldap-utils)");
        assert!(
            out.status.success(),
            "ldapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        slapd
    }

    /// Writes the config again, changed by `edit` (while stopped: `resume` reads it).
    pub fn rewrite_config(&self, edit: impl Fn(String) -> String) {
        std::fs::write(
            self.dir.path().join("slapd.conf"),
            edit(config(self.dir.path())),
        )
        .unwrap();
    }

    /// Applies an LDIF change (`ldapmodify`) as the directory's administrator.
    pub fn modify(&self, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ldapmodify (Debian: apt-get install ldap-utils)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Stops slapd (its data stays); `resume` starts it again on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn resume(&mut self) {
        let conf: PathBuf = self.dir.path().join("slapd.conf");
        // `-d 0`: in the foreground, so that killing the child stops it.
        let child = Command::new(slapd_program())
            .arg("-d")
            .arg("0")
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(self.url() + "/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start slapd (Debian: apt-get install slapd)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("slapd did not start on port {}", self.port);
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `slapd` from the `PATH`, or where Debian installs it (`/usr/sbin`, not on every `PATH`).
pub fn slapd_program() -> PathBuf {
    crate::on_path("slapd").unwrap_or_else(|| PathBuf::from("/usr/sbin/slapd"))
}

/// tests/ldap/slapd.conf with `@DIR@` set (bench/directory.sh uses the same two files).
fn config(dir: &Path) -> String {
    include_str!("slapd.conf").replace("@DIR@", &dir.display().to_string())
}

/// People, groups and the service account (tests/ldap/data.ldif).
const DATA: &str = include_str!("data.ldif");
