//! The Guacamole hand-off, checked the way Guacamole would check it: the link handed out by
//! `connect_info` is opened here with guacamole-auth-json's own algorithm (written again below
//! from its documentation, independently of the server's code), and what the extension would
//! refuse — a changed byte, another key, a payload past its expiry — is refused.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use hmac::{Hmac, Mac};
use poolgate::pools::GuacamoleConfig;
use serde_json::{Value, json};

use crate::helpers::*;

const KEY_HEX: &str = "9a8d6a7ecdb0804b2afbb9c1d0814442";
const GATEWAY: &str = "https://gw.example.org/guacamole/";

fn key() -> [u8; 16] {
    let mut k = [0u8; 16];
    hex::decode_to_slice(KEY_HEX, &mut k).unwrap();
    k
}

/// What guacamole-auth-json 1.5.2 decides for a `data` parameter at `now_ms`
/// (`UserDataService.fromCredentials`): base64, AES-128-CBC with a zero IV and PKCS#5/7
/// padding, a 32-byte HMAC-SHA256 signature of the rest in front, JSON, not expired.
fn guacamole_accepts(key: &[u8; 16], data: &str, now_ms: u64) -> Result<Value, &'static str> {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| "not base64")?;
    let plain = cbc::Decryptor::<aes::Aes128>::new(key.into(), &[0u8; 16].into())
        .decrypt_padded_vec_mut::<Pkcs7>(&sealed)
        .map_err(|_| "decryption failed")?;
    if plain.len() <= 32 {
        return Err("too small for a signature and JSON");
    }
    let (signature, json) = plain.split_at(32);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(json);
    mac.verify_slice(signature)
        .map_err(|_| "signature incorrect")?;
    let user: Value = serde_json::from_slice(json).map_err(|_| "invalid JSON")?;
    if let Some(expires) = user["expires"].as_u64()
        && now_ms > expires
    {
        return Err("expired");
    }
    Ok(user)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The `data` parameter of a link, as Guacamole's web app reads it from the fragment.
fn data_of(url: &str) -> String {
    let encoded = url
        .strip_prefix(&format!("{GATEWAY}#/?data="))
        .unwrap_or_else(|| panic!("a link into the gateway's fragment: {url}"));
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// Writes a key file as an operator should: `text`, mode 0600.
fn write_key(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A pool's `guacamole` table on `GATEWAY` with the key in `key_file`.
fn gateway_config(key_file: std::path::PathBuf) -> GuacamoleConfig {
    GuacamoleConfig {
        url: GATEWAY.into(),
        secret_key_file: Some(key_file),
        secret_key_env: None,
        protocol: None,
        parameters: BTreeMap::new(),
        link_ttl: Duration::from_secs(60),
        directory_user_prefix: "ldap:".into(),
        local_user_prefix: String::new(),
    }
}

async fn app_with_gateway(dir: &std::path::Path) -> TestApp {
    let key_file = dir.join("guacamole.key");
    write_key(&key_file, KEY_HEX);
    TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.pools[0].guacamole = Some(GuacamoleConfig {
            url: GATEWAY.into(),
            secret_key_file: Some(key_file),
            secret_key_env: None,
            protocol: None,
            parameters: BTreeMap::from([("ignore-cert".into(), "true".into())]),
            link_ttl: Duration::from_secs(60),
            directory_user_prefix: "ldap:".into(),
            local_user_prefix: String::new(),
        });
    })
    .await
}

