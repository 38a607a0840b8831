//! Why a sign-in at the provider did not sign anyone in: one variant per cause an operator
//! acts on differently, each with a message a person can read. No message holds a secret, a
//! code or a token; text that came from outside (a callback's `error_description`) is cut
//! short and stripped of control characters first.

use openidconnect::reqwest;

/// What went wrong with a sign-in at the provider.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    /// The provider did not answer (refused, unreachable, timed out, TLS failed).
    #[error("the sign-in provider cannot be reached ({what}): {reason}")]
    Unreachable { what: &'static str, reason: String },
    /// The discovery document (or the key set) is missing, malformed or inconsistent.
    #[error("the sign-in provider's discovery document is unusable: {0}")]
    BadDiscovery(String),
    /// The ID token (or the callback's `iss`) names another issuer.
    #[error("the ID token comes from the wrong issuer: {0}")]
    WrongIssuer(String),
    /// The ID token is not meant for this client.
    #[error("the ID token is meant for another client: {0}")]
    WrongAudience(String),
    /// The ID token's `exp` has passed.
    #[error("the ID token has expired: {0}")]
    Expired(String),
    /// The ID token's `iat` lies in the future (beyond the allowed clock skew).
    #[error("the ID token is dated in the future: {0}")]
    NotYetValid(String),
    /// The ID token's `nonce` is not the one this sign-in sent.
    #[error("the ID token does not belong to this sign-in (nonce mismatch)")]
    NonceMismatch,
    /// The callback's `state` is not the one this sign-in sent.
    #[error("the provider's answer does not belong to this sign-in (state mismatch)")]
    StateMismatch,
    /// The sign-in waited too long at the provider.
    #[error("the sign-in took too long; start again")]
    LoginExpired,
    /// A sign-in for a device (`max_age=0`) came back without the person having signed in at
    /// the provider for it (no `auth_time`, or one before the sign-in began).
    #[error(
        "the sign-in provider did not ask you to sign in again for this device; start again \
         (an administrator may need to let the provider honour prompt=login / max_age)"
    )]
    NotFresh,
    /// The ID token is signed with an algorithm the provider did not advertise (or `none`).
    #[error("the ID token is signed with an algorithm that is not allowed: {0}")]
    DisallowedAlg(String),
    /// The ID token names a signing key the provider does not publish (after a re-fetch).
    #[error(
        "the ID token is signed with a key the provider does not publish (unknown kid, even after \
         fetching its keys again)"
    )]
    UnknownKid,
    /// The signature does not verify.
    #[error("the ID token's signature is not valid: {0}")]
    BadSignature(String),
    /// The person (or the provider's policy) refused at the provider.
    #[error("sign-in was refused at the provider (access_denied){}", described(.0))]
    AccessDenied(Option<String>),
    /// The provider's callback carried another error.
    #[error("the sign-in provider answered {error}{}", described(.description))]
    ProviderError {
        error: String,
        description: Option<String>,
    },
    /// The token endpoint refused the code (used already, expired, another client's).
    #[error("the sign-in provider refused the authorization code: {0}")]
    CodeRejected(String),
    /// The provider's answer lacks what poolgate needs (no ID token, no username claim).
    #[error("the sign-in provider's answer is incomplete: {0}")]
    Incomplete(String),
}

fn described(description: &Option<String>) -> String {
    description
        .as_deref()
        .map_or_else(String::new, |d| format!(": {d}"))
}

/// Text from outside fit for a message and a log line: printable, at most 200 characters.
pub(crate) fn outside_text(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Why a request to the provider failed, in words (reqwest's own text may hold a URL).
pub(crate) fn unreachable(what: &'static str, error: &reqwest::Error) -> OidcError {
    let reason = if error.is_timeout() {
        "it did not answer in time".to_owned()
    } else if error.is_connect() {
        let mut source: Option<&dyn std::error::Error> = Some(error);
        let mut deepest = String::from("connection failed");
        while let Some(e) = source {
            deepest = e.to_string();
            source = e.source();
        }
        format!("cannot connect: {}", outside_text(&deepest))
    } else if error.is_body() || error.is_decode() {
        "its answer was cut short".to_owned()
    } else {
        "the request failed".to_owned()
    };
    OidcError::Unreachable { what, reason }
}

impl OidcError {
    /// Whether the provider (not the person, not an attacker) is at fault: the caller's 503.
    pub fn is_provider_fault(&self) -> bool {
        matches!(
            self,
            OidcError::Unreachable { .. } | OidcError::BadDiscovery(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_short_and_printable() {
        let text = format!("bad\r\ninjected{}", "x".repeat(500));
        let clean = outside_text(&text);
        assert!(!clean.contains('\n') && !clean.contains('\r'));
        assert_eq!(clean.chars().count(), 200);
        assert_eq!(
            OidcError::AccessDenied(Some("User cancelled".into())).to_string(),
            "sign-in was refused at the provider (access_denied): User cancelled"
        );
        assert_eq!(
            OidcError::AccessDenied(None).to_string(),
            "sign-in was refused at the provider (access_denied)"
        );
    }
}
