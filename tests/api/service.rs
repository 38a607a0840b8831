//! examples/poolgate.service against docs/operating.md's install steps: a host set up by those steps
//! has every user, group, file and directory the unit needs, and the service can write where
//! it must (and only there). `systemd-analyze verify` checks the unit's syntax when present
//! (`.ci/run` installs Debian's systemd package for it).

use std::collections::{HashMap, HashSet};
use std::process::Command;

const UNIT: &str = include_str!("../../examples/poolgate.service");
const OPERATING: &str = include_str!("../../docs/operating.md");
const PRODUCTION: &str = include_str!("../../examples/production.toml");

/// What docs/operating.md's "Installing as a service" steps create.
#[derive(Default, Debug)]
struct Host {
    users: HashSet<String>,
    groups: HashSet<String>,
    /// Path → (mode, owner, group) for files and directories the steps install.
    paths: HashMap<String, (u32, String, String)>,
}

/// The shell commands of docs/operating.md's section, continuation lines joined.
fn install_steps() -> Vec<Vec<String>> {
    let start = OPERATING
        .find("\n## Installing as a service\n")
        .expect("docs/operating.md has an \"Installing as a service\" section");
    let section = &OPERATING[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in section[..end].lines() {
        // Literal blocks are indented by four spaces.
        let Some(code) = line.strip_prefix("    ") else {
            continue;
        };
        let code = code.trim();
        if let Some(head) = code.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(code);
        commands.push(current.split_whitespace().map(str::to_owned).collect());
        current.clear();
    }
    commands
}

fn host() -> Host {
    let mut host = Host::default();
    for cmd in install_steps() {
        let flag = |name: &str| {
            cmd.iter()
                .position(|a| a == name)
                .map(|i| cmd[i + 1].clone())
        };
        match cmd[0].as_str() {
            "useradd" => {
                let name = cmd.last().unwrap().clone();
                if cmd.iter().any(|a| a == "--user-group") {
                    host.groups.insert(name.clone());
                }
                host.users.insert(name);
            }
            "install" => {
                let mode = u32::from_str_radix(&flag("-m").unwrap_or("0755".into()), 8).unwrap();
                let owner = flag("-o").unwrap_or_else(|| "root".into());
                let group = flag("-g").unwrap_or_else(|| "root".into());
                host.paths
                    .insert(cmd.last().unwrap().clone(), (mode, owner, group));
            }
            _ => {}
        }
    }
    host
}

/// `[Service]` (and other sections') settings: key → values in order.
fn unit() -> HashMap<String, Vec<String>> {
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        keys.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    keys
}

fn one<'a>(unit: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    let v = unit
        .get(key)
        .unwrap_or_else(|| panic!("the unit sets {key}"));
    assert_eq!(v.len(), 1, "{key} once");
    &v[0]
}

/// Whether `who` (user, group) may read `path` as the install steps left it.
fn readable_by(host: &Host, path: &str, user: &str, group: &str) -> bool {
    let Some((mode, owner, g)) = host.paths.get(path) else {
        return false;
    };
    (owner == user && mode & 0o400 != 0) || (g == group && mode & 0o040 != 0) || mode & 0o004 != 0
}

