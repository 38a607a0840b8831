//! What `check-config` and `serve` say when something is wrong: every problem of a config at
//! once, each at its key's line and column, and start-up errors that say what to do (a port
//! in use, a data directory this user cannot write, Redis down, a demo server others reach).

use std::process::Command;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_poolgate");

/// Runs the binary with `args` to its end (it must end within the reply timeout): whether it
/// succeeded, and its stderr.
async fn run(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio::process::Command::new(BIN)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE")
            .env_remove("POOLGATE_JWT_SECRET")
            .output(),
    )
    .await
    .expect("gives up at once")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A file with a mistake of every kind: every one is listed in one run, in the order of the
/// file, each as `FILE:LINE:COL: key: what is wrong; what to do` — the same list from
/// `check-config` and from `serve`, which refuses to start.
#[tokio::test]
async fn every_problem_of_a_config_is_listed_at_once_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let users = dir.path().join("users.toml");
    let pool = |id: &str, name: &str, extra: &str| {
        format!(
            "[[pools]]\nid = \"{id}\"\nname = \"{name}\"\npool_type = \"X\"\nos_type = \"Y\"\n\
             connection_types = []\n{extra}"
        )
    };
    let id = "6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a01";
    let text = format!(
        "lsiten = \"127.0.0.1:0\"\ntoken_ttl = 0\nidle_timeout = \"soon\"\n\
         users_file = \"users.toml\"\n\n{}\n{}\n\
         [provisioners.lab]\nkind = \"command\"\ncommand = [\"/bin/true\"]\nworkdr = \"/tmp\"\n",
        pool(id, "a", "users = [\"ghost\", \"ghost2\"]\n"),
        pool(id, "b", "provisioner = \"labb\"\n"),
    );
    std::fs::write(&file, &text).unwrap();
    std::fs::write(
        &users,
        "[[users]]\nusername = \"carol\"\nrole = [\"user\"]\n",
    )
    .unwrap();
    let p = file.to_str().unwrap();
    let u = users.to_str().unwrap();
    let expected = [
        format!("{p}:1:1: lsiten: unknown key; did you mean `listen`?"),
        format!(
            "{p}:2:1: token_ttl: must be greater than zero; write seconds, e.g. token_ttl = 300"
        ),
        format!(
            "{p}:3:1: idle_timeout: invalid type: string \"soon\", expected a number; write a number"
        ),
        format!("{p}:12:1: pools.0.users: pool \"a\" lists an unknown user \"ghost\"; define it"),
        format!("{p}:12:1: pools.0.users: pool \"a\" lists an unknown user \"ghost2\"; define it"),
        format!(
            "{p}:15:1: pools.1.id: pool id {id} is used twice (also by pool \"a\"); give each pool"
        ),
        format!(
            "{p}:20:1: pools.1.provisioner: pool \"b\" names an undefined provisioner \"labb\"; did you mean \"lab\"?"
        ),
        format!("{p}:25:1: provisioners.lab.workdr: unknown key; did you mean `workdir`?"),
        format!("{u}:1:1: users.0: `id` is missing; add `id = …` to this table"),
        format!("{u}:3:1: users.0.role: unknown key; did you mean `roles`?"),
    ];
    let out = Command::new(BIN)
        .args(["check-config", p])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    for (i, want) in expected.iter().enumerate() {
        assert!(
            lines.get(i).is_some_and(|l| l.starts_with(want.as_str())),
            "line {i}: expected {want}…, in:\n{err}"
        );
    }
    assert!(
        err.contains(&format!("{} problems in {p}", expected.len())),
        "{err}"
    );

    let served = tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio::process::Command::new(BIN)
            .args(["serve", "--config", p, "--idle-timeout", "5"])
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE")
            .output(),
    )
    .await
    .expect("serve gives up at once")
    .unwrap();
    assert!(!served.status.success());
    let served = String::from_utf8_lossy(&served.stderr);
    // The flag replaces the file's idle_timeout: that one is not a problem for serve.
    assert!(
        served.contains(&format!(
            "cannot be served ({} problems)",
            expected.len() - 1
        )),
        "{served}"
    );
    assert!(!served.contains("idle_timeout"), "{served}");
    for want in expected.iter().filter(|w| !w.contains("idle_timeout")) {
        assert!(
            served.contains(want.as_str()),
            "serve: expected {want}…, in:\n{served}"
        );
    }
}

