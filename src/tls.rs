//! TLS for `wss://` and `https://` on the same port: rustls (TLS 1.2 and 1.3 only, the ring
//! provider), certificates and key from PEM files. The server runs each handshake on the
//! connection's own task, under `http_header_timeout` (see `server`), so a client that opens a
//! socket and says nothing cannot hold up anyone else, nor its slot for long.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Makes ring the process's rustls crypto provider, before anything uses TLS. rustls picks a
/// process-wide default only when exactly one provider is compiled in; a build that links
/// another one too (a dependency's feature, a test tool's) would otherwise panic at the first
/// client connection. Called first thing by `main`; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS configuration of poolgate's clients (`connect`, `admin`, `user totp --directory`):
/// the system's trusted certificates, and those of `ca_file` (PEM) for a private CA.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(file) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .with_context(|| format!("--ca-file: cannot read {}", file.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("--ca-file: invalid PEM in {}", file.display()))?;
        if certs.is_empty() {
            anyhow::bail!(
                "--ca-file: {} holds no certificate (a PEM file with BEGIN CERTIFICATE blocks)",
                file.display()
            );
        }
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            anyhow::bail!(
                "--ca-file: no certificate of {} could be used",
                file.display()
            );
        }
    }
    if roots.is_empty() {
        anyhow::bail!(
            "no trusted certificates: the system has none (install ca-certificates) and no \
             --ca-file was given"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the TLS server configuration from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