#[test]
fn the_systemd_unit_starts_on_a_host_set_up_by_the_readme_install_steps() {
    let host = host();
    let unit = unit();
    let (user, group) = (one(&unit, "User"), one(&unit, "Group"));
    assert!(
        host.users.contains(user),
        "docs/operating.md creates user {user}: {host:?}"
    );
    assert!(
        host.groups.contains(group),
        "docs/operating.md creates group {group}: {host:?}"
    );

    // The program and the config it is started with are installed, and readable by the service.
    let exec: Vec<&str> = one(&unit, "ExecStart").split_whitespace().collect();
    let (mode, _, _) = host.paths[exec[0]];
    assert!(mode & 0o001 != 0, "{} is executable by anyone", exec[0]);
    assert_eq!(exec[1], "serve");
    let config = exec[exec.iter().position(|a| *a == "--config").unwrap() + 1];
    assert!(
        readable_by(&host, config, user, group),
        "{config} readable by {user}"
    );
    // So is the directory holding it and the users file (users_file = "users.toml").
    let etc = config.rsplit_once('/').unwrap().0;
    let (mode, _, g) = &host.paths[etc];
    assert!(
        g == group && mode & 0o050 == 0o050,
        "{etc} traversable by {group}"
    );
    assert!(readable_by(
        &host,
        &format!("{etc}/users.toml"),
        user,
        group
    ));

    // Files the unit needs exist unless marked optional with "-".
    for key in [
        "EnvironmentFile",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "BindPaths",
        "BindReadOnlyPaths",
    ] {
        for value in unit.get(key).into_iter().flatten() {
            for path in value.split_whitespace() {
                if path.starts_with('-') {
                    continue;
                }
                assert!(
                    host.paths.contains_key(path),
                    "{key}={path} must exist on a fresh host (or be marked optional with -)"
                );
            }
        }
    }
    // The service needs to write nothing under /etc (users_file is edited by an admin).
    for value in unit.get("ReadWritePaths").into_iter().flatten() {
        assert!(!value.contains("/etc/"), "ReadWritePaths={value}");
    }

    // With ProtectSystem=strict it writes only its StateDirectory: the config's data_dir and
    // its working directory are that directory.
    assert_eq!(one(&unit, "ProtectSystem"), "strict");
    let state = format!("/var/lib/{}", one(&unit, "StateDirectory"));
    assert_eq!(one(&unit, "WorkingDirectory"), state);
    assert!(
        PRODUCTION.contains(&format!("data_dir = \"{state}\"")),
        "examples/production.toml keeps its state in {state}"
    );
    let (_, owner, _) = &host.paths[&state];
    assert_eq!(
        owner, user,
        "{state} belongs to {user} before the first start"
    );
    assert_eq!(
        one(&unit, "WantedBy"),
        "multi-user.target",
        "enable --now starts it at boot"
    );
}

#[test]
#[ignore = "needs systemd-analyze; .ci/run runs it"]
fn systemd_analyze_verify_accepts_the_unit() {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze is required (Debian: apt-get install systemd)"
    );
    // The unit as installed, but starting the binary just built (verify checks it exists).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poolgate.service");
    std::fs::write(
        &path,
        UNIT.replace("/usr/local/bin/poolgate", env!("CARGO_BIN_EXE_poolgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Debian package's unit (debian/poolgate.service) is examples/poolgate.service but for
/// the binary's path (/usr/bin, where the package puts it), and the package's maintainer
/// script makes the user, group and directories the unit needs, with the modes docs/operating.md's
/// steps give them.
#[test]
fn the_packages_unit_and_postinst_match_the_documented_install() {
    let packaged = include_str!("../../debian/poolgate.service");
    let body = |unit: &str| -> Vec<String> {
        unit.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace("/usr/local/bin/poolgate", "/usr/bin/poolgate"))
            .collect()
    };
    assert_eq!(
        body(packaged),
        body(UNIT),
        "the two units differ beyond the path"
    );
    assert!(packaged.contains("ExecStart=/usr/bin/poolgate serve"));
    let postinst = include_str!("../../debian/postinst");
    for needed in [
        "adduser --system --group --home /var/lib/poolgate",
        "chmod 0750 /etc/poolgate",
        "chmod 0640 /etc/poolgate/poolgate.toml",
        "install -d -m 0700 -o poolgate -g poolgate /var/lib/poolgate",
    ] {
        assert!(postinst.contains(needed), "postinst lacks {needed:?}");
    }
    let cargo = include_str!("../../Cargo.toml");
    for asset in [
        "[\"debian/poolgate.service\", \"lib/systemd/system/poolgate.service\"",
        "[\"examples/production.toml\", \"etc/poolgate/poolgate.toml\"",
        "conf-files = [\"/etc/poolgate/poolgate.toml\"]",
    ] {
        assert!(cargo.contains(asset), "Cargo.toml's package lacks {asset}");
    }
}
