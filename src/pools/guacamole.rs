//! The Guacamole hand-off: a link that signs the user straight into their desktop through
//! Apache Guacamole's encrypted JSON authentication extension, guacamole-auth-json.
//!
//! Followed as guacamole-auth-json 1.5.2 documents and implements it (its README's
//! "Generating encrypted JSON", `doc/encrypt-json.sh`, and `CryptoService` /
//! `UserDataService`, which decide what Guacamole accepts): the JSON names the user, an
//! expiry in milliseconds and the connections; it is signed with HMAC-SHA256 under the shared
//! 128-bit key (`json-secret-key`, 32 hex digits), the 32-byte signature is prepended to the
//! JSON, the whole is encrypted with AES-128-CBC under the same key with an all-zero IV and
//! PKCS#7 padding, and the result is base64-encoded.
//!
//! The link puts it in the URL's fragment (`…/#/?data=…`): Guacamole's web app reads its
//! parameters from there (`$location.search()`) and posts them to `/api/tokens` itself, and a
//! fragment is never sent in a request line, so the payload lands in no access log. It is
//! also `singleUse` (Guacamole refuses it a second time) and expires `link_ttl` after it was
//! made.

use std::collections::BTreeMap;
use std::time::Duration;

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use anyhow::{Context, bail};
use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use sha2::Sha256;

use super::PoolConfig;
use super::config::GuacamoleConfig;
use crate::domain::ConnectionData;

/// Guacamole's connection protocols (those a desktop pool can hand off).
const PROTOCOLS: &[&str] = &["rdp", "vnc", "ssh", "telnet", "kubernetes"];

/// Bounds of `link_ttl`: long enough to click, short enough that a copied link soon dies.
const LINK_TTL_MIN: Duration = Duration::from_secs(10);
const LINK_TTL_MAX: Duration = Duration::from_secs(3600);

/// The key shared with Guacamole's `json-secret-key`; never shown by `Debug`.
#[derive(Clone)]
pub struct GuacamoleKey([u8; 16]);

impl std::fmt::Debug for GuacamoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuacamoleKey(…)")
    }
}

impl GuacamoleKey {
    /// A key written as Guacamole's `json-secret-key` is: 32 hex digits (surrounding
    /// whitespace ignored). The error never quotes the text, which is a secret.
    pub fn from_hex(text: &str) -> Result<Self, &'static str> {
        let text = text.trim();
        let mut key = [0u8; 16];
        if text.len() != 32 || hex::decode_to_slice(text, &mut key).is_err() {
            return Err("must be 32 hexadecimal digits (a 128-bit key, as json-secret-key is)");
        }
        Ok(GuacamoleKey(key))
    }

    /// Signs, encrypts and encodes `json` as guacamole-auth-json's `data` parameter.
    pub fn seal(&self, json: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(json);
        let mut plain = mac.finalize().into_bytes().to_vec();
        plain.extend_from_slice(json);
        let sealed = cbc::Encryptor::<aes::Aes128>::new(&self.0.into(), &[0u8; 16].into())
            .encrypt_padded_vec_mut::<Pkcs7>(&plain);
        base64::engine::general_purpose::STANDARD.encode(sealed)
    }
}

/// Keys published in documentation: guacamole-auth-json's README worked example (the same
/// key appears in Guacamole's manual), lower case.
const KNOWN_KEYS: &[&str] = &["4c0b569e4c96df157eee1b65dd0e4d41"];

/// Fewest distinct bytes a 16-byte random key is expected to have (a random key has 9 or
/// fewer about once in a hundred million).
const MIN_DISTINCT_BYTES: usize = 10;

impl GuacamoleKey {
    /// Why this key must not be used, if it must not: published in documentation, or plainly
    /// not random (all bytes equal, a short repeating pattern, a constant step like
    /// `00 01 02 …`, too few distinct bytes). Never quotes the key.
    pub fn weakness(&self) -> Option<&'static str> {
        let k = &self.0;
        if KNOWN_KEYS.contains(&hex::encode(k).as_str()) {
            return Some("is a key published in documentation (guacamole-auth-json's example)");
        }
        if (1..=8).any(|period| k.iter().skip(period).zip(k).all(|(a, b)| a == b)) {
            return Some("is a short pattern repeated, not random");
        }
        let step = k[1].wrapping_sub(k[0]);
        if k.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step) {
            return Some("counts up or down in equal steps, not random");
        }
        let distinct: std::collections::BTreeSet<u8> = k.iter().copied().collect();
        if distinct.len() < MIN_DISTINCT_BYTES {
            return Some("has too few distinct bytes to be random");
        }
        None
    }
}