#[tokio::test]
async fn a_port_in_use_is_named_with_how_to_find_its_process_and_how_to_choose_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!("data_dir = {data:?}\n\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let p = file.to_str().unwrap();
    let (ok, err) = run(&["serve", "--config", p]).await;
    assert!(!ok);
    let said = format!(
        "{p}:3:1: listen: cannot listen on 127.0.0.1:{port}: Address already in use (os error \
         98); the port is in use by another process (another poolgate?); find it with `ss -ltnp \
         'sport = :{port}'` (as root to see its name), stop it, or choose another address with \
         --listen or listen"
    );
    assert!(err.contains(&said), "expected {said}\nin:\n{err}");
    // Given as a flag, the flag is named without a place in the file.
    let listen = format!("127.0.0.1:{port}");
    let (ok, err) = run(&["serve", "--config", p, "--listen", &listen]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("{p}: listen: cannot listen on {listen}")),
        "{err}"
    );
    drop(taken);
    // An address of no interface here (TEST-NET-1).
    let (ok, err) = run(&["serve", "--config", p, "--listen", "192.0.2.1:8080"]).await;
    assert!(!ok);
    assert!(
        err.contains(
            "listen: cannot listen on 192.0.2.1:8080: Cannot assign requested address (os error \
             99); 192.0.2.1 is not an address of this machine; use one of its addresses (`ip \
             -brief address`), 0.0.0.0 for all, or 127.0.0.1, with --listen or listen"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn redis_down_at_start_names_the_state_key_its_line_and_the_url() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\nstate = \"redis://127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let p = file.to_str().unwrap();
    let said = format!("{p}:3:1: state: cannot reach redis://127.0.0.1:{port}: ");
    let reachable = "Redis must be reachable when it starts: start Redis (or open the way to it), \
                     or correct state";
    for args in [
        vec!["serve", "--config", p],
        vec!["check-config", "--connect", p],
    ] {
        let (ok, err) = run(&args).await;
        assert!(!ok, "{args:?}");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&said) && l.ends_with(reachable)),
            "{args:?}: expected {said}…{reachable}\nin:\n{err}"
        );
    }
    assert!(!data.exists(), "nothing was written");
}

#[tokio::test]
async fn a_cleartext_directory_is_warned_of_once_by_check_config_and_once_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("ldap-password");
    std::fs::write(&password, "service-password\n").unwrap();
    let file = dir.path().join("p.toml");
    let text = format!(
        "data_dir = {:?}\n\n[directory]\nurl = \"ldap://{}:389\"\nbind_dn = \"cn=poolgate\"\n\
         bind_password_file = {password:?}\nuser_base = \"ou=people\"\ntimeout = 1\n",
        dir.path().join("data"),
        // An address of no machine (TEST-NET-1): nothing answers, nothing is resolved.
        "192.0.2.1"
    );
    std::fs::write(&file, text).unwrap();
    let p = file.to_str().unwrap();
    let warning = "directory.url: ldap://192.0.2.1:389 is reached WITHOUT TLS";
    let out = Command::new(BIN)
        .args(["check-config", p])
        .env_remove("POOLGATE_JWT_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning does not fail: {err}");
    let warned: Vec<&str> = err.lines().filter(|l| l.contains("WITHOUT TLS")).collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(
        warned[0].starts_with(&format!("warning: {p}:4:1: {warning}")),
        "{err}"
    );

    let server = ServerProcess::start(&["serve", "--config", p, "--listen", "127.0.0.1:0"]).await;
    let warned = server.log_lines("WITHOUT TLS");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(warning), "{warned:?}");
    // The directory cannot be reached: a warning naming the step, and serving goes on.
    let unreachable = server.log_lines("directory.url: connect:");
    assert_eq!(unreachable.len(), 1, "{:?}", server.log.lock().unwrap());
}