/// Steps 1 and 2 in `pool`; the ready reply's `args`.
async fn connected(c: &mut Client, pool: &str) -> Value {
    let id = c.rpc("pool_request", json!({"pool_id": pool})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    let id = c.rpc("connect_info", json!({"pool_id": pool})).await["args"]["task"]["id"].clone();
    c.follow(&id).await;
    c.rpc("connect_info", json!({"pool_id": pool})).await["args"].clone()
}

#[tokio::test]
async fn a_ready_desktop_behind_a_gateway_comes_with_a_link_guacamole_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_gateway(dir.path()).await;
    let (mut c, _) = app.login("astravdi").await;
    let before = now_ms();
    let reply = connected(&mut c, POOL_WIN_1).await;
    let conn = &reply["connection"];
    assert!(conn["host"].is_string(), "{reply}");
    let link = &reply["guacamole"];
    let expires = link["expires"].as_u64().unwrap();
    assert_eq!(link["expires_in"], 60);
    assert!(
        (before + 60_000..=now_ms() + 60_000).contains(&expires),
        "expires link_ttl after it was made: {link}"
    );

    let user = guacamole_accepts(&key(), &data_of(link["url"].as_str().unwrap()), now_ms())
        .expect("Guacamole accepts the link");
    assert_eq!(user["username"], "astravdi");
    assert_eq!(user["expires"], expires);
    assert_eq!(user["singleUse"], true, "a link opens the desktop once");
    let id = &user["connections"]["pool-win-1"]["id"];
    assert!(
        id.as_str().is_some_and(|id| id.len() == 32),
        "a random connection id: {user}"
    );
    assert_eq!(
        user["connections"],
        json!({"pool-win-1": {
            "id": id,
            "protocol": "rdp",
            "parameters": {
                "hostname": conn["host"],
                "port": conn["port"].to_string(),
                "ignore-cert": "true",
            }
        }})
    );

    // Asked again, even within the same millisecond: a new link (the first may have been
    // used), the same connection, expiring link_ttl after it was made.
    let mut seen = std::collections::HashSet::from([link["url"].clone()]);
    for _ in 0..5 {
        let again = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"].clone();
        assert_eq!(&again["connection"], conn);
        let again_expires = again["guacamole"]["expires"].as_u64().unwrap();
        assert!(again_expires >= expires && again_expires <= now_ms() + 60_000);
        assert!(
            seen.insert(again["guacamole"]["url"].clone()),
            "a link twice"
        );
    }

    // A pool without a gateway answers as before.
    let other = connected(&mut c, POOL_ASTRA_2).await;
    assert!(other["connection"].is_object(), "{other}");
    assert!(other.get("guacamole").is_none(), "{other}");
}

#[tokio::test]
async fn what_guacamole_would_refuse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_gateway(dir.path()).await;
    let (mut c, _) = app.login("astravdi").await;
    let reply = connected(&mut c, POOL_WIN_1).await;
    let expires = reply["guacamole"]["expires"].as_u64().unwrap();
    let data = data_of(reply["guacamole"]["url"].as_str().unwrap());
    assert!(guacamole_accepts(&key(), &data, expires).is_ok());

    // Past its expiry.
    assert_eq!(
        guacamole_accepts(&key(), &data, expires + 1).unwrap_err(),
        "expired"
    );
    // Under another key.
    let mut other = key();
    other[0] ^= 1;
    assert!(guacamole_accepts(&other, &data, expires).is_err());
    // Any byte changed: the first block, one in the middle, the last.
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&data)
        .unwrap();
    for at in [0, 17, sealed.len() / 2, sealed.len() - 17, sealed.len() - 1] {
        let mut tampered = sealed.clone();
        tampered[at] ^= 0x40;
        let tampered = base64::engine::general_purpose::STANDARD.encode(&tampered);
        assert!(
            guacamole_accepts(&key(), &tampered, expires).is_err(),
            "a change at byte {at} is noticed"
        );
    }
    // Cut short by a block.
    let short = base64::engine::general_purpose::STANDARD.encode(&sealed[..sealed.len() - 16]);
    assert!(guacamole_accepts(&key(), &short, expires).is_err());
}

#[tokio::test]
async fn a_gateway_whose_key_is_not_right_stops_start_up_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("guacamole.key");
    write_key(&key_file, "not-a-key-but-a-secret-passphrase");
    let mut config = demo_config();
    config.pools[0].guacamole = Some(gateway_config(key_file));
    let err = poolgate::state::AppState::new(config)
        .await
        .err()
        .expect("a bad key stops start-up");
    let text = format!("{err:#}");
    assert!(text.contains("32 hexadecimal digits"), "{text}");
    assert!(text.contains("pool-win-1"), "{text}");
    assert!(!text.contains("secret-passphrase"), "{text}");
}

