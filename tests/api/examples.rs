//! The example clients in examples/, run for real against a test server: they are what a new
//! client author copies, so they must behave like a good client.
//!
//! They need `python3` with the `websockets` package, so they are `#[ignore]`d: where it is
//! missing they count as ignored, never as passed. `.ci/run` installs it from PyPI and runs
//! them with `--ignored`; run them locally with `cargo test --test api -- --ignored examples::`.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::*;

/// Fails the test unless python3 with websockets is here (the test was asked for by name).
fn require_python() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with websockets is required: python3 -m pip install websockets"
    );
}

async fn python(script: &str, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/").to_owned() + script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the example finishes")
        .unwrap()
}

#[tokio::test]
#[ignore = "needs python3 with websockets; .ci/run runs it"]
async fn the_v2_client_example_never_produces_a_failed_sign_in_on_a_normal_run() {
    require_python();
    // Two failures would lock the address: every run below must sign in cleanly.
    let app = TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.lockout_attempts = 2;
    })
    .await;
    let server = app.url("");
    let otp = date_code();
    for (user, extra) in [
        ("astravdi", vec![]),
        ("astravdi", vec![]),
        ("astravdi", vec![]),
        ("user-4", vec!["--otp", otp.as_str()]),
    ] {
        let mut args = vec![
            "--server",
            server.as_str(),
            "--user",
            user,
            "--pool",
            "pool-win-1",
        ];
        args.extend(extra);
        let out = python("v2_client.py", &args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{user}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("connect to 192.0.2.10 5900"), "{stdout}");
        assert!(stdout.contains("logout: 205"), "{stdout}");
    }
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("outcome=\"denied\""),
        "no failed sign-in: {metrics}"
    );
    assert_eq!(
        app.state
            .store
            .failures_get("addr:127.0.0.1")
            .await
            .unwrap(),
        0
    );

    // An ADFS user is told plainly that this server cannot sign them in.
    let out = python("v2_client.py", &["--server", &server, "--user", "user-5"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not available on this server"), "{err}");
}

#[tokio::test]
#[ignore = "needs python3 with websockets; .ci/run runs it"]
async fn the_rpc_client_example_names_the_users_pools_when_the_pool_is_unknown() {
    require_python();
    let app = TestApp::spawn_with(|c| fast_sim(c, OK, OK)).await;
    let url = app.ws_url();
    let out = python("rpc_client.py", &[&url, "user-2", PASSWORD, "pool-win-2"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("user-2 has no pool 'pool-win-2'") && err.contains("pool-win-1, pool-astra-2"),
        "names the pools the user has: {err}"
    );
    assert!(!err.contains("Traceback"), "{err}");

    let out = python("rpc_client.py", &[&url, "astravdi", PASSWORD, "pool-win-1"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("connect to 192.0.2.10:5900"), "{stdout}");
}
