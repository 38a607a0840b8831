//! Directory users in the running server: both transports, pools by group, admins by group,
//! the lockout, revocation, restarts, and a directory that goes away and comes back.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::slapd::*;

/// pool-win-2 (otherwise astravdi's alone) opened to the `vdi-users` group.
const GROUP_POOL: &str = POOL_WIN_2;

/// The demo dataset with `slapd` as its directory; `edit` for more.
pub(crate) async fn app_with_directory(
    slapd: &Slapd,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut poolgate::config::Config),
) -> TestApp {
    let directory = directory_config(slapd, dir);
    TestApp::spawn_with(move |c| {
        fast_sim(c, OK, OK);
        c.directory = Some(directory);
        c.pools[1].groups = vec![USERS_GROUP.into()];
        edit(c);
    })
    .await
}

pub(crate) async fn ws_auth(
    c: &mut Client,
    username: &str,
    password: &str,
    ldap: Option<bool>,
) -> Value {
    let mut args = json!({"username": username, "password": password});
    if let Some(ldap) = ldap {
        args["ldap"] = json!(ldap);
    }
    c.rpc("auth", args).await
}

/// The v2 login with `"ldap": true`.
async fn rest_login(app: &TestApp, username: &str, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/v2/users/login/"))
        .json(&json!({"username": username, "password": password, "ldap": true}))
        .send()
        .await
        .unwrap()
}

/// The v2 pool list with a JWT.
async fn rest_pools(app: &TestApp, jwt: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(app.url("/api/v2/pools/"))
        .header("Authorization", format!("JWT {jwt}"))
        .send()
        .await
        .unwrap()
}

