//! TLS for the host's listeners, by rustls (no OpenSSL): TLS 1.3 and 1.2 only, with rustls's
//! suites (AEAD ciphers with forward secrecy; no NULL, EXPORT, RC4, 3DES or CBC), ALPN, and for
//! mTLS client certificates that must chain to a given CA. The files are re-read while the host
//! serves (cert-manager and systemd credential rotation): each new connection takes the newest
//! configuration that loaded, connections already open keep theirs, and files that do not load
//! (a key half-written) leave the last good configuration serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// ALPN of an HTTP listener: HTTP/2 preferred, HTTP/1.1 for the rest.
pub const ALPN_HTTP: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN of the gRPC listener: gRPC is HTTP/2 only.
pub const ALPN_GRPC: [&[u8]; 1] = [b"h2"];

/// How often the files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Where a listener's certificate chain, private key and (for mTLS) client CA come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None`: none is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Why a listener's TLS files cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the {what} {} holds no PEM {expected}", path.display())]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("the {what} {} is not valid PEM: {source}", path.display())]
    Pem { what: &'static str, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the TLS key {} cannot serve the certificate {}: {source}", key.display(), cert.display())]
    Key { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("the client CA {} holds a certificate that is not a CA's: {source}", path.display())]
    ClientCaCertificate { path: PathBuf, source: rustls::Error },
    #[error("the client CA {} cannot verify client certificates: {source}", path.display())]
    ClientCa { path: PathBuf, source: rustls::server::VerifierBuilderError },
    #[error(
        "--admin-client-ca needs TLS on the admin listener: give --tls-cert and --tls-key (or --admin-tls-cert and --admin-tls-key)"
    )]
    ClientCaWithoutTls,
}

/// The certificate files of every listener as `up`'s options name them (each a chain and its
/// key): the public pair serves the admin and gRPC listeners too, unless they have their own.
#[derive(Clone, Debug, Default)]
pub struct ListenerCerts {
    pub public: Option<(PathBuf, PathBuf)>,
    pub admin: Option<(PathBuf, PathBuf)>,
    /// Admin clients must present a certificate chained to this CA (mTLS).
    pub admin_client_ca: Option<PathBuf>,
    pub grpc: Option<(PathBuf, PathBuf)>,
}

impl ListenerCerts {
    /// The public listener's TLS; `None` for plain HTTP.
    pub fn public(&self) -> Result<Option<Tls>, TlsError> {
        self.load(None, None, &ALPN_HTTP, "public")
    }

    /// The admin listener's TLS, with mTLS when a client CA is given (which needs TLS).
    pub fn admin(&self) -> Result<Option<Tls>, TlsError> {
        let client_ca = self.admin_client_ca.as_ref();
        let tls = self.load(self.admin.as_ref(), client_ca, &ALPN_HTTP, "admin")?;
        if tls.is_none() && client_ca.is_some() {
            return Err(TlsError::ClientCaWithoutTls);
        }
        Ok(tls)
    }

    /// The gRPC listener's TLS (HTTP/2 only).
    pub fn grpc(&self) -> Result<Option<Tls>, TlsError> {
        self.load(self.grpc.as_ref(), None, &ALPN_GRPC, "grpc")
    }

    fn load(
        &self,
        own: Option<&(PathBuf, PathBuf)>,
        client_ca: Option<&PathBuf>,
        alpn: &[&[u8]],
        listener: &'static str,
    ) -> Result<Option<Tls>, TlsError> {
        let Some((cert, key)) = own.or(self.public.as_ref()) else {
            return Ok(None);
        };
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.cloned() };
        Tls::load(files, alpn, listener).map(Some)
    }
}

/// A listener's TLS configuration, re-read when its files change (`watch`).
#[derive(Clone)]
pub struct Tls {
    shared: Arc<Reloading>,
}

struct Reloading {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    /// The listener's name, for logs and metrics.
    listener: &'static str,
    current: RwLock<Arc<ServerConfig>>,
    /// The sha256 of the files' contents that made `current`, and of the last ones that failed
    /// (logged once, not at every check).
    digests: Mutex<(Digest32, Option<Digest32>)>,
}

type Digest32 = [u8; 32];

