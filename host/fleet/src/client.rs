//! The HTTP(S) client of the commands that talk to hosts' admin APIs (`deploy`, rollouts, `fleet
//! status`, `probe`): rustls with the system's CA certificates plus any given, and a client
//! certificate for admin APIs that ask for one (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How a client trusts hosts and proves itself to them.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// Extra PEM CA certificates to trust (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and its key, for hosts that require one (mTLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl ClientTls {
    /// A blocking client with these settings and a `timeout` per request.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::blocking::Client> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        // The system's store, as curl would trust; unreadable entries are skipped.
        let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &self.ca_file {
            let certificates = read_certificates(path)?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "the CA file {} holds no PEM certificate",
                path.display()
            );
            for certificate in certificates {
                roots.add(certificate).with_context(|| format!("the CA file {}", path.display()))?;
            }
        }
        tracing::debug!(system_roots = added, "trusting CA certificates");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert)?;
                anyhow::ensure!(
                    !chain.is_empty(),
                    "the client certificate {} holds no PEM certificate",
                    cert.display()
                );
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("cannot read the client key {}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .with_context(|| format!("the client key does not fit {}", cert.display()))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(reqwest::blocking::Client::builder().timeout(timeout).use_preconfigured_tls(config).build()?)
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read PEM certificates from {}", path.display()))
}

/// Whether plain `http://` to `url` would leave this machine: anything but a loopback address
/// or `localhost`.
pub fn plain_http_off_machine(url: &str) -> Result<bool> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
    if parsed.scheme() != "http" {
        return Ok(false);
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    Ok(!loopback)
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
    #[error("cannot be reached: {0}")]
    Unreachable(String),
}

/// Whether `url` answers 200 (a container's health check).
pub fn probe(client: &reqwest::blocking::Client, url: &str) -> Result<(), ProbeError> {
    match client.get(url).send() {
        Ok(response) if response.status() == reqwest::StatusCode::OK => Ok(()),
        Ok(response) => Err(ProbeError::Status(response.status())),
        Err(e) => Err(ProbeError::Unreachable(crate::admin::with_causes(&e))),
    }
}

/// Refuses plain `http://` to any of `hosts` off this machine (the admin token and what is sent
/// would cross the network readable and rewritable) unless `insecure`.
pub fn refuse_plain_http<'a>(hosts: impl IntoIterator<Item = &'a str>, insecure: bool) -> Result<()> {
    for host in hosts {
        if !insecure && plain_http_off_machine(host)? {
            anyhow::bail!(
                "refusing plain http:// to {host}: the admin token and the components would cross the network readable and rewritable; use https:// (with --ca-file for a private CA) or pass --insecure"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_off_machine_unless_loopback() {
        for local in [
            "http://127.0.0.1:3001",
            "http://127.9.9.9",
            "http://[::1]:80",
            "http://localhost:1",
            "https://10.0.0.7",
        ] {
            assert!(!plain_http_off_machine(local).unwrap(), "{local}");
        }
        for remote in ["http://10.0.0.7:3001", "http://edge-1.example:3001", "http://[2001:db8::1]/"] {
            assert!(plain_http_off_machine(remote).unwrap(), "{remote}");
        }
        assert!(plain_http_off_machine("not a url").is_err());
    }
}