fn pool_ids(reply: &Value) -> Vec<String> {
    reply["args"]
        .as_array()
        .unwrap_or_else(|| panic!("a pool list: {reply}"))
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn directory_users_sign_in_on_both_transports_and_get_their_groups_pools() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;

    // WebSocket, asking for the directory.
    let mut alice = app.connect().await;
    let reply = ws_auth(&mut alice, "alice", "alice-pw", Some(true)).await;
    assert_eq!(reply["name"], "response", "{reply}");
    let token = reply["args"][0].as_str().unwrap().to_owned();
    assert_eq!(
        pool_ids(&alice.rpc("pools", json!({})).await),
        vec![GROUP_POOL]
    );
    // Outside the group's pools: 403, as for a local user.
    let reply = alice
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(error_code(&reply), 403);
    let id = alice
        .rpc("pool_request", json!({"pool_id": GROUP_POOL}))
        .await["args"]["task"]["id"]
        .clone();
    let (_, done) = alice.follow(&id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // Not an admin.
    assert_eq!(
        error_code(&alice.rpc("admin_sessions", json!({})).await),
        403
    );

    // Without the flag: a name that is not local goes to the directory; a local one stays.
    let mut again = app.connect().await;
    assert_eq!(
        ws_auth(&mut again, "bob", "bob-pw", None).await["name"],
        "response"
    );
    let sessions = again.rpc("admin_sessions", json!({})).await;
    let names: Vec<&Value> = sessions["args"]
        .as_array()
        .unwrap_or_else(|| panic!("bob is an admin by group: {sessions}"))
        .iter()
        .map(|s| &s["username"])
        .collect();
    assert!(names.contains(&&json!("alice")), "{sessions}");
    let mut local = app.connect().await;
    assert_eq!(
        ws_auth(&mut local, "astravdi", PASSWORD, None).await["name"],
        "response"
    );
    // Asking for the directory skips the local users.
    let mut asked = app.connect().await;
    assert_eq!(
        error_code(&ws_auth(&mut asked, "astravdi", PASSWORD, Some(true)).await),
        401
    );
    // Wrong and empty passwords.
    assert_eq!(
        error_code(&ws_auth(&mut asked, "alice", "wrong", Some(true)).await),
        401
    );
    assert_eq!(
        error_code(&ws_auth(&mut asked, "alice", "", Some(true)).await),
        401
    );

    // REST, `"ldap": true`.
    let login = rest_login(&app, "alice", "alice-pw").await;
    assert_eq!(login.status(), 200);
    let jwt = login.json::<Value>().await.unwrap()["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let pools = rest_pools(&app, &jwt).await;
    assert_eq!(pools.status(), 200);
    let body: Value = pools.json().await.unwrap();
    assert!(body.to_string().contains(GROUP_POOL), "{body}");
    assert_eq!(rest_login(&app, "alice", "wrong").await.status(), 401);

    // After a restart, the directory user's token and JWT still resolve (from the store).
    let app = app.restart().await;
    let mut resumed = app.connect().await;
    let reply = resumed.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(
        pool_ids(&resumed.rpc("pools", json!({})).await),
        vec![GROUP_POOL]
    );
    assert_eq!(rest_pools(&app, &jwt).await.status(), 200);
    app.stop().await;
}

pub async fn a_directory_down_answers_503_local_users_still_sign_in_and_it_recovers() {
    let mut slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let http = reqwest::Client::new();
    let health = |app: &TestApp| {
        let (http, url) = (http.clone(), app.url("/healthz"));
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(health(&app).await, (200, "ok\n".into()));

    slapd.stop();
    let mut c = app.connect().await;
    let reply = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    assert_eq!(error_code(&reply), 503, "{reply}");
    assert_eq!(
        reply["args"]["message"],
        "The directory is unavailable; try again shortly."
    );
    let mut local = app.connect().await;
    assert_eq!(
        ws_auth(&mut local, "astravdi", PASSWORD, None).await["name"],
        "response",
        "local users sign in while the directory is down"
    );
    assert_eq!(
        health(&app).await,
        (200, "degraded: directory unreachable\n".into())
    );
    let metrics = http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors = metric(&metrics, "poolgate_directory_errors_total");
    assert!(errors >= 1.0, "{errors}");

    slapd.resume();
    let reply = ws_auth(&mut c, "alice", "alice-pw", Some(true)).await;
    assert_eq!(reply["name"], "response", "recovered: {reply}");
    assert_eq!(health(&app).await, (200, "ok\n".into()));
    app.stop().await;
}

pub async fn the_lockout_and_revocation_apply_to_directory_users() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| c.lockout_attempts = 2).await;
    let mut c = app.connect().await;
    for _ in 0..2 {
        assert_eq!(
            error_code(&ws_auth(&mut c, "carol", "wrong", Some(true)).await),
            401
        );
    }
    let mut c = app.connect().await;
    assert_eq!(
        error_code(&ws_auth(&mut c, "carol", "carol-pw", Some(true)).await),
        429,
        "locked out like a local user, even with the right password"
    );

    // An admin (bob, by group) ends alice's sessions.
    let mut alice = app.connect().await;
    let token = ws_auth(&mut alice, "alice", "alice-pw", Some(true)).await["args"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let mut bob = app.connect().await;
    ws_auth(&mut bob, "bob", "bob-pw", Some(true)).await;
    let revoked = bob.rpc("admin_revoke", json!({"username": "alice"})).await;
    assert_eq!(revoked["args"]["revoked_sessions"], 1, "{revoked}");
    let mut later = app.connect().await;
    assert_eq!(
        error_code(&later.rpc("auth_token", json!({"token": token})).await),
        401
    );
    app.stop().await;
}

pub async fn a_group_change_takes_effect_at_the_next_sign_in() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |_| {}).await;
    let mut c = app.connect().await;
    ws_auth(&mut c, "carol", "carol-pw", Some(true)).await;
    assert!(pool_ids(&c.rpc("pools", json!({})).await).is_empty());
    slapd.modify(&format!(
        "dn: {USERS_GROUP}\nchangetype: modify\nadd: member\nmember: uid=carol,{PEOPLE}\n"
    ));
    let mut c = app.connect().await;
    ws_auth(&mut c, "carol", "carol-pw", Some(true)).await;
    assert_eq!(pool_ids(&c.rpc("pools", json!({})).await), vec![GROUP_POOL]);
    let reply = c.rpc("pool_request", json!({"pool_id": GROUP_POOL})).await;
    assert!(reply["args"]["task"].is_object(), "{reply}");
    app.stop().await;
}

/// A whole pool's `admin_reset` clears the failed step 1 of the directory users its groups
/// admit (as their last sign-in said), not only of the users its config names.
pub async fn a_pool_wide_reset_clears_the_failed_steps_of_its_group_members() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| fast_sim(c, FAIL, OK)).await;
    let mut alice = app.connect().await;
    ws_auth(&mut alice, "alice", "alice-pw", Some(true)).await;
    let id = alice
        .rpc("pool_request", json!({"pool_id": GROUP_POOL}))
        .await["args"]["task"]["id"]
        .clone();
    let (seen, _) = alice.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "FAILED");
    let held = alice
        .rpc("pool_request", json!({"pool_id": GROUP_POOL}))
        .await;
    assert_eq!(error_code(&held), 403, "held back by the failure: {held}");

    let (mut admin, _) = app.login("astravdi").await;
    let reply = admin
        .rpc("admin_reset", json!({"pool_id": GROUP_POOL}))
        .await;
    let cleared = reply["args"]["cleared"]
        .as_array()
        .unwrap_or_else(|| panic!("a cleared list: {reply}"));
    assert_eq!(cleared.len(), 1, "{reply}");
    assert_eq!(cleared[0]["id"], id);
    assert_eq!(cleared[0]["username"], "alice");
    let again = alice
        .rpc("pool_request", json!({"pool_id": GROUP_POOL}))
        .await;
    assert_ne!(
        again["args"]["task"]["id"], id,
        "a new task at once: {again}"
    );
    assert!(again["args"]["task"]["id"].is_string(), "{again}");
    app.stop().await;
}

