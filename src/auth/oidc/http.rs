//! The HTTP client that talks to the provider: rustls, the bundled web roots plus `ca_file`,
//! short timeouts, and redirects never followed (a redirect is an answer, not a hop: a
//! provider's discovery or token endpoint that redirects is misconfigured or hijacked).

use anyhow::Context;
use openidconnect::{DiscoveryError, HttpClientError, reqwest};

use super::error::{OidcError, outside_text, unreachable};
use super::settings::OidcSettings;

/// The client for `settings`: every request ends within `oidc.timeout`.
pub fn client(settings: &OidcSettings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("poolgate/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read oidc.ca_file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("oidc.ca_file {} is not PEM", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("oidc.ca_file {} holds no certificate", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .context("cannot build the HTTP client for oidc")
}

/// A failed request (reqwest's, or openidconnect's wrapping of it).
pub fn request_error(what: &'static str, error: HttpClientError<reqwest::Error>) -> OidcError {
    match error {
        HttpClientError::Reqwest(e) => unreachable(what, &e),
        HttpClientError::Io(e) => OidcError::Unreachable {
            what,
            reason: e.kind().to_string(),
        },
        HttpClientError::Http(_) | HttpClientError::Other(_) => OidcError::Unreachable {
            what,
            reason: "the request could not be made".into(),
        },
        _ => OidcError::Unreachable {
            what,
            reason: "the request failed".into(),
        },
    }
}

/// A failed fetch of the discovery document or of the keys.
pub fn discovery_error(
    what: &'static str,
    error: DiscoveryError<HttpClientError<reqwest::Error>>,
) -> OidcError {
    match error {
        DiscoveryError::Request(e) => request_error(what, e),
        DiscoveryError::Response(status, _, _) if status.is_redirection() => {
            OidcError::BadDiscovery(format!(
                "the {what} request was answered with a redirect (HTTP {status}), which poolgate \
                 does not follow: check oidc.issuer (exact, with or without a trailing slash as \
                 the provider writes it)"
            ))
        }
        DiscoveryError::Response(status, _, _) if !status.is_success() => {
            OidcError::BadDiscovery(format!("the {what} request was answered HTTP {status}"))
        }
        DiscoveryError::Response(status, _, detail) => OidcError::BadDiscovery(format!(
            "the {what} request was answered HTTP {status}, but {}",
            outside_text(&detail)
        )),
        DiscoveryError::Parse(e) => OidcError::BadDiscovery(format!(
            "the {what} answer is not valid JSON of the expected form (at {})",
            e.path()
        )),
        DiscoveryError::Validation(m) => OidcError::BadDiscovery(m),
        DiscoveryError::UrlParse(e) => OidcError::BadDiscovery(format!("{what}: {e}")),
        DiscoveryError::Other(m) => OidcError::BadDiscovery(format!("{what}: {m}")),
        _ => OidcError::BadDiscovery(format!("{what}: unusable")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_file_must_be_readable_pem_with_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = OidcSettings::new("https://idp.example.com", "pg");
        client(&settings).unwrap();
        let file = dir.path().join("ca.pem");
        settings.ca_file = Some(file.clone());
        let e = format!("{:#}", client(&settings).unwrap_err());
        assert!(e.contains("cannot read oidc.ca_file"), "{e}");
        std::fs::write(&file, "no certificate here\n").unwrap();
        let e = format!("{:#}", client(&settings).unwrap_err());
        assert!(
            e.contains("holds no certificate") || e.contains("is not PEM"),
            "{e}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["idp.example.com".into()]).unwrap();
        std::fs::write(&file, ca.cert.pem()).unwrap();
        client(&settings).unwrap();
    }
}
