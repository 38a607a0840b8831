//! The `poolgate` binary itself: hash-password, check-config, and serve with flags.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_poolgate");

#[test]
fn hash_password_prints_a_verifiable_argon2id_string() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret!\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    use argon2::PasswordVerifier;
    let hash = argon2::PasswordHash::new(phc.trim()).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret!", &hash)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret", &hash)
            .is_err()
    );
}

#[test]
fn check_config_accepts_the_demo_and_rejects_a_broken_file() {
    let ok = Command::new(BIN)
        .args(["check-config", "examples/demo.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // It says which names browsers may use (DNS rebinding: any other Host is refused).
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("browsers may reach this server as: IP addresses, localhost"),
        "{stdout}"
    );
    assert!(stdout.contains("server_names"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    // Writes `text` as the config, runs check-config on it, expects a failure, returns stderr.
    let refused = |text: &str| {
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("token_ttl = \"soon\"\n");
    assert!(
        err.contains("bad.toml:1:1: token_ttl: invalid type: string \"soon\""),
        "TOML errors say where: {err}"
    );
    let err = refused(
        "[[pools]]\nid = \"6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a01\"\nname = \"p\"\npool_type = \"X\"\nos_type = \"Y\"\nconnection_types = []\nusers = [\"ghost\"]\n",
    );
    assert!(err.contains("ghost"), "{err}");
    assert!(err.contains("bad.toml:7:"), "points at the line: {err}");
    let err = refused("demo = false\nusers_file = \"missing-users.toml\"\n");
    assert!(
        err.contains("bad.toml:2:") && err.contains("users_file: cannot read"),
        "{err}"
    );
    let err = refused("demo = false\n\ntoken_ttl = 0\n");
    assert!(
        err.contains("bad.toml:3:1: token_ttl: must be greater than zero"),
        "{err}"
    );
    // A hash below OWASP's argon2id minimum is as bad as no hash: the user is named.
    let weak = "$argon2id$v=19$m=4096,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$9e1eQ5Ge9kN0yXBi1J2uLQBw9vqH2pEThTxg9W7yK2A";
    let err = refused(&format!(
        "[[users]]\nusername = \"weak\"\nid = \"6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a02\"\npassword_hash = \"{weak}\"\n"
    ));
    assert!(
        err.contains("\"weak\"") && err.contains("below OWASP's minimum"),
        "{err}"
    );
}

/// The line (1-based) of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

fn check_config(config: &std::path::Path, connect: bool) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config");
    if connect {
        cmd.arg("--connect");
    }
    let out = cmd
        .arg(config)
        .env_remove("POOLGATE_JWT_SECRET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_runs_every_check_serve_runs_and_names_each_key_with_its_line() {
    // examples/production.toml, with its paths moved into a scratch directory.
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let text = std::fs::read_to_string("examples/production.toml")
        .unwrap()
        .replace("0.0.0.0:8443", "127.0.0.1:0")
        .replace("/etc/poolgate/tls/fullchain.pem", &at("cert.pem"))
        .replace("/etc/poolgate/tls/privkey.pem", &at("key.pem"))
        .replace("/var/lib/poolgate", &at("data"))
        .replace("/usr/local/libexec/poolgate-proxmox", &at("prov.sh"))
        .replace(
            "# env_files = { PROXMOX_TOKEN = \"/etc/poolgate/proxmox.token\" }",
            &format!("env_files = {{ PROXMOX_TOKEN = {:?} }}", at("token")),
        )
        .replace("# guacamole = {", "guacamole = {")
        .replace("/etc/poolgate/guacamole.key", &at("guacamole.key"));
    assert!(
        text.contains(&at("token")) && text.contains(&at("guacamole.key")),
        "examples/production.toml changed: update this test"
    );
    let config = dir.path().join("poolgate.toml");
    std::fs::write(&config, &text).unwrap();
    let file = config.to_str().unwrap();
    let expect = |err: &str, prefix: &str, key: &str, what: &str| {
        let line = format!("{file}:{}:", line_of(&text, prefix));
        let key = format!(": {key}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&line) && l.contains(&key) && l.contains(what)),
            "expected {line}…{what} in:\n{err}"
        );
    };

    // Nothing exists yet: every problem at once, each with its key and line.
    let (ok, err) = check_config(&config, false);
    assert!(!ok);
    expect(&err, "tls_cert", "tls_cert", "cannot read");
    expect(&err, "tls_key", "tls_key", "cannot read");
    expect(
        &err,
        "command = [",
        "provisioners.proxmox.command",
        "does not exist",
    );
    expect(
        &err,
        "env_files",
        "provisioners.proxmox.env_files.PROXMOX_TOKEN",
        "cannot read",
    );
    expect(
        &err,
        "guacamole = {",
        "pools.0.guacamole",
        "cannot read guacamole.secret_key_file",
    );
    assert!(err.contains("5 problems"), "{err}");

    // serve refuses the same file for the same reasons, before it listens.
    let out = tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio::process::Command::new(BIN)
            .args(["serve", "--config", file])
            .env("NO_COLOR", "1")
            .env_remove("POOLGATE_JWT_SECRET")
            .output(),
    )
    .await
    .expect("serve gives up at once")
    .unwrap();
    assert!(!out.status.success());
    let served = String::from_utf8_lossy(&out.stderr);
    expect(&served, "tls_cert", "tls_cert", "cannot read");
    expect(
        &served,
        "command = [",
        "provisioners.proxmox.command",
        "does not exist",
    );
    assert!(!served.contains("listening"), "{served}");

    // A program that is not executable, an empty secret, a certificate that does not parse.
    std::fs::write(at("prov.sh"), "#!/bin/sh\necho '{\"result\":{}}'\n").unwrap();
    std::fs::write(at("token"), "\n").unwrap();
    std::fs::write(at("guacamole.key"), "a passphrase, not a key").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(at("guacamole.key"), private).unwrap();
    }
    std::fs::write(at("cert.pem"), "not a certificate").unwrap();
    std::fs::write(at("key.pem"), "not a key").unwrap();
    let (ok, err) = check_config(&config, false);
    assert!(!ok);
    expect(
        &err,
        "command = [",
        "provisioners.proxmox.command",
        "not executable",
    );
    expect(
        &err,
        "env_files",
        "provisioners.proxmox.env_files.PROXMOX_TOKEN",
        "is empty",
    );
    expect(
        &err,
        "guacamole = {",
        "pools.0.guacamole",
        "must be 32 hexadecimal digits",
    );
    assert!(
        !err.contains("passphrase"),
        "the key is never quoted: {err}"
    );
    assert!(err.contains(": tls_"), "{err}");

    // All fixed: ok, and serve starts on the same file.
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(at("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(at("key.pem"), generated.signing_key.serialize_pem()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(at("prov.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(at("token"), "secret-token\n").unwrap();
    std::fs::write(at("guacamole.key"), "9a8d6a7ecdb0804b2afbb9c1d0814442\n").unwrap();
    let (ok, err) = check_config(&config, true);
    assert!(ok, "{err}");
    assert!(!dir.path().join("data").exists(), "checking writes nothing");
    let server = ServerProcess::start_with(&["serve", "--config", file], |c| {
        c.env_remove("POOLGATE_JWT_SECRET");
    })
    .await;
    assert!(!server.addr.is_empty());
    drop(server);

    // --connect reaches the store and the data directory; without it, neither is tried.
    let unreachable = format!("redis://127.0.0.1:{}", free_port());
    let blocked = dir.path().join("cert.pem/data"); // under a file: can never be created
    let text = text
        .replace("state = \"sqlite:\"", &format!("state = {unreachable:?}"))
        .replace(&at("data"), blocked.to_str().unwrap());
    std::fs::write(&config, &text).unwrap();
    let (ok, err) = check_config(&config, false);
    assert!(ok, "{err}");
    let (ok, err) = check_config(&config, true);
    assert!(!ok);
    expect(&err, "state =", "state", "cannot reach");
    expect(&err, "data_dir", "data_dir", "not a directory");
}

#[tokio::test]
async fn serve_honours_its_flags_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut server = ServerProcess::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token-ttl",
        "7",
        "--data-dir",
        data,
    ])
    .await;
    let mut c = server.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "astravdi", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        reply["args"][1], 7,
        "--token-ttl wins over the file: {reply}"
    );
    assert!(dir.path().exists());
    let pid = server.child.id().unwrap();
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    let status = tokio::time::timeout(REPLY_TIMEOUT, server.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success());
}

