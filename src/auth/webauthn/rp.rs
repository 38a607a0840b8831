//! The WebAuthn relying party: its ID and the origins it accepts, from `public_url` and
//! `webauthn_origins` (or, without `public_url`, `localhost` and the listening port), checked
//! once by `check-config` and `serve` alike.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use webauthn_rs::prelude::Url;
use webauthn_rs::{Webauthn, WebauthnBuilder};

/// What the settings say of the relying party, before the port is known.
#[derive(Debug, Clone)]
pub struct RpSettings {
    /// `public_url` parsed: the RP ID is its host, it is the first allowed origin and the base
    /// of enrolment links. `None`: `localhost` and the listening port.
    public: Option<Url>,
    /// `webauthn_origins`: further origins whose pages may run the ceremonies.
    extra: Vec<Url>,
    pub name: String,
    /// How long a ceremony's challenge may be answered.
    pub ttl: Duration,
    /// Why security keys are off on this server, if they are: `public_url` names an IP
    /// address, which browsers refuse as a relying party ID (the rest of the server serves;
    /// `check-config` and `serve` warn).
    pub off: Option<String>,
}

impl RpSettings {
    /// Checks the settings: a relying party ID must be a domain name (browsers refuse an IP
    /// address), and each extra origin must be a page of it (its host or a subdomain), over
    /// https (or http on localhost).
    pub fn new(
        public_url: Option<&str>,
        origins: &[String],
        name: &str,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let public = public_url
            .map(|u| Url::parse(u).with_context(|| format!("public_url {u:?}")))
            .transpose()?;
        if let Some(url) = &public
            && let Err(why) = host_of(url, "public_url")
        {
            // An IP address: no security keys here, everything else as configured.
            return Ok(RpSettings {
                public: None,
                extra: Vec::new(),
                name: name.to_owned(),
                ttl,
                off: Some(format!("{why:#}")),
            });
        }
        let rp_id = match &public {
            Some(url) => host_of(url, "public_url")?,
            None => "localhost".to_owned(),
        };
        let mut extra = Vec::new();
        for origin in origins {
            let url = Url::parse(origin)
                .with_context(|| format!("webauthn_origins: {origin:?} is not an origin"))?;
            let host = host_of(&url, "webauthn_origins")?;
            if !(host == rp_id || host.ends_with(&format!(".{rp_id}"))) {
                bail!(
                    "webauthn_origins: {origin:?} is not a page of the relying party {rp_id:?} \
                     (the host of public_url, or localhost without it): a security key answers \
                     only for its own relying party, so list {rp_id} or its subdomains"
                );
            }
            if url.scheme() != "https" && host != "localhost" {
                bail!(
                    "webauthn_origins: {origin:?} must be https:// (browsers run WebAuthn only in a secure context)"
                );
            }
            extra.push(url);
        }
        if name.trim().is_empty() {
            bail!("rp_name must not be empty");
        }
        Ok(RpSettings {
            public,
            extra,
            name: name.to_owned(),
            ttl,
            off: None,
        })
    }

    /// The relying party of a server listening on `port` (with TLS or not), and the base URL
    /// of its enrolment links.
    pub fn build(&self, port: u16, tls: bool) -> anyhow::Result<(Webauthn, String)> {
        if let Some(why) = &self.off {
            bail!("security keys are off: {why}");
        }
        let (rp_id, mut origins, base) = match &self.public {
            Some(url) => {
                let base = url.origin().ascii_serialization();
                (host_of(url, "public_url")?, vec![url.clone()], base)
            }
            None => {
                let http = Url::parse(&format!("http://localhost:{port}"))?;
                let mut origins = vec![http.clone()];
                if tls {
                    origins.insert(0, Url::parse(&format!("https://localhost:{port}"))?);
                }
                let base = origins[0].origin().ascii_serialization();
                ("localhost".to_owned(), origins, base)
            }
        };
        origins.extend(self.extra.iter().cloned());
        let mut builder = WebauthnBuilder::new(&rp_id, &origins[0])
            .context("the relying party ID is not the host of its origin")?
            .rp_name(&self.name)
            .timeout(self.ttl);
        for origin in &origins[1..] {
            builder = builder.append_allowed_origin(origin);
        }
        Ok((builder.build()?, base))
    }
}

/// An origin's host, which must be a domain name.
fn host_of(url: &Url, key: &str) -> anyhow::Result<String> {
    let Some(host) = url.host_str() else {
        bail!("{key}: {url} has no host");
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        bail!(
            "{key}: {host} is an IP address, and browsers refuse an IP address as a WebAuthn \
             relying party ID, so security keys and passkeys could not be used: give the DNS \
             name people open (e.g. https://broker.example.com), or leave public_url out to use \
             http://localhost:PORT on this machine"
        );
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn an_ip_address_turns_keys_off_with_what_to_do() {
        let rp = RpSettings::new(Some("https://192.0.2.10:8443"), &[], "poolgate", TTL).unwrap();
        let why = rp.off.clone().expect("keys are off");
        assert!(
            why.contains("IP address") && why.contains("DNS name"),
            "{why}"
        );
        let e = rp.build(8443, true).unwrap_err().to_string();
        assert!(e.contains("security keys are off"), "{e}");
        let v6 = RpSettings::new(Some("https://[2001:db8::1]"), &[], "poolgate", TTL).unwrap();
        assert!(v6.off.is_some());
        let named = RpSettings::new(Some("https://vdi.example.com"), &[], "poolgate", TTL).unwrap();
        assert!(named.off.is_none());
    }

    #[test]
    fn extra_origins_must_be_pages_of_the_relying_party_over_https() {
        let public = Some("https://vdi.example.com");
        assert!(
            RpSettings::new(public, &["https://portal.vdi.example.com".into()], "p", TTL).is_ok()
        );
        assert!(RpSettings::new(public, &["https://evil.example.net".into()], "p", TTL).is_err());
        assert!(
            RpSettings::new(public, &["http://portal.vdi.example.com".into()], "p", TTL).is_err()
        );
    }

    #[test]
    fn without_public_url_the_relying_party_is_localhost_on_the_listening_port() {
        let rp = RpSettings::new(None, &[], "poolgate", TTL).unwrap();
        let (webauthn, base) = rp.build(8080, false).unwrap();
        assert_eq!(base, "http://localhost:8080");
        let origins: Vec<&str> = webauthn
            .get_allowed_origins()
            .iter()
            .map(|u| u.as_str())
            .collect();
        assert_eq!(origins, ["http://localhost:8080/"]);
        let (webauthn, base) = rp.build(8443, true).unwrap();
        assert_eq!(base, "https://localhost:8443");
        assert_eq!(webauthn.get_allowed_origins().len(), 2);
    }
}