/// Refuses a key file that others than its owner may read, as ssh does with a private key.
#[cfg(unix)]
fn check_private(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read guacamole.secret_key_file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "permissions {:04o} for guacamole.secret_key_file {} are too open: the key lets \
             anyone who reads it into every desktop; chmod 600 {}",
            mode & 0o7777,
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &std::path::Path) -> anyhow::Result<()> {
    Ok(())
}

/// A pool's Guacamole gateway, ready to make links.
#[derive(Debug)]
pub struct Gateway {
    url: String,
    key: GuacamoleKey,
    protocol: String,
    parameters: BTreeMap<String, String>,
    link_ttl: Duration,
    directory_user_prefix: String,
    local_user_prefix: String,
}

/// What `connect_info` and the portal hand out: open `url` to be signed into the desktop
/// through Guacamole, once, before `expires` (ms since the epoch, by the server's clock, as
/// Guacamole checks it), that is within `expires_in` seconds of receiving it.
#[derive(Debug, Clone, Serialize)]
pub struct GuacamoleLink {
    pub url: String,
    pub expires: u64,
    pub expires_in: u64,
}

/// guacamole-auth-json's user data: the user, the expiry, single use, one connection.
#[derive(Serialize)]
struct UserData<'a> {
    username: &'a str,
    expires: u64,
    #[serde(rename = "singleUse")]
    single_use: bool,
    connections: BTreeMap<&'a str, Connection<'a>>,
}

#[derive(Serialize)]
struct Connection<'a> {
    /// Random for every link: the sealing has no randomness of its own, and Guacamole refuses
    /// a used link by its signature, so two links asked for in one millisecond must differ.
    /// (Guacamole lets a connection be joined by this id only from a payload that names it in
    /// `join`, which takes the key to make.)
    id: String,
    protocol: &'a str,
    parameters: BTreeMap<&'a str, String>,
}