#[tokio::test]
async fn a_demo_server_others_can_reach_warns_that_its_passwords_are_public() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    let banner = server.log_lines("this is a DEMO server");
    assert_eq!(banner.len(), 1, "{}", server.log.lock().unwrap());
    assert!(
        !server
            .log_lines("demo users' passwords are published")
            .is_empty()
    );
    assert!(
        !server
            .log_lines("Listen on 127.0.0.1 (--listen 127.0.0.1:8080)")
            .is_empty(),
        "{}",
        server.log.lock().unwrap()
    );
    // On loopback, no such warning.
    let data = dir.path().join("data-2");
    let quiet = ServerProcess::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(quiet.log_lines("DEMO server").is_empty());
}

/// A data directory this user cannot write — root's, or its own without the write bit — is
/// named with its owner and the command that fixes it, by `serve` and `check-config --connect`
/// alike, instead of "cannot make …/jwt-secret 0600". Runs the binary as `nobody`.
#[cfg(unix)]
#[tokio::test]
#[ignore = "needs root; .ci/run runs it"]
async fn a_data_dir_this_user_cannot_write_is_named_with_its_owner_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let nobody = 65534;
    let dir = tempfile::tempdir().unwrap();
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open.clone()).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o500)).unwrap();
    assert!(
        std::os::unix::fs::chown(&own, Some(nobody), Some(nobody)).is_ok(),
        "this test needs root (it gives a directory to nobody)"
    );
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let out = Command::new(BIN)
            .args(args)
            .uid(nobody)
            .gid(nobody)
            .env_remove("RUST_BACKTRACE")
            .env_remove("POOLGATE_JWT_SECRET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases = [
        (
            root.clone(),
            format!(
                "data_dir: {} is not writable by this user (nobody, uid 65534): it belongs to \
                 root (uid 0), mode 0700; give it to this user (sudo chown -R nobody: {}), or \
                 set data_dir (--data-dir) to a directory this user owns",
                root.display(),
                root.display()
            ),
        ),
        (
            root.join("sub"),
            format!(
                "data_dir: cannot create {}: {} is not writable by this user (nobody, uid \
                 65534): it belongs to root (uid 0), mode 0700",
                root.join("sub").display(),
                root.display()
            ),
        ),
        (
            own.clone(),
            format!(
                "data_dir: {} is not writable by this user (nobody), its owner: mode 0500; \
                 chmod 700 {}",
                own.display(),
                own.display()
            ),
        ),
    ];
    // A port below 1024, where the system reserves them for root.
    let unprivileged: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged > 80 {
        let data = dir.path().join("data-80");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(nobody), Some(nobody)).unwrap();
        let (ok, err) = as_nobody(&[
            "serve",
            "--listen",
            "127.0.0.1:80",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(
            err.contains(
                "listen: cannot listen on 127.0.0.1:80: Permission denied (os error 13); ports \
                 below 1024 need root or the CAP_NET_BIND_SERVICE capability"
            ),
            "{err}"
        );
    }
    for (i, (data, said)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("p{i}.toml"));
        std::fs::write(
            &file,
            format!("listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&file, open.clone()).unwrap();
        let p = file.to_str().unwrap();
        for args in [
            vec!["serve", "--config", p],
            vec!["check-config", "--connect", p],
        ] {
            let (ok, err) = as_nobody(&args);
            assert!(!ok, "{args:?}");
            let at = format!("{p}:2:1: {said}");
            assert!(err.contains(&at), "{args:?}: expected {at}\nin:\n{err}");
            assert!(!err.contains("jwt-secret"), "{err}");
        }
    }
}

#[tokio::test]
async fn a_file_that_cannot_be_read_or_parsed_says_where_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let m = missing.to_str().unwrap();
    let (ok, err) = run(&["check-config", m]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "cannot read config file {m}: No such file or directory (os error 2); check the \
             path and that this user may read it"
        )),
        "{err}"
    );
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "demo = true\nlisten = [\n").unwrap();
    let b = broken.to_str().unwrap();
    for args in [vec!["check-config", b], vec!["serve", "--config", b]] {
        let (ok, err) = run(&args).await;
        assert!(!ok, "{args:?}");
        let at = format!("{b}:2:11: unclosed array, expected `]`");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&at) && l.ends_with("; fix the TOML syntax here")),
            "{args:?}: expected {at}…; fix the TOML syntax here\nin:\n{err}"
        );
    }
    // A key set twice is named (toml's message names none).
    let twice = dir.path().join("twice.toml");
    std::fs::write(
        &twice,
        "auth_grace = 10\nlisten = \"127.0.0.1:0\"\nauth_grace = 20\n",
    )
    .unwrap();
    let t = twice.to_str().unwrap();
    let (ok, err) = run(&["check-config", t]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("{t}:3:1: `auth_grace` is set twice; keep one")),
        "{err}"
    );
}

