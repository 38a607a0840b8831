//! A command provisioner's program cannot read the broker's secrets from its parent: not from
//! its own environment, not from `/proc/$PPID/environ`, and (the same unprivileged user) not
//! from `/proc/$PPID/mem`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use serde_json::json;

use crate::helpers::*;
use crate::provisioners::script_config_file;

/// Secrets given to the server in its environment, each with a value found nowhere else.
const SECRETS: [(&str, &str); 4] = [
    (
        "POOLGATE_JWT_SECRET",
        "jwt-secret-in-the-environ-0123456789abcdef",
    ),
    ("POOLGATE_LDAP_PASSWORD", "ldap-password-in-the-environ"),
    (
        "POOLGATE_OIDC_CLIENT_SECRET",
        "oidc-client-secret-in-the-environ",
    ),
    ("POOLGATE_REDIS_PASSWORD", "redis-password-in-the-environ"),
];

/// Writes to `$dir/seen` what the program can read of its parent: its own environment, the
/// parent's `environ` and `cmdline`, and whether the parent's `environ` and `mem` open.
fn prying_script(dir: &std::path::Path) -> String {
    format!(
        r#"out={dir:?}/seen
{{
  echo "== env"; env
  echo "== environ"; tr '\0' '\n' < /proc/$PPID/environ
  echo "== cmdline"; tr '\0' ' ' < /proc/$PPID/cmdline; echo
  if (exec 3< /proc/$PPID/environ) 2>/dev/null; then echo "environ: open"; else echo "environ: denied"; fi
  if (exec 3< /proc/$PPID/mem) 2>/dev/null; then echo "mem: open"; else echo "mem: denied"; fi
}} > "$out" 2>&1
echo '{{"result":{{"host":"10.1.1.1","port":3389}}}}'
"#,
        dir = dir.to_str().unwrap()
    )
}

/// Serves `config` with [`SECRETS`] in the environment (as `uid`, when given), runs one step 1
/// and returns what the program wrote.
async fn pry(dir: &std::path::Path, config: &std::path::Path, uid: Option<u32>) -> String {
    let mut command = server_command(&["serve", "--config", config.to_str().unwrap()]);
    command.envs(SECRETS);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let server = ServerProcess::start_command(command).await;
    let mut c = server.connect().await;
    c.auth("astravdi", PASSWORD).await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "COMPLETED");
    std::fs::read_to_string(dir.join("seen")).unwrap()
}

#[tokio::test]
async fn a_provisioner_reads_none_of_the_servers_secrets_from_its_parents_environ() {
    let dir = tempfile::tempdir().unwrap();
    let config = script_config_file(dir.path(), &prying_script(dir.path()), "");
    let seen = pry(dir.path(), &config, None).await;
    for (name, value) in SECRETS {
        assert!(
            !seen.contains(value),
            "{name}'s value is readable by the program:\n{seen}"
        );
        assert!(!seen.contains(name), "{name} is still named:\n{seen}");
    }
    // What is left of the parent's environ is still there (the measure is not a blanket
    // denial that a root child would pass anyway): the test's own RUST_LOG.
    if seen.contains("environ: open") {
        assert!(seen.contains("RUST_LOG=poolgate=info"), "{seen}");
    }
}

#[tokio::test]
async fn a_provisioner_of_the_same_unprivileged_user_cannot_open_its_parents_environ_or_memory() {
    let dir = tempfile::tempdir().unwrap();
    // As root, the server runs as nobody (so does its program): root's children could open
    // everything whatever the server does.
    // SAFETY: geteuid only reads.
    let uid = (unsafe { libc::geteuid() } == 0).then_some(65534);
    if uid.is_some() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let config = script_config_file(dir.path(), &prying_script(dir.path()), "");
    for file in [&config, &dir.path().join("prov.sh")] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let seen = pry(dir.path(), &config, uid).await;
    assert!(seen.contains("environ: denied"), "{seen}");
    assert!(seen.contains("mem: denied"), "{seen}");
    for (name, value) in SECRETS {
        assert!(!seen.contains(value), "{name} is readable:\n{seen}");
    }
}

/// `script_config_file` with `run_as = "nobody"` on its provisioner.
fn run_as_nobody(config: &std::path::Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replacen(
        "kind = \"command\"\n",
        "kind = \"command\"\nrun_as = \"nobody\"\n",
        1,
    );
    std::fs::write(config, text).unwrap();
}

#[tokio::test]
async fn a_provisioner_run_as_another_user_runs_as_that_user_and_cannot_open_its_parents_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = prying_script(dir.path()).replace(
        "} > \"$out\" 2>&1",
        "  echo \"uid: $(id -u)\"\n} > \"$out\" 2>&1",
    );
    let config = script_config_file(dir.path(), &script, "");
    run_as_nobody(&config);
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } == 0 {
        let seen = pry(dir.path(), &config, None).await;
        assert!(seen.contains("uid: 65534"), "{seen}");
        assert!(seen.contains("environ: denied"), "{seen}");
        assert!(seen.contains("mem: denied"), "{seen}");
    }
    // Not root (as nobody, when the test runs as root): check-config and serve refuse it.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [
        vec!["check-config", config.to_str().unwrap()],
        vec!["serve", "--config", config.to_str().unwrap()],
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"));
        command.args(&args);
        // SAFETY: geteuid only reads.
        if unsafe { libc::geteuid() } == 0 {
            command.uid(65534).gid(65534);
        }
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("provisioners.cmd.run_as")
                && err.contains("needs poolgate to run as root"),
            "{args:?}: {err}"
        );
    }
}