/// `check-config` reads the service password; `--connect` (and `serve` at start) goes through
/// connect, bind and search and names the step that fails, at the key it depends on: a wrong
/// password at `bind_dn`, a wrong `user_base` at `user_base`, a directory not there at `url`.
pub async fn check_config_reads_the_service_password_and_connect_binds_it() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("ldap-password");
    let config = dir.path().join("poolgate.toml");
    let file = config.to_str().unwrap().to_owned();
    let demo = poolgate::config::DEMO_CONFIG.replace(
        "data_dir = \"poolgate-data\"",
        &format!("data_dir = {:?}", dir.path().join("data")),
    );
    // The line of `key = ` in the [directory] table written below.
    let line = |key: &str| {
        let at = demo.lines().count() + 3;
        at + ["url", "bind_dn", "bind_password_file", "user_base"]
            .iter()
            .position(|k| *k == key)
            .unwrap()
    };
    let write = |url: &str, base: &str| {
        let text = format!(
            "{demo}\n[directory]\nurl = {url:?}\nbind_dn = {SERVICE_DN:?}\n\
             bind_password_file = {password_file:?}\nuser_base = {base:?}\ntimeout = 2\n",
        );
        std::fs::write(&config, text).unwrap();
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
            .args(args)
            .env_remove("POOLGATE_LDAP_PASSWORD")
            .env_remove("POOLGATE_JWT_SECRET")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = |connect: bool| {
        let mut args = vec!["check-config"];
        if connect {
            args.push("--connect");
        }
        args.push(&file);
        run(&args)
    };

    // No password file yet.
    write(&slapd.url(), PEOPLE);
    let (ok, err) = check(false);
    assert!(
        !ok && err.contains("directory: cannot read bind_password_file"),
        "{err}"
    );

    // A wrong password: the file is fine, the bind is refused.
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    let (ok, err) = check(false);
    assert!(ok, "{err}");
    let bind = format!(
        "{file}:{}:1: directory.bind_dn: bind: the directory refused the service account \
         {SERVICE_DN:?} (invalid credentials, result code 49",
        line("bind_dn")
    );
    let (ok, err) = check(true);
    assert!(!ok && err.contains(&bind), "expected {bind}\nin:\n{err}");
    assert!(
        err.contains(
            "the password (bind_password_file or POOLGATE_LDAP_PASSWORD) or bind_dn is wrong"
        ),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "never quoted: {err}");
    // serve refuses to start for the same reason, said the same way.
    let (ok, err) = run(&["serve", "--config", &file, "--listen", "127.0.0.1:0"]);
    assert!(
        !ok && err.contains(&bind),
        "serve: expected {bind}\nin:\n{err}"
    );

    // The right password, a user_base that is not there: the search fails.
    std::fs::write(&password_file, format!("{SERVICE_PASSWORD}\n")).unwrap();
    let missing = format!("ou=nobody,{PEOPLE}");
    write(&slapd.url(), &missing);
    let search = format!(
        "{file}:{}:1: directory.user_base: search: the service account cannot read user_base \
         {missing:?} (no such object, result code 32",
        line("user_base")
    );
    let (ok, err) = check(true);
    assert!(
        !ok && err.contains(&search),
        "expected {search}\nin:\n{err}"
    );
    assert!(err.contains("correct user_base"), "{err}");

    // Nothing listening at the URL: the connection fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ldap://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    write(&url, PEOPLE);
    let connect = format!(
        "{file}:{}:1: directory.url: connect: cannot reach {url}: ",
        line("url")
    );
    let (ok, err) = check(true);
    assert!(
        !ok && err.contains(&connect),
        "expected {connect}\nin:\n{err}"
    );

    write(&slapd.url(), PEOPLE);
    let (ok, err) = check(true);
    assert!(ok, "{err}");
}

/// The Guacamole username in a link's payload, opened as guacamole-auth-json opens it
/// (base64, AES-128-CBC with a zero IV, a 32-byte HMAC-SHA256 signature, then the JSON).
fn guacamole_username(key: &[u8; 16], url: &str) -> String {
    use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    use base64::Engine;
    use hmac::Mac;
    let encoded = url.split_once("#/?data=").expect("a link with data").1;
    let data = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .unwrap();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .unwrap();
    let plain = cbc::Decryptor::<aes::Aes128>::new(key.into(), &[0u8; 16].into())
        .decrypt_padded_vec_mut::<Pkcs7>(&sealed)
        .unwrap();
    let (signature, json) = plain.split_at(32);
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(json);
    mac.verify_slice(signature).expect("signed with the key");
    let user: Value = serde_json::from_slice(json).unwrap();
    user["username"].as_str().unwrap().to_owned()
}