#[tokio::test]
async fn check_config_warns_of_a_demo_config_that_listens_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.toml");
    let text = poolgate::config::DEMO_CONFIG
        .replace(
            "data_dir = \"poolgate-data\"",
            &format!("data_dir = {:?}", dir.path().join("data")),
        )
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"");
    let line = text.lines().position(|l| l.starts_with("listen")).unwrap() + 1;
    std::fs::write(&file, text).unwrap();
    let p = file.to_str().unwrap();
    let out = Command::new(BIN)
        .args(["check-config", p])
        .env_remove("POOLGATE_JWT_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning does not fail: {err}");
    let said = format!(
        "warning: {p}:{line}:1: listen: a DEMO server (demo = true) listens on 0.0.0.0:8080, which \
         other machines can reach: its demo users' passwords are published"
    );
    assert!(err.contains(&said), "expected {said}\nin:\n{err}");
}

/// Pool policy keys that cannot work are each a problem at their key, with what to write
/// instead: a schedule's days, hours and time zone, an address network, `balance` on a pool
/// that is not static, an `idle_release` too short to tell, `max_desktops_per_user = 0`.
#[tokio::test]
async fn pool_policy_mistakes_are_each_named_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let pool = |id: &str, name: &str, extra: &str| {
        format!(
            "[[pools]]\nid = \"{id}\"\nname = \"{name}\"\npool_type = \"X\"\nos_type = \"Y\"\n\
             connection_types = []\n{extra}\n"
        )
    };
    let text = format!(
        "max_desktops_per_user = 0\n\n{}{}{}{}",
        pool(
            "6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a01",
            "a",
            "schedule = [{ days = \"Mon-Fry\", hours = \"07:00-19:00\" }]"
        ),
        pool(
            "6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a02",
            "b",
            "schedule = [{ hours = \"7-19\", timezone = \"Europe/Moscow\" }]"
        ),
        pool(
            "6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a03",
            "c",
            "allow_from = [\"10.0.0.0/33\"]"
        ),
        pool(
            "6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a04",
            "d",
            "balance = \"least_used\"\nidle_release = 5\nschedule = [{ hours = \"08:00-09:00\", timezone = \"Mars/Olympus\" }]"
        ),
    );
    std::fs::write(&file, &text).unwrap();
    let (ok, err) = run(&["check-config", file.to_str().unwrap()]).await;
    assert!(!ok, "{err}");
    for want in [
        "max_desktops_per_user: must be at least 1",
        "pools.0.schedule.0.days: \"Mon-Fry\" is not a day or a range of days",
        "pools.1.schedule.0.hours: \"7-19\" is not a range of hours: write it as HH:MM-HH:MM",
        "pools.2.allow_from: \"10.0.0.0/33\" is neither an address nor a network",
        "pools.3.schedule.0.timezone: \"Mars/Olympus\" is not a time zone this server knows",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    // What serde reads is fixed first; then the rules across keys.
    std::fs::write(
        &file,
        format!(
            "max_desktops_per_user = 0\n\n{}",
            pool(
                "6f1c2a4e-8a53-4f5e-9a9e-3f2d7c1b0a04",
                "d",
                "balance = \"least_used\"\nidle_release = 5"
            )
        ),
    )
    .unwrap();
    let (ok, err) = run(&["check-config", file.to_str().unwrap()]).await;
    assert!(!ok, "{err}");
    for want in [
        "max_desktops_per_user: must be at least 1",
        "pools.0.balance: pool \"d\": balance picks among a static inventory's machines",
        "pools.0.idle_release: must be at least 60 s",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}
