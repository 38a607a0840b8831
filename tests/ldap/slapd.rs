//! A real OpenLDAP server for the cases: `slapd` (Debian: `slapd`) started on a free loopback
//! port from a generated config, loaded with `ldapadd` (Debian: `ldap-utils`), stopped with the
//! test. The data: people, groups (with the `memberof` overlay), a service account, an AD-style
//! disabled account (`userAccountControl` 514), a ppolicy-locked account, and a user whose name
//! holds filter metacharacters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BASE: &str = "dc=example,dc=org";
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

/// A running slapd; stopped on drop.
pub struct Slapd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Slapd {
    /// Starts slapd on a free port and loads the people and groups.
    pub fn start() -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("slapd.conf"), config(dir.path())).unwrap();
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

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
# Active Directory's account flags (its own OID), for an AD-style disabled account.
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload ppolicy
# Unauthenticated binds (a DN with an empty password) succeed here, as on many servers: the
# cases prove poolgate never takes one for a sign-in.
allow bind_anon_dn
pidfile {d}/slapd.pid
database mdb
suffix "{BASE}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {d}/db
maxsize 10485760
overlay memberof
overlay ppolicy
ppolicy_default "cn=default,ou=policies,{BASE}"
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="{SERVICE_DN}" read by self read by * none
"#
    )
}

const DATA: &str = r#"dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: ou=services,dc=example,dc=org
objectClass: organizationalUnit
ou: services

dn: ou=policies,dc=example,dc=org
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,dc=example,dc=org
objectClass: organizationalRole
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: 0

dn: cn=poolgate,ou=services,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: poolgate
userPassword: service-secret

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice Liddell
sn: Liddell
displayName: Alice L.
mail: alice@example.org
userPassword: alice-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob Builder
sn: Builder
mail: bob@example.org
userPassword: bob-pw

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol Outsider
sn: Outsider
userPassword: carol-pw

dn: uid=disabled,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: extensibleObject
uid: disabled
cn: Disabled User
sn: User
userAccountControl: 514
userPassword: disabled-pw

dn: uid=locked,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: locked
cn: Locked Out
sn: Out
userPassword: locked-pw
pwdAccountLockedTime: 000001010000Z

dn: uid=star*(user)\5C,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: star*(user)\
cn: Odd Name
sn: Name
userPassword: odd-pw

dn: cn=vdi-users,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: vdi-users
member: uid=alice,ou=people,dc=example,dc=org
member: uid=bob,ou=people,dc=example,dc=org
member: uid=disabled,ou=people,dc=example,dc=org
member: uid=star*(user)\5C,ou=people,dc=example,dc=org

dn: cn=vdi-admins,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: vdi-admins
member: uid=bob,ou=people,dc=example,dc=org
"#;
