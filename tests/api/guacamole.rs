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

const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
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

async fn app_with_gateway(dir: &std::path::Path) -> TestApp {
    let key_file = dir.join("guacamole.key");
    std::fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
    TestApp::spawn_with(|c| {
        fast_sim(c, OK, OK);
        c.pools[0].guacamole = Some(GuacamoleConfig {
            url: GATEWAY.into(),
            secret_key_file: Some(key_file),
            secret_key_env: None,
            protocol: None,
            parameters: BTreeMap::from([("ignore-cert".into(), "true".into())]),
            link_ttl: Duration::from_secs(60),
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
    std::fs::write(&key_file, "not-a-key-but-a-secret-passphrase").unwrap();
    let mut config = demo_config();
    config.pools[0].guacamole = Some(GuacamoleConfig {
        url: GATEWAY.into(),
        secret_key_file: Some(key_file),
        secret_key_env: None,
        protocol: None,
        parameters: BTreeMap::new(),
        link_ttl: Duration::from_secs(60),
    });
    let err = poolgate::state::AppState::new(config)
        .await
        .err()
        .expect("a bad key stops start-up");
    let text = format!("{err:#}");
    assert!(text.contains("32 hexadecimal digits"), "{text}");
    assert!(text.contains("pool-win-1"), "{text}");
    assert!(!text.contains("secret-passphrase"), "{text}");
}