impl Tls {
    /// Loads `files` for `listener` (a name for the logs), offering `alpn`.
    pub fn load(files: TlsFiles, alpn: &[&[u8]], listener: &'static str) -> Result<Tls, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let read = read_files(&files)?;
        let config = server_config(&files, &read, &alpn)?;
        let shared = Reloading {
            files,
            alpn,
            listener,
            current: RwLock::new(Arc::new(config)),
            digests: Mutex::new((read.digest, None)),
        };
        Ok(Tls { shared: Arc::new(shared) })
    }

    /// Whether client certificates are required (mTLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.shared.files.client_ca.is_some()
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.shared.current.read().expect("not poisoned").clone()
    }

    /// Re-reads the files: `Ok(true)` when they changed and the new configuration now serves,
    /// `Ok(false)` when they are unchanged (or unchanged since they last failed).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let shared = &self.shared;
        let read = read_files(&shared.files)?;
        {
            let (current, failed) = *shared.digests.lock().expect("not poisoned");
            if read.digest == current || Some(read.digest) == failed {
                return Ok(false);
            }
        }
        match server_config(&shared.files, &read, &shared.alpn) {
            Ok(config) => {
                *shared.current.write().expect("not poisoned") = Arc::new(config);
                *shared.digests.lock().expect("not poisoned") = (read.digest, None);
                Ok(true)
            }
            Err(e) => {
                shared.digests.lock().expect("not poisoned").1 = Some(read.digest);
                Err(e)
            }
        }
    }

    /// Checks the files every `interval` while this configuration is in use (a task that ends
    /// once every clone is dropped), logging and counting each reload.
    pub fn watch(&self, interval: Duration) {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                let listener = shared.listener;
                let tls = Tls { shared };
                let outcome = tokio::task::spawn_blocking(move || tls.reload()).await;
                let outcome = match outcome {
                    Ok(Ok(false)) => continue,
                    Ok(Ok(true)) => {
                        tracing::info!(listener, "TLS certificate files changed: new connections use them");
                        "ok"
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(
                            listener,
                            "TLS files changed but cannot serve; the previous ones still do: {e}"
                        );
                        "failed"
                    }
                    Err(e) => {
                        tracing::warn!(listener, "TLS reload task: {e}");
                        "failed"
                    }
                };
                metrics::counter!("edgeinfer_tls_reloads_total", "listener" => listener, "outcome" => outcome)
                    .increment(1);
            }
        });
    }

    /// The TLS handshake on an accepted connection, with the newest configuration.
    pub async fn handshake(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsAcceptor::from(self.config()).accept(stream).await
    }

    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.shared.listener
    }
}

/// The files' contents and their digest.
struct Read {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    digest: Digest32,
}

fn read_files(files: &TlsFiles) -> Result<Read, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
    };
    let cert = read("TLS certificate", &files.cert)?;
    let key = read("TLS key", &files.key)?;
    let client_ca = files.client_ca.as_deref().map(|path| read("client CA", path)).transpose()?;
    let mut hasher = Sha256::new();
    for part in [Some(&cert), Some(&key), client_ca.as_ref()].into_iter().flatten() {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    Ok(Read { cert, key, client_ca, digest: hasher.finalize().into() })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, path: path.to_path_buf(), source })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "certificate" });
    }
    Ok(certificates)
}

/// The rustls configuration of `read`: TLS 1.3 and 1.2 with the aws-lc-rs provider's suites.
fn server_config(files: &TlsFiles, read: &Read, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let chain = certificates("TLS certificate", &files.cert, &read.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read.key).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what: "TLS key", path: files.key.clone(), expected: "private key" }
        }
        source => TlsError::Pem { what: "TLS key", path: files.key.clone(), source },
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3");
    let builder = match (&files.client_ca, &read.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates("client CA", path, pem)? {
                roots
                    .add(certificate)
                    .map_err(|source| TlsError::ClientCaCertificate { path: path.clone(), source })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa { path: path.clone(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|source| TlsError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgeinfer-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn unreadable_or_empty_files_are_named_in_the_error() {
        let dir = temp_dir("errors");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: None };
        let missing = Tls::load(files.clone(), &ALPN_HTTP, "public").err().unwrap();
        assert!(matches!(&missing, TlsError::Read { path, .. } if *path == cert), "{missing}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "").unwrap();
        let empty = Tls::load(files, &ALPN_HTTP, "public").err().unwrap();
        assert!(empty.to_string().contains("holds no PEM certificate"), "{empty}");
        assert!(empty.to_string().contains(&cert.display().to_string()), "{empty}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