impl Gateway {
    /// The gateway a pool's `guacamole` table describes, its key read from the file or the
    /// environment variable it names.
    pub fn load(config: &GuacamoleConfig, pool: &PoolConfig) -> anyhow::Result<Self> {
        let url = config.url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('#') {
            bail!("guacamole.url must be an http(s) address without a fragment, got {url:?}");
        }
        if url.starts_with("http://") && !crate::domain::is_loopback_url(url) {
            tracing::warn!(
                pool = %pool.name,
                "guacamole.url is plain http: the sign-in data and the desktop travel \
                 unencrypted between the browser and Guacamole"
            );
        }
        let (text, source) = match (&config.secret_key_file, &config.secret_key_env) {
            (Some(path), None) => (
                {
                    check_private(path)?;
                    std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read guacamole.secret_key_file {}", path.display())
                    })?
                },
                format!("guacamole.secret_key_file {}", path.display()),
            ),
            (None, Some(var)) => (
                // Never `std::env::var`'s error: it quotes a value that is not UTF-8.
                match crate::process::var_os(var) {
                    None => bail!("guacamole.secret_key_env names {var}, which is not set"),
                    Some(v) => v.into_string().map_err(|_| {
                        anyhow::anyhow!(
                            "the environment variable {var} (guacamole.secret_key_env) is not \
                             UTF-8 text"
                        )
                    })?,
                },
                format!("the environment variable {var} (guacamole.secret_key_env)"),
            ),
            _ => bail!(
                "guacamole needs exactly one of secret_key_file and secret_key_env (the key is \
                 never written in the settings file)"
            ),
        };
        let key = GuacamoleKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{source} {e}"))?;
        if let Some(why) = key.weakness() {
            bail!("the key in {source} {why}: make one with `openssl rand -hex 16`");
        }
        let (directory, local) = (&config.directory_user_prefix, &config.local_user_prefix);
        if directory.is_empty() || local.starts_with(directory.as_str()) {
            bail!(
                "guacamole.directory_user_prefix must be set and local_user_prefix may not \
                 start with it, or a directory user could get a local user's Guacamole name"
            );
        }
        let protocol = match &config.protocol {
            Some(p) => p.clone(),
            None => {
                let has = |t: &str| pool.connection_types.iter().any(|c| c.contains(t));
                if has("RDP") {
                    "rdp".into()
                } else if has("VNC") {
                    "vnc".into()
                } else {
                    bail!(
                        "guacamole.protocol is needed: the pool's connection types {:?} name \
                         neither RDP nor VNC",
                        pool.connection_types
                    )
                }
            }
        };
        if !PROTOCOLS.contains(&protocol.as_str()) {
            bail!("guacamole.protocol must be one of {PROTOCOLS:?}, got {protocol:?}");
        }
        for fixed in ["hostname", "port"] {
            if config.parameters.contains_key(fixed) {
                bail!(
                    "guacamole.parameters may not set {fixed:?}: it is the machine's, from \
                     the connection data"
                );
            }
        }
        if !(LINK_TTL_MIN..=LINK_TTL_MAX).contains(&config.link_ttl) {
            bail!(
                "guacamole.link_ttl must be between {} and {} seconds",
                LINK_TTL_MIN.as_secs(),
                LINK_TTL_MAX.as_secs()
            );
        }
        Ok(Gateway {
            url: url.to_owned(),
            key,
            protocol,
            parameters: config.parameters.clone(),
            link_ttl: config.link_ttl,
            directory_user_prefix: config.directory_user_prefix.clone(),
            local_user_prefix: config.local_user_prefix.clone(),
        })
    }

    /// The Guacamole username of poolgate's user `name`: prefixed by where the user comes
    /// from, so a directory user and a local user of the same name are two Guacamole users.
    pub fn username(&self, name: &str, from_directory: bool) -> String {
        let prefix = if from_directory {
            &self.directory_user_prefix
        } else {
            &self.local_user_prefix
        };
        format!("{prefix}{name}")
    }

    /// Refuses a local user whose Guacamole name would start with the directory users'
    /// prefix (a local `ldap:alice` would be the directory's `alice`).
    pub fn check_local_user(&self, name: &str) -> anyhow::Result<()> {
        let guacamole = self.username(name, false);
        if guacamole.starts_with(&self.directory_user_prefix) {
            bail!(
                "the local user {name:?} would be {guacamole:?} in Guacamole, a name kept for \
                 directory users (directory_user_prefix {:?}): rename the user or set \
                 guacamole.local_user_prefix",
                self.directory_user_prefix
            );
        }
        Ok(())
    }

    /// A link signing `username` into `conn` (named `name` in Guacamole), made at `now_ms`.
    pub fn link(
        &self,
        username: &str,
        name: &str,
        conn: &ConnectionData,
        now_ms: u64,
    ) -> GuacamoleLink {
        let expires = now_ms.saturating_add(self.link_ttl.as_millis() as u64);
        let mut parameters: BTreeMap<&str, String> = self
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        parameters.insert("hostname", conn.host.clone());
        parameters.insert("port", conn.port.to_string());
        let data = UserData {
            username,
            expires,
            single_use: true,
            connections: BTreeMap::from([(
                name,
                Connection {
                    id: hex::encode(rand::random::<[u8; 16]>()),
                    protocol: &self.protocol,
                    parameters,
                },
            )]),
        };
        let json = serde_json::to_vec(&data).expect("strings and numbers serialize");
        let sealed = self.key.seal(&json);
        GuacamoleLink {
            url: format!(
                "{}#/?data={}",
                self.url,
                utf8_percent_encode(&sealed, NON_ALPHANUMERIC)
            ),
            expires,
            expires_in: self.link_ttl.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of guacamole-auth-json's README (1.5.2): this JSON, under key
    /// 4C0B569E4C96DF157EEE1B65DD0E4D41, is what its `encrypt-json.sh` turns into `EXPECTED`.
    fn conn() -> ConnectionData {
        serde_json::from_value(serde_json::json!({
            "id": "bc4f9e45-6b5a-41e6-bb85-ae91f4b8c413", "verbose_name": "m",
            "permissions": [], "host": "10.0.0.1", "port": 3389, "status": "ACTIVE",
            "protocol_id": 1
        }))
        .unwrap()
    }

    /// Found by a hostile review: links asked for faster than one per millisecond used to
    /// push every later link's expiry past `link_ttl`.
    #[test]
    fn every_link_expires_link_ttl_after_it_is_made_and_no_two_are_the_same() {
        let var = "POOLGATE_TEST_GUACAMOLE_KEY_UNIT_BURST";
        // SAFETY: the only test that sets or reads this variable.
        unsafe { std::env::set_var(var, "9a8d6a7ecdb0804b2afbb9c1d0814442") };
        let gw = load("RDP", &format!("secret_key_env = \"{var}\", link_ttl = 10")).unwrap();
        let now = 1_700_000_000_000u64;
        let mut seen = std::collections::HashSet::new();
        for i in 0..2_000u64 {
            let at = now + i / 20;
            let link = gw.link("mallory", "p", &conn(), at);
            assert_eq!(link.expires, at + 10_000);
            assert!(seen.insert(link.url), "a link twice");
        }
    }

    /// Found by a hostile review: `std::env::var`'s error quotes a value that is not UTF-8.
    #[test]
    fn a_key_in_the_environment_that_is_not_text_is_never_quoted() {
        use std::os::unix::ffi::OsStrExt;
        let var = "POOLGATE_TEST_GUACAMOLE_KEY_UNIT_NON_UTF8";
        let value = std::ffi::OsStr::from_bytes(b"9a8d6a7ecdb0804b2afbb9c1d0814442\xff");
        // SAFETY: the only test that sets or reads this variable.
        unsafe { std::env::set_var(var, value) };
        let err = load("RDP", &format!("secret_key_env = \"{var}\"")).unwrap_err();
        let text = format!("{err:#}");
        assert!(!text.contains("9a8d6a7e"), "the key is quoted: {text}");
        assert!(text.contains("not UTF-8"), "{text}");
    }

    const EXAMPLE_JSON: &str = r#"{
  "username" : "test",
  "expires" : "1446323765000",
  "connections" : {
    "My Connection" : {
      "protocol" : "rdp",
      "parameters" : {
        "hostname" : "10.10.209.63",
        "port" : "3389",
        "ignore-cert": "true",
        "recording-path": "/recordings",
        "recording-name": "My-Connection-${GUAC_USERNAME}-${GUAC_DATE}-${GUAC_TIME}"
      }
    },
    "My OTHER Connection" : {
      "protocol" : "rdp",
      "parameters" : {
        "hostname" : "10.10.209.64",
        "port" : "3389",
        "ignore-cert": "true",
        "recording-path": "/recordings",
        "recording-name": "My-OTHER-Connection-${GUAC_USERNAME}-${GUAC_DATE}-${GUAC_TIME}"
      }
    }
  }
}"#;

    const EXPECTED: &str = "\
A2Pf5Kpmm97I2DT1PifIrfU6q3yzoGcIbNXEd60WNangT8DAVjAl6luaqwhBJnCK\
uqcf9ZZlRo3uDxTHvUM3eq1YvdghL0GbosOn8Mn38j2ydOMk+Cd15a8ggb4/ddt/\
yIBK4DxrN7MNbouZ091KYtXC6m20E6sGzLy676BlMSg1cmsENRIihOynsSLSCvo0\
diif6H7T+ZuIqF7B5SW+adGfMaHlfknlIvSpLGHhrIP4aMYE/ZU2vYNg8ez27sCS\
wDBWu5lERtfCYFyU4ysjRU5Hyov+yKa+O7jcRYpw3N+fHbCg7/dxVNW07qNOKssv\
pzUciGvDPUCPpa02WmPJNEBowwQireO1952/MNAI77cW2UepbljD/bwOiZl2THJz\
LrENo7K5acimBa+EjWEesgn7lx/WTCF3zxR6TH1CWrQM8Et1aUK1Nf8K11xEQbTy\
klyaNtCmTfyahRZ/fUPxDNrdJVpPOSELkf7RJO5tOdK/FFIFIbze3ZUyXgRq+pHY\
owpgOmudDBTBlxhXiONdutRI/RZbFM/7GBMdmI8AR/401OCV3nsI4jLhukjMXH3V\
f3pQg+xKMhi/QExHhDk8VTNYk7GurK4vgehn7HQ0oSGh8pGcmxB6W43cz+hyn6VQ\
On6i90cSnIhRO8SysZt332LwJCDm7I+lBLaI8NVHU6bnAY1Axx5oH3YTKc4qzHls\
HEAFYLkD6aHMvHkF3b798CMravjxiJV3m7hsXDbaFN6AFhn8GIkMRRrjuevfZ+q9\
enWN14s24vt5OVg69DljzALobUNKUXFx69SR8EpSBvUcKq8s/OgbDpFvKbwsDY57\
HGT4T0CuRIA0TGUI075uerKBNApVhuBA1BmWJIrI4JXw5MuX6pdBe+MYccO3vfo+\
/frazj8rHdkDa/IbueMbvq+1ozV2+UuxrbaTrV2i4jSRgd74U0QzOh9e8Q0i7vOi\
l3hnIfOfg+v1oULmZmJSeiAYWxeGvPptp+n7rNFqHGM=";

    #[test]
    fn sealing_matches_the_extensions_own_worked_example() {
        let key = GuacamoleKey::from_hex("4C0B569E4C96DF157EEE1B65DD0E4D41").unwrap();
        assert_eq!(key.seal(EXAMPLE_JSON.as_bytes()), EXPECTED);
    }

    #[test]
    fn a_key_is_32_hex_digits_and_its_text_is_never_repeated() {
        assert!(GuacamoleKey::from_hex(" 4c0b569e4c96df157eee1b65dd0e4d41\n").is_ok());
        for bad in [
            "",
            "4c0b569e4c96df157eee1b65dd0e4d4",
            "4c0b569e4c96df157eee1b65dd0e4d41aa",
        ] {
            assert!(GuacamoleKey::from_hex(bad).is_err(), "{bad:?}");
        }
        let err = GuacamoleKey::from_hex("zz0b569e4c96df157eee1b65dd0e4d41").unwrap_err();
        assert!(!err.contains("zz0b"));
        let key = GuacamoleKey::from_hex("4c0b569e4c96df157eee1b65dd0e4d41").unwrap();
        assert!(!format!("{key:?}").contains("4c"));
    }

    /// A pool of `types` whose `guacamole` table holds `table` after the url.
    fn load(types: &str, table: &str) -> anyhow::Result<Gateway> {
        let pool: PoolConfig = toml::from_str(&format!(
            r#"
            id = "bc4f9e45-6b5a-41e6-bb85-ae91f4b8c413"
            name = "p"
            pool_type = "AUTOMATED"
            os_type = "Linux"
            connection_types = ["{types}"]
            guacamole = {{ url = "https://g/", {table} }}
            "#
        ))
        .unwrap();
        Gateway::load(pool.guacamole.as_ref().unwrap(), &pool)
    }

    #[test]
    fn a_gateway_needs_one_key_source_a_known_protocol_and_leaves_the_address_alone() {
        let var = "POOLGATE_TEST_GUACAMOLE_KEY_UNIT";
        // SAFETY: the only test that sets or reads this variable.
        unsafe { std::env::set_var(var, "9a8d6a7ecdb0804b2afbb9c1d0814442") };
        let key = format!("secret_key_env = \"{var}\"");
        assert_eq!(load("RDP", &key).unwrap().protocol, "rdp");
        assert_eq!(load("VNC", &key).unwrap().protocol, "vnc");
        let vnc = format!("protocol = \"vnc\", {key}");
        assert_eq!(load("GLINT", &vnc).unwrap().protocol, "vnc");
        for (table, says) in [
            (key.clone(), "guacamole.protocol is needed"),
            ("secret_key_env = \"POOLGATE_TEST_UNSET\"".into(), "not set"),
            ("link_ttl = 60".into(), "exactly one"),
            (format!("secret_key_file = \"/k\", {key}"), "exactly one"),
            (format!("protocol = \"spice\", {key}"), "must be one of"),
            (
                format!("protocol = \"rdp\", parameters = {{ port = \"1\" }}, {key}"),
                "may not set",
            ),
            (
                format!("protocol = \"rdp\", link_ttl = 1, {key}"),
                "link_ttl",
            ),
        ] {
            let err = format!("{:#}", load("GLINT", &table).unwrap_err());
            assert!(err.contains(says), "{table}: {err}");
        }
    }
}