/// The demo config as a file, pool-win-1 behind a gateway whose key is in `guacamole.key`.
fn config_with_gateway(dir: &std::path::Path) -> std::path::PathBuf {
    let path = config_file(dir, 1.0, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let pool = format!("id = \"{POOL_WIN_1}\"\n");
    assert!(text.contains(&pool));
    let table = format!(
        "{pool}guacamole = {{ url = \"{GATEWAY}\", secret_key_file = {:?} }}\n",
        dir.join("guacamole.key").to_str().unwrap()
    );
    std::fs::write(&path, text.replacen(&pool, &table, 1)).unwrap();
    path
}

/// `poolgate check-config FILE`: whether it passed, and what it printed.
async fn check_config(config: &std::path::Path) -> (bool, String) {
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .arg("check-config")
        .arg(config)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr).into_owned();
    (check.status.success(), said)
}

/// [`check_config`], then `poolgate serve --config FILE` (expected to stop at once): whether
/// each passed, and what each printed.
async fn check_and_serve(config: &std::path::Path, data: &std::path::Path) -> [(bool, String); 2] {
    let serve = server_command(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .output();
    let serve = tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .expect("serve stops at once on a refused key")
        .unwrap();
    [
        check_config(config).await,
        (
            serve.status.success(),
            String::from_utf8_lossy(&serve.stderr).into_owned(),
        ),
    ]
}

#[tokio::test]
async fn a_weak_or_published_key_or_one_others_can_read_is_refused_by_check_config_and_serve() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_gateway(dir.path());
    let key_file = dir.path().join("guacamole.key");
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("guacamole = "))
        .unwrap()
        + 1;
    for (key, mode, says) in [
        (
            "00000000000000000000000000000000",
            0o600,
            "a short pattern repeated",
        ),
        (
            "4c0b569e4c96df157eee1b65dd0e4d41",
            0o600,
            "published in documentation",
        ),
        (
            "4C0B569E4C96DF157EEE1B65DD0E4D41",
            0o600,
            "published in documentation",
        ),
        (
            "deadbeefdeadbeefdeadbeefdeadbeef",
            0o600,
            "a short pattern repeated",
        ),
        ("000102030405060708090a0b0c0d0e0f", 0o600, "equal steps"),
        ("0f1e2d3c4b5a69788796a5b4c3d2e1f0", 0o600, "equal steps"),
        (
            "a1b2a1b2c3c3a1b2c3b2a1a1b2c3a1b2",
            0o600,
            "too few distinct bytes",
        ),
        (KEY_HEX, 0o644, "permissions 0644"),
        (KEY_HEX, 0o640, "permissions 0640"),
    ] {
        write_key(&key_file, key);
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
        for (passed, said) in check_and_serve(&config, &dir.path().join("data")).await {
            assert!(!passed, "{key} {mode:o}: {said}");
            assert!(said.contains(says), "{key} {mode:o}: {said}");
            assert!(
                said.contains(&format!(":{line}:1: pools.0.guacamole")),
                "names the key's line: {said}"
            );
            assert!(
                !said.to_lowercase().contains(&key.to_lowercase()),
                "never quoted: {said}"
            );
        }
        if mode != 0o600 {
            let (_, said) = check_config(&config).await;
            assert!(said.contains("chmod 600"), "{said}");
        }
    }
    // A random key in a 0600 file passes both.
    write_key(&key_file, KEY_HEX);
    let (checked, said) = check_config(&config).await;
    assert!(checked, "{said}");
}

#[tokio::test]
async fn a_local_user_gets_their_own_name_and_one_named_like_a_directory_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_gateway(dir.path()).await;
    let (mut c, _) = app.login("astravdi").await;
    let reply = connected(&mut c, POOL_WIN_1).await;
    let user = guacamole_accepts(
        &key(),
        &data_of(reply["guacamole"]["url"].as_str().unwrap()),
        now_ms(),
    )
    .unwrap();
    assert_eq!(
        user["username"], "astravdi",
        "local users keep their Guacamole histories"
    );
    app.stop().await;

    // A local user named "ldap:alice" would be the directory's alice in Guacamole.
    let key_file = dir.path().join("guacamole.key");
    let mut config = demo_config();
    let mut alice = config.users[1].clone();
    alice.username = "ldap:alice".into();
    alice.id = uuid::Uuid::new_v4();
    config.users.push(alice);
    config.pools[0].users.push("ldap:alice".into());
    config.pools[0].guacamole = Some(gateway_config(key_file));
    let err = poolgate::state::AppState::new(config)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("\"ldap:alice\"") && text.contains("local_user_prefix"),
        "{text}"
    );
}