fn user_cmd(file: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("user")
        .arg("--file")
        .arg(file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // A command that fails before it reads its input (the case under test may be such a
        // refusal) closes the pipe first: that is its answer, not the test's failure.
        if let Err(e) = input.write_all(s.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn user_subcommands_edit_the_users_file_and_the_server_accepts_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let out = user_cmd(&users, &["list"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("there is no users file"),
        "{err}"
    );
    std::fs::write(&users, "# Staff accounts: keep this comment.\n").unwrap();
    let out = user_cmd(&users, &["list"], None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("holds no users"), "{said}");

    let out = user_cmd(
        &users,
        &[
            "add",
            "alice",
            "--role",
            "user",
            "--role",
            "admin",
            "--email",
            "a@example.com",
        ],
        Some("first-pass-ochre-42\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = user_cmd(&users, &["add", "alice"], Some("x\n"));
    assert!(!out.status.success(), "no duplicate users");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already a user"),
        "said before a password is asked: {err}"
    );
    // A password for a user the file does not have: said so, not "empty password".
    let out = user_cmd(&users, &["passwd", "nobody"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nobody\" is not a user of"), "{err}");
    // NIST SP 800-63B: at least 8 characters, nothing a guesser tries first.
    for weak in ["bob12", "password1", "bobbobbob"] {
        let out = user_cmd(&users, &["add", "bob"], Some(&format!("{weak}\n")));
        assert!(!out.status.success(), "{weak} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: the password"), "{weak}: {err}");
    }
    let out = user_cmd(&users, &["passwd", "alice"], Some("second-pass-umber-17\n"));
    assert!(out.status.success());
    let out = user_cmd(&users, &["add", "bob"], Some("bob-pass-teal-93\n"));
    assert!(out.status.success());
    let out = user_cmd(&users, &["disable", "bob"], None);
    assert!(out.status.success());
    let out = user_cmd(&users, &["totp", "alice"], None);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("otpauth://totp/"), "{printed}");
    assert!(
        printed.contains('█') || printed.contains('▀'),
        "a QR code is drawn"
    );

    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        text.starts_with("# Staff accounts: keep this comment."),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&users).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0o644 & 0o077, "permissions kept");
    }
    let list = String::from_utf8(user_cmd(&users, &["list"], None).stdout).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice") && l.contains("otp") && l.contains("admin")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("bob") && l.contains("disabled")),
        "{list}"
    );

    // The server loads the file: alice signs in with her new password and a TOTP code.
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("otp_secret = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let config_path = dir.path().join("poolgate.toml");
    std::fs::write(&config_path, "users_file = \"users.toml\"\n").unwrap();
    let mut config = poolgate::Config::load(&config_path).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    config.state = poolgate::store::StateUrl::Memory;
    let app = TestApp::spawn_config(config).await;
    let code = poolgate::auth::otp::TotpSecret::from_base32(&secret, "alice")
        .unwrap()
        .code_at(chrono::Utc::now().timestamp() as u64);
    let mut c = app.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "alice", "password": "second-pass-umber-17", "otp_code": code}),
        )
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    let reply = c
        .rpc(
            "auth",
            json!({"username": "bob", "password": "bob-pass-teal-93"}),
        )
        .await;
    assert_eq!(error_code(&reply), 403, "bob is disabled");
}

