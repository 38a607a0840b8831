//! The identity an ID token vouches for, read from its claims once its signature and the
//! rest were checked.

use base64::Engine;
use openidconnect::IssuerUrl;
use openidconnect::core::CoreIdToken;
use serde_json::{Map, Value};

use super::error::{OidcError, outside_text};
use super::settings::OidcSettings;

/// Most groups read from a token (more is refused as the provider's error).
const MAX_GROUPS: usize = 1000;

/// A person the provider signed in, as its verified ID token says.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The provider (`iss`) and the person's stable identifier there (`sub`): together, who
    /// this is, whatever their username becomes.
    pub issuer: String,
    pub subject: String,
    /// The value of `oidc.username_claim`.
    pub username: String,
    /// The values of `oidc.groups_claim` (a string or an array of strings; none if absent).
    pub groups: Vec<String>,
    /// Whether a group of `oidc.admin_groups` is among them.
    pub admin: bool,
    /// How the person authenticated (`amr`), as the provider says.
    pub amr: Vec<String>,
    /// Whether the provider did a second factor that `trust_provider_mfa` lets stand in for
    /// poolgate's one-time code.
    pub provider_mfa: bool,
    /// The raw ID token, for RP-initiated logout's `id_token_hint`. Never shown by `Debug`.
    pub id_token_hint: Option<String>,
    /// When the person last signed in at the provider (`auth_time`, seconds), if it says.
    pub auth_time: Option<i64>,
}

impl std::fmt::Debug for VerifiedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedIdentity")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("username", &self.username)
            .field("groups", &self.groups)
            .field("admin", &self.admin)
            .field("amr", &self.amr)
            .field("provider_mfa", &self.provider_mfa)
            .finish_non_exhaustive()
    }
}

/// The identity of a verified `id_token`.
pub fn identity(
    settings: &OidcSettings,
    issuer: &IssuerUrl,
    id_token: &CoreIdToken,
) -> Result<VerifiedIdentity, OidcError> {
    let raw = id_token.to_string();
    let claims = payload(&raw)?;
    identity_from_claims(settings, issuer.as_str(), &claims, Some(raw))
}

/// The identity in `claims` (already verified).
fn identity_from_claims(
    settings: &OidcSettings,
    issuer: &str,
    claims: &Map<String, Value>,
    raw: Option<String>,
) -> Result<VerifiedIdentity, OidcError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OidcError::Incomplete("the ID token has no sub".into()))?;
    let username = claims
        .get(&settings.username_claim)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            OidcError::Incomplete(format!(
                "the ID token has no {:?} claim (oidc.username_claim) with a text value; the \
                 provider must release it to this client, or name another claim",
                settings.username_claim
            ))
        })?;
    if username.len() > crate::auth::MAX_USERNAME_BYTES {
        return Err(OidcError::Incomplete(format!(
            "the {:?} claim is longer than {} bytes",
            settings.username_claim,
            crate::auth::MAX_USERNAME_BYTES
        )));
    }
    let groups = strings(claims.get(&settings.groups_claim), &settings.groups_claim)?;
    let amr = strings(claims.get("amr"), "amr")?;
    let admin = groups.iter().any(|g| settings.admin_groups.contains(g));
    let provider_mfa =
        settings.trust_provider_mfa && amr.iter().any(|a| settings.mfa_amr_values.contains(a));
    Ok(VerifiedIdentity {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        username: username.to_owned(),
        groups,
        admin,
        amr,
        provider_mfa,
        id_token_hint: raw,
        auth_time: claims.get("auth_time").and_then(Value::as_i64),
    })
}

/// A claim that is a string or an array of strings (other members of the array are
/// skipped); absent or null is none.
fn strings(value: Option<&Value>, name: &str) -> Result<Vec<String>, OidcError> {
    let values: Vec<String> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return Err(OidcError::Incomplete(format!(
                "the ID token's {:?} claim is neither a string nor an array of strings",
                outside_text(name)
            )));
        }
    };
    if values.len() > MAX_GROUPS {
        return Err(OidcError::Incomplete(format!(
            "the ID token's {name:?} claim holds more than {MAX_GROUPS} values"
        )));
    }
    Ok(values)
}

/// The claims of a compact JWS (its middle part).
fn payload(raw: &str) -> Result<Map<String, Value>, OidcError> {
    let bad = || OidcError::Incomplete("the ID token's claims cannot be read".into());
    let part = raw.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(settings: &OidcSettings, claims: Value) -> Result<VerifiedIdentity, OidcError> {
        let Value::Object(map) = claims else {
            unreachable!()
        };
        identity_from_claims(settings, "https://idp.example.com", &map, None)
    }

    #[test]
    fn groups_are_a_string_or_an_array_and_admin_and_mfa_follow_the_settings() {
        let mut s = OidcSettings::new("https://idp.example.com", "pg");
        s.admin_groups = vec!["vdi-admins".into()];
        let id = read(
            &s,
            json!({"sub": "s1", "preferred_username": "ann", "groups": ["vdi-users", 3, "vdi-admins"], "amr": ["pwd", "mfa"]}),
        )
        .unwrap();
        assert_eq!((id.subject.as_str(), id.username.as_str()), ("s1", "ann"));
        assert_eq!(id.groups, ["vdi-users", "vdi-admins"]);
        assert!(id.admin);
        assert!(!id.provider_mfa, "not trusted unless trust_provider_mfa");
        s.trust_provider_mfa = true;
        let id = read(
            &s,
            json!({"sub": "s1", "preferred_username": "ann", "groups": "vdi-users", "amr": ["pwd", "otp"]}),
        )
        .unwrap();
        assert_eq!(id.groups, ["vdi-users"]);
        assert!(!id.admin);
        assert!(id.provider_mfa);
        let id = read(&s, json!({"sub": "s1", "preferred_username": "ann"})).unwrap();
        assert!(id.groups.is_empty() && !id.provider_mfa);
    }

    #[test]
    fn a_missing_username_or_odd_groups_are_refused_clearly() {
        let mut s = OidcSettings::new("https://idp.example.com", "pg");
        s.username_claim = "upn".into();
        let e = read(&s, json!({"sub": "s1", "preferred_username": "ann"})).unwrap_err();
        assert!(e.to_string().contains("no \"upn\" claim"), "{e}");
        let e = read(&s, json!({"upn": "ann"})).unwrap_err();
        assert!(e.to_string().contains("no sub"), "{e}");
        let e = read(&s, json!({"sub": "s", "upn": "ann", "groups": {"a": 1}})).unwrap_err();
        assert!(
            e.to_string().contains("neither a string nor an array"),
            "{e}"
        );
        let long = "x".repeat(crate::auth::MAX_USERNAME_BYTES + 1);
        assert!(read(&s, json!({"sub": "s", "upn": long})).is_err());
    }

    #[test]
    fn the_payload_of_a_compact_token_is_read() {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert_eq!(payload(&format!("h.{body}.s")).unwrap()["sub"], "x");
        assert!(payload("nodots").is_err());
        assert!(payload("h.!!!.s").is_err());
    }
}