/// A directory user whose uid is a local user's name (`astravdi`) is another Guacamole user:
/// `ldap:astravdi` (the default `directory_user_prefix`), the local one stays `astravdi`.
pub async fn a_directory_user_and_the_local_user_of_the_same_name_are_two_guacamole_users() {
    use std::os::unix::fs::PermissionsExt;
    let slapd = Slapd::start();
    slapd.modify(&format!(
        "dn: uid=astravdi,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: astravdi\n\
         cn: Directory Astra\nsn: Astra\nuserPassword: dir-astra-pw\n"
    ));
    slapd.modify(&format!(
        "dn: {USERS_GROUP}\nchangetype: modify\nadd: member\nmember: uid=astravdi,{PEOPLE}\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let key_hex = "9a8d6a7ecdb0804b2afbb9c1d0814442";
    let mut key = [0u8; 16];
    hex::decode_to_slice(key_hex, &mut key).unwrap();
    let key_file = dir.path().join("guacamole.key");
    std::fs::write(&key_file, key_hex).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| {
        c.pools[1].guacamole = Some(poolgate::pools::GuacamoleConfig {
            url: "https://gw.example.org/guacamole/".into(),
            secret_key_file: Some(key_file),
            secret_key_env: None,
            protocol: None,
            parameters: Default::default(),
            link_ttl: std::time::Duration::from_secs(60),
            directory_user_prefix: "ldap:".into(),
            local_user_prefix: String::new(),
        });
    })
    .await;
    let mut names = Vec::new();
    for (password, ldap) in [(PASSWORD, None), ("dir-astra-pw", Some(true))] {
        let mut c = app.connect().await;
        let reply = ws_auth(&mut c, "astravdi", password, ldap).await;
        assert_eq!(reply["name"], "response", "{reply}");
        for step in ["pool_request", "connect_info"] {
            let id =
                c.rpc(step, json!({"pool_id": GROUP_POOL})).await["args"]["task"]["id"].clone();
            c.follow(&id).await;
        }
        let ready = c.rpc("connect_info", json!({"pool_id": GROUP_POOL})).await;
        let url = ready["args"]["guacamole"]["url"]
            .as_str()
            .unwrap_or_else(|| panic!("a link: {ready}"));
        names.push(guacamole_username(&key, url));
    }
    app.stop().await;
    assert_eq!(names, ["astravdi", "ldap:astravdi"]);
}

/// `auditor_groups` names a directory group (by DN, written otherwise than the directory
/// does): its members see the admin views and the audit log and change nothing; their
/// sign-ins are recorded as `directory` ones, and a wrong directory password as a refusal.
pub async fn a_directory_group_in_auditor_groups_makes_auditors() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_directory(&slapd, dir.path(), |c| {
        c.auditor_groups = vec![USERS_GROUP.to_uppercase().replace(',', ", ")];
    })
    .await;
    let mut wrong = app.connect().await;
    let reply = ws_auth(&mut wrong, "alice", "not-alice-pw", Some(true)).await;
    assert_eq!(error_code(&reply), 401);
    let mut alice = app.connect().await;
    let reply = ws_auth(&mut alice, "alice", "alice-pw", Some(true)).await;
    assert_eq!(reply["name"], "response", "{reply}");
    let me = alice.rpc("me", json!({})).await;
    assert_eq!(me["args"]["roles"], json!(["user", "auditor"]), "{me}");
    assert_eq!(
        alice.rpc("admin_sessions", json!({})).await["name"],
        "response"
    );
    let reply = alice
        .rpc("admin_revoke", json!({"username": "astravdi"}))
        .await;
    assert_eq!(error_code(&reply), 403);
    assert_eq!(
        reply["args"]["message"],
        "Admin role required: an auditor may look but change nothing."
    );
    let reply = alice
        .rpc(
            "admin_audit",
            json!({"since": "1h", "user": "alice", "order": "oldest"}),
        )
        .await;
    let events = reply["args"]["events"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["detail"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds[..2],
        [
            ("sign_in_refused", "directory: Invalid credentials."),
            ("sign_in", "directory")
        ],
        "{reply}"
    );
    // bob is in the admins' group too: an admin who is also an auditor is an admin.
    let mut bob = app.connect().await;
    ws_auth(&mut bob, "bob", "bob-pw", Some(true)).await;
    let me = bob.rpc("me", json!({})).await;
    assert_eq!(
        me["args"]["roles"],
        json!(["admin", "user", "auditor"]),
        "{me}"
    );
    let reply = bob.rpc("admin_revoke", json!({"username": "alice"})).await;
    assert_eq!(reply["name"], "response", "{reply}");
}