async fn connect_cmd(
    app: &TestApp,
    user: &str,
    pool: &str,
    dir: &std::path::Path,
    stdin: &str,
) -> std::process::Output {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "connect",
            "--server",
            &app.ws_url(),
            "--user",
            user,
            "--pool",
            pool,
            "--password-stdin",
        ])
        .arg("--out")
        .arg(dir)
        .arg("--token-file")
        .arg(dir.join("token"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("connect finishes")
        .unwrap()
}

#[tokio::test]
async fn connect_gets_a_desktop_and_writes_a_launcher_then_reuses_its_token() {
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = connect_cmd(
        &app,
        "astravdi",
        "pool-win-1",
        dir.path(),
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["protocol_id"], 1);
    let rdp = std::fs::read_to_string(dir.path().join("pool-win-1.rdp")).unwrap();
    assert!(rdp.contains("full address:s:192.0.2.10:5900"), "{rdp}");
    assert!(rdp.contains("username:s:astravdi"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the saved token is private");
    }

    // Second run: no password on stdin, the saved token signs in; a GLINT pool gets a .vv file.
    let out = connect_cmd(&app, "astravdi", "pool-astra-1", dir.path(), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("saved token"));
    let vv = std::fs::read_to_string(dir.path().join("pool-astra-1.vv")).unwrap();
    assert!(
        vv.starts_with("[virt-viewer]") && vv.contains("type=spice") && vv.contains("port=5900"),
        "{vv}"
    );
}

#[tokio::test]
async fn connect_handles_a_one_time_code_and_reports_refusals() {
    // user-4 (the one-time-code user) has pool-win-1 in the demo.
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = connect_cmd(
        &app,
        "user-4",
        "pool-win-1",
        dir.path(),
        &format!("{PASSWORD}\n{}\n", date_code()),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir2 = tempfile::tempdir().unwrap();
    let out = connect_cmd(
        &app,
        "user-2",
        "pool-win-1",
        dir2.path(),
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!out.status.success(), "user-2's step 1 fails in the demo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed") || err.contains("refused"), "{err}");
    // Asked again at once: refused, and told when the pool may be asked again.
    let out = connect_cmd(
        &app,
        "user-2",
        "pool-win-1",
        dir2.path(),
        &format!("{PASSWORD}\n"),
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the pool can be asked again in"), "{err}");
    let out = connect_cmd(
        &app,
        "astravdi",
        "nope",
        dir2.path(),
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pool"));

    // A security-key user and a single sign-on user (no [oidc] here) are told what to do, not
    // the protocol's next step.
    for (user, said) in [
        (
            "user-3",
            "user-3 signs in with a security key, which `poolgate connect` cannot use",
        ),
        (
            "user-5",
            "user-5 signs in through single sign-on, which this server does not offer",
        ),
    ] {
        let fresh = tempfile::tempdir().unwrap();
        let out = connect_cmd(
            &app,
            user,
            "pool-win-1",
            fresh.path(),
            &format!("{PASSWORD}\n"),
        )
        .await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{err}");
        assert!(!err.contains("rpc/"), "{err}");
    }
}

async fn admin_cmd(
    app: &TestApp,
    user: &str,
    dir: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "admin",
            "--server",
            &app.ws_url(),
            "--user",
            user,
            "--password-stdin",
        ])
        .arg("--token-file")
        .arg(dir.join(format!("token-{user}")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(input);
    tokio::time::timeout(REPLY_TIMEOUT, child.wait_with_output())
        .await
        .expect("admin finishes")
        .unwrap()
}

#[tokio::test]
async fn poolgate_admin_reset_lets_a_user_with_a_failed_step_1_in_at_once() {
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.failed_step_retry = std::time::Duration::from_secs(600);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut user, _) = app.login("user-2").await;
    let failed = user
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    assert_eq!(user.follow(&failed).await.0.last().unwrap(), "FAILED");
    assert_eq!(
        error_code(
            &user
                .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
                .await
        ),
        403
    );

    let out = admin_cmd(&app, "user-2", dir.path(), &["reset", "pool-win-1"]).await;
    assert!(!out.status.success(), "only admins");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("Admin role required"),
        "{err}"
    );

    let out = admin_cmd(
        &app,
        "astravdi",
        dir.path(),
        &["reset", "pool-win-1", "--username", "user-2"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["cleared"][0]["id"], failed, "{printed}");
    assert_eq!(printed["cleared"][0]["username"], "user-2");
    let reply = user
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_ne!(reply["args"]["task"]["id"], failed);

    // The other actions map to their methods.
    let out = admin_cmd(&app, "astravdi", dir.path(), &["tasks"]).await;
    assert!(out.status.success());
    assert!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .is_array()
    );
    let out = admin_cmd(
        &app,
        "astravdi",
        dir.path(),
        &["release", "user-2", "pool-win-1"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(printed.get("released").is_some(), "{printed}");
}

#[tokio::test]
async fn text_logs_to_a_file_or_pipe_carry_no_colour_codes() {
    // stderr is a pipe here, and neither NO_COLOR nor RUST_LOG is set.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = ServerProcess::start_with(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data],
        |_| {},
    )
    .await;
    let mut c = server.connect().await;
    assert_eq!(
        c.rpc("auth", json!({"username": "astravdi", "password": "wrong"}))
            .await["name"],
        "error"
    );
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains(" INFO "), "plain level names: {log}");
    assert!(!log.contains('\x1b'), "no escape codes: {log:?}");
}

#[cfg(unix)]
#[test]
fn user_edits_keep_the_users_files_mode_and_replace_it_atomically() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::metadata(&users).unwrap();
    let out = user_cmd(&users, &["add", "carol"], Some("carol-pass-sienna-58\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::metadata(&users).unwrap();
    assert_ne!(before.ino(), after.ino(), "replaced atomically");
    assert_eq!(after.permissions().mode() & 0o777, 0o640);
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
}

#[cfg(unix)]
#[test]
#[ignore = "needs root; .ci/run runs it"]
fn user_edits_as_root_keep_the_users_files_owner_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // An admin editing /etc/poolgate/users.toml as root: a file owned by someone else, e.g.
    // root:poolgate, must stay theirs.
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(
        std::os::unix::fs::chown(&users, Some(4242), Some(4343)).is_ok(),
        "this test needs root (it gives the file to another owner)"
    );
    let out = user_cmd(&users, &["add", "carol"], Some("carol-pass-sienna-58\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::metadata(&users).unwrap();
    assert_eq!((after.uid(), after.gid()), (4242, 4343));
    assert_eq!(after.permissions().mode() & 0o777, 0o640);
}

#[cfg(unix)]
#[test]
#[ignore = "needs root; .ci/run runs it"]
fn a_users_file_made_by_root_in_a_service_directory_is_readable_by_the_service_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // /etc/poolgate is root:poolgate 0750: a users file root makes there with `user add` must
    // be readable by the service (0640, group poolgate), not root's alone.
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc-poolgate");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert!(
        std::os::unix::fs::chown(&etc, None, Some(4343)).is_ok(),
        "this test needs root (it gives the directory to another group)"
    );
    let users = etc.join("users.toml");
    let out = user_cmd(&users, &["add", "carol"], Some("carol-pass-sienna-58\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = std::fs::metadata(&users).unwrap();
    assert_eq!(made.gid(), 4343);
    assert_eq!(made.permissions().mode() & 0o777, 0o640);

    // In a directory of the user's own (a home, a temporary directory) it stays 0600.
    let own = dir.path().join("users.toml");
    let out = user_cmd(&own, &["add", "carol"], Some("carol-pass-sienna-58\n"));
    assert!(out.status.success());
    let made = std::fs::metadata(&own).unwrap();
    assert_eq!(made.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_saved_token_file_left_readable_by_others_is_0600_after_the_next_sign_in() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token-astravdi");
    std::fs::write(&file, "a-stale-token").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = admin_cmd(&app, "astravdi", dir.path(), &["sessions"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(
        after.permissions().mode() & 0o777,
        0o600,
        "the token is private"
    );
    let token = std::fs::read_to_string(&file).unwrap();
    assert_ne!(
        token, "a-stale-token",
        "the new token replaced the stale one"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "token-astravdi")
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file left: {leftovers:?}"
    );
}

/// `poolgate SUBCOMMAND --server SERVER … REST` with a password on stdin; its stderr.
fn client_stderr(subcommand: &[&str], server: &str, dir: &std::path::Path) -> String {
    let mut child = Command::new(BIN)
        .arg(subcommand[0])
        .args(["--server", server, "--user", "astravdi", "--password-stdin"])
        .arg("--token-file")
        .arg(dir.join("token"))
        .args(&subcommand[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_password_or_token_sent_over_ws_to_another_host_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 refuses: the warning comes before anything is sent. 0.0.0.0 is not loopback.
    for subcommand in [
        &["connect", "--pool", "pool-win-1"][..],
        &["admin", "sessions"],
    ] {
        let err = client_stderr(subcommand, "ws://0.0.0.0:1/", dir.path());
        assert!(
            err.contains("not encrypted (ws://)") && err.contains("use wss://"),
            "{subcommand:?}: {err}"
        );
        for quiet in [
            "ws://127.0.0.1:1/",
            "ws://localhost:1/",
            "ws://[::1]:1/",
            "wss://0.0.0.0:1/",
        ] {
            let err = client_stderr(subcommand, quiet, dir.path());
            assert!(!err.contains("not encrypted"), "{quiet}: {err}");
        }
    }
}

/// `poolgate backup FILE` copies the SQLite state while the server runs (SQLite's online
/// backup): the copy holds the session just opened, is 0600, and an existing file is refused;
/// a Redis or memory state is told to use its own persistence.
#[tokio::test]
async fn backup_copies_the_sqlite_state_while_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = TestApp::spawn_with(|c| {
        c.data_dir = data.clone();
        c.state = poolgate::store::StateUrl::Sqlite(None);
    })
    .await;
    let (_client, _token) = app.login("astravdi").await;
    let copy = dir.path().join("copy.sqlite3");
    let backup = |extra: &[&str]| {
        Command::new(BIN)
            .arg("backup")
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .arg(&copy)
            .output()
            .unwrap()
    };
    // Sessions reach the file within `session_flush`; the copy is taken while serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = std::fs::remove_file(&copy);
        let out = backup(&[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copied = rusqlite::Connection::open(&copy).unwrap();
        let sessions: i64 = copied
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        let check: String = copied
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        if sessions >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session in the copy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = backup(&[]);
    assert!(!out.status.success(), "an existing file is not overwritten");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("it exists; the copy goes to a new file"),
        "{err}"
    );

    let redis = dir.path().join("redis.toml");
    std::fs::write(&redis, "state = \"redis://127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["backup", "--config"])
        .arg(&redis)
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("its own persistence"),
        "{err}"
    );
}

/// `poolgate admin enroll-key` prints the enrolment link and it as a terminal QR code; `keys`
/// lists a user's keys; `remove-key` of a key the user does not have fails with the server's
/// message.
#[tokio::test]
async fn poolgate_admin_enroll_key_prints_the_link_and_a_qr_code() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let out = admin_cmd(&app, "astravdi", dir.path(), &["enroll-key", "user-3"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = format!("http://localhost:{}/?enroll=", app.addr.port());
    assert!(stdout.contains(&link), "{stdout}");
    assert!(
        stdout.contains('█') || stdout.contains('▀'),
        "a QR code: {stdout}"
    );
    let out = admin_cmd(&app, "astravdi", dir.path(), &["keys", "user-3"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = admin_cmd(
        &app,
        "astravdi",
        dir.path(),
        &["remove-key", "user-3", "nope"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No security key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `poolgate admin audit` prints the audit log: one JSON line per event with `--json` (what a
/// SIEM takes), filtered by user and event, newest first, following the pages itself.
#[tokio::test]
async fn poolgate_admin_audit_prints_one_json_line_per_event() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let mut guess = app.connect().await;
    for _ in 0..3 {
        let reply = guess
            .rpc(
                "auth",
                json!({"username": "user-2", "password": "Wr0ng-Secret!"}),
            )
            .await;
        assert_eq!(error_code(&reply), 401);
    }
    app.login("user-2").await;
    let out = admin_cmd(
        &app,
        "astravdi",
        dir.path(),
        &[
            "audit", "--since", "1h", "--user", "user-2", "--json", "--limit", "3",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    assert_eq!(events[0]["event"], "sign_in", "newest first: {stdout}");
    assert!(
        events[1..]
            .iter()
            .all(|e| e["event"] == "sign_in_refused" && e["user"] == "user-2" && e["code"] == 401),
        "{stdout}"
    );
    assert!(!stdout.contains("Wr0ng-Secret!") && !stdout.contains(PASSWORD));
    // Columns without --json; an event filter.
    let out = admin_cmd(
        &app,
        "astravdi",
        dir.path(),
        &["audit", "--since", "1h", "--event", "sign_in_refused"],
    )
    .await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stdout
            .lines()
            .all(|l| l.contains(" sign_in_refused refused user-2 ")
                && l.ends_with("401 \"password: Invalid credentials.\"")),
        "{stdout}"
    );
}

/// Each audit event is also a log line on the `poolgate::audit` target, without the store.
#[tokio::test]
async fn each_audit_event_is_a_line_on_the_audit_log_target() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), 1.0, "");
    let server = ServerProcess::serve(&config, &dir.path().join("data")).await;
    let mut c = server.connect().await;
    let reply = c
        .rpc(
            "auth",
            json!({"username": "user-2", "password": "Wr0ng-Secret!"}),
        )
        .await;
    assert_eq!(error_code(&reply), 401);
    c.auth("astravdi", PASSWORD).await;
    // The server writes its log beside the replies: wait for the second line to be read.
    let read = std::time::Instant::now();
    let lines = loop {
        let lines = server.log_lines("poolgate::audit:");
        if lines.len() >= 2 || read.elapsed() > REPLY_TIMEOUT {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let event: Value =
        serde_json::from_str(lines[0].split_once("poolgate::audit: ").unwrap().1).unwrap();
    assert_eq!(event["event"], "sign_in_refused");
    assert_eq!(event["user"], "user-2");
    assert!(
        lines[1].contains(r#""event":"sign_in","user":"astravdi""#),
        "{lines:#?}"
    );
    assert!(!lines.concat().contains("Wr0ng-Secret!"));
}
