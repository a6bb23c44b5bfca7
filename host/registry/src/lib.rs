//! Apps as OCI artifacts, in Spin's format, so that `spin registry push` / `spin up -f REF` and
//! `edgeinfer registry push` / `edgeinfer up -f REF` exchange apps through any OCI registry.
//!
//! The layout (Spin's `crates/oci/src/client.rs`): an OCI image manifest whose config is an OCI
//! image config (`architecture: wasm`, `os: Wasip1`, label `com.fermyon.spin.lockedAppDigest`),
//! one layer per Wasm binary (`application/vnd.wasm.content.layer.v1+wasm`), one per file
//! (`...+data`; files of 128 bytes or less travel inline in the lock), and the locked app
//! ([`locked`]) as the `application/vnd.fermyon.spin.application.v1+config` layer.
//!
//! Our push keeps each component's dependencies as their own layers (Spin composes them at load;
//! our host provides wasi:nn natively instead of the app's provider) and adds one layer of its own,
//! the runtime config and the model files it names ([`HOST_CONFIG_MEDIA_TYPE`]), which Spin
//! stores and ignores. A pull verifies every blob's digest into a content-addressed cache and lays
//! the app out as a directory with a spin.toml the host serves like any other.
//!
//! `push` also carries the components `edgeinfer build --precompile` compiled, one layer per
//! component and target ([`edgeinfer_config::precompiled::MEDIA_TYPE`], annotated with the
//! wasmtime version, target and engine profile); Spin stores them as data. A pull fetches only
//! those compiled for the puller (`Connection::precompiled_for`), and only from an artifact whose
//! signature it verified: native code is never taken from an unsigned artifact.

mod bounded;
pub mod files;
pub mod locked;
mod pull;
mod push;
pub mod signature;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oci_client::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

pub use pull::{FetchedComponent, PrecompiledLayer, Pulled, fetch_component, fetch_layer, locked_app, pull};
pub use push::{Pushed, push, sign};
pub use signature::Untrusted;

/// The locked app (spin.lock) layer.
pub const SPIN_APPLICATION_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// A Wasm component layer.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// A Wasm binary pushed by `wkg` (accepted on pull).
pub const WASM_LAYER_MEDIA_TYPE_WKG: &str = "application/wasm";
/// A file of a component.
pub const DATA_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+data";
/// Spin's tar.gz bundle of a component's files (apps of more than 500 layers).
pub const ARCHIVE_MEDIA_TYPE: &str = "application/vnd.wasm.content.bundle.v1.tar+gzip";
/// Ours: the runtime config and the app-relative files it names (models, tokenizers), as JSON.
pub const HOST_CONFIG_MEDIA_TYPE: &str = "application/vnd.edgeinfer.host-config.v1+json";
/// The OCI image config's label that carries the locked app's digest.
pub const LOCKED_APP_DIGEST_LABEL: &str = "com.fermyon.spin.lockedAppDigest";

/// How to reach a registry: transport and credentials.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Plain HTTP (a local or test registry), as Spin's `--insecure`.
    pub insecure: bool,
    /// A PEM file of extra CA certificates to trust for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Explicit credentials; else the Docker config's for the registry; else anonymous.
    pub credentials: Option<Credentials>,
    /// The registry (`host[:port]`) `insecure` and `credentials` are for; others get HTTPS and the
    /// Docker config's credentials, so that a reference inside an artifact (an `oci://` model of
    /// its runtime config) never receives them. None: every registry.
    pub scope: Option<String>,
    /// The keys an artifact must be signed by to be pulled (cosign's signatures beside it, see
    /// `signature`); `None`: none is checked.
    pub trusted: Option<std::sync::Arc<edgeinfer_trust::TrustedKeys>>,
    /// The engine whose precompiled components a pull fetches (same wasmtime version and target;
    /// the engine hash is compared when the code is imported), from signed artifacts only;
    /// `None`: none.
    pub precompiled_for: Option<edgeinfer_config::precompiled::EngineProfile>,
}

/// A request that no registry could fulfil (a tag where a digest is needed, a component the
/// artifact lacks, a malformed reference): the caller's mistake, not the registry's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// Why a component could not be fetched from an app artifact, sorted for the caller's answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request names what cannot be served (a tag, a component the artifact lacks).
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// No trusted key signed the artifact.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// The registry refused or could not be reached, or what it sent is not valid.
    #[error(transparent)]
    Registry(#[from] anyhow::Error),
}

/// Credentials given on the command line or in the environment.
#[derive(Clone)]
pub enum Credentials {
    /// HTTP basic (user name and password), also used to get a token where the registry asks.
    Basic { username: String, password: String },
    /// A bearer token sent as it is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

/// A parsed reference (`host[:port]/repository[:tag][@sha256:...]`).
pub fn parse_reference(text: &str) -> Result<Reference, InvalidRequest> {
    let text = text.strip_prefix("oci://").unwrap_or(text);
    text.parse::<Reference>().map_err(|e| {
        InvalidRequest(format!(
            "{text:?} is not a registry reference (host/repository:tag or @sha256:...): {e}"
        ))
    })
}

/// Whether `text` names an artifact in a registry rather than a file: it is not an existing path,
/// and its first segment is a registry host (has a dot or a port, or is `localhost`).
pub fn looks_like_reference(text: &str) -> bool {
    if text.starts_with("oci://") {
        return true;
    }
    if Path::new(text).exists() || text.ends_with(".toml") || text.starts_with(['.', '/']) {
        return false;
    }
    match text.split_once('/') {
        Some((host, rest)) => {
            !rest.is_empty() && (host.contains('.') || host.contains(':') || host == "localhost")
        }
        None => false,
    }
}

impl Connection {
    /// A connection to every registry (`scope` none, nothing trusted): `insecure` (plain HTTP),
    /// extra CAs from `ca_file`, and credentials from a user name and password, or a token.
    pub fn new(
        insecure: bool,
        ca_file: Option<PathBuf>,
        basic: Option<(String, String)>,
        token: Option<String>,
    ) -> Connection {
        let credentials = match (basic, token) {
            (Some((username, password)), _) => Some(Credentials::Basic { username, password }),
            (None, Some(token)) => Some(Credentials::Bearer(token)),
            (None, None) => None,
        };
        Connection { insecure, ca_file, credentials, scope: None, trusted: None, precompiled_for: None }
    }

    /// This connection scoped to the registry of `reference` (what `-f REF` names).
    pub fn scoped_to(mut self, reference: &str) -> Result<Connection> {
        self.scope = Some(parse_reference(reference)?.resolve_registry().to_string());
        Ok(self)
    }

    /// Whether the explicit settings apply to `reference`'s registry.
    fn applies_to(&self, reference: &Reference) -> bool {
        self.scope.as_deref().is_none_or(|scope| scope == reference.resolve_registry())
    }

    /// The OCI client for this connection.
    fn client(&self, reference: &Reference) -> Result<oci_client::Client> {
        let mut config = ClientConfig {
            protocol: if self.insecure && self.applies_to(reference) {
                ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        if let Some(path) = &self.ca_file {
            let data =
                std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
            config.extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        Ok(oci_client::Client::new(config))
    }

    /// The credentials for `reference`'s registry: explicit ones, else the Docker config's
    /// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else anonymous.
    fn auth(&self, reference: &Reference) -> Result<RegistryAuth> {
        let explicit = self.credentials.as_ref().filter(|_| self.applies_to(reference));
        match explicit {
            Some(Credentials::Basic { username, password }) => {
                Ok(RegistryAuth::Basic(username.clone(), password.clone()))
            }
            Some(Credentials::Bearer(token)) => Ok(RegistryAuth::Bearer(token.clone())),
            None => docker_config_auth(reference.resolve_registry()),
        }
    }
}

/// The `auths` entry of the Docker config for `registry`, if there is one.
fn docker_config_auth(registry: &str) -> Result<RegistryAuth> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".docker/config.json"),
            None => return Ok(RegistryAuth::Anonymous),
        },
    };
    docker_config_auth_in(&path, registry)
}

/// The `auths` entry for `registry` of the Docker config file at `path`, if there is one.
fn docker_config_auth_in(path: &std::path::Path, registry: &str) -> Result<RegistryAuth> {
    use base64::Engine;
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    // Keys are `host[:port]`, sometimes written as a URL.
    let entry = auths.iter().find(|(key, _)| {
        let key = key.trim_start_matches("https://").trim_start_matches("http://");
        key.split('/').next() == Some(registry)
    });
    let Some((_, entry)) = entry else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = entry.get("registrytoken").and_then(|t| t.as_str()) {
        return Ok(RegistryAuth::Bearer(token.to_string()));
    }
    let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) else {
        tracing::warn!(
            "{}: the entry for {registry} has no `auth` (credential helpers are not supported: pass \
             --registry-username/--registry-password); pulling anonymously",
            path.display()
        );
        return Ok(RegistryAuth::Anonymous);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .with_context(|| {
            format!("{}: the `auth` of {registry} is not base64 of user:password", path.display())
        })?;
    let (username, password) = decoded
        .split_once(':')
        .with_context(|| format!("{}: the `auth` of {registry} is not user:password", path.display()))?;
    Ok(RegistryAuth::Basic(username.to_string(), password.to_string()))
}

/// `sha256:<hex>` of `bytes`.
fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file, read in pieces.
fn digest_of_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The hex part of `sha256:<hex>`, checked, so that it is safe as a file name.
fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => bail!("unsupported digest {digest:?} (expected sha256:<64 hex digits>)"),
    }
}

/// A relative path that stays inside the directory it is joined to (no root, no `..`).
fn safe_relative(path: &str) -> Result<&Path> {
    let relative = Path::new(path);
    let ok = !path.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    anyhow::ensure!(ok, "path {path:?} leaves the app directory");
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_paths_are_told_apart() {
        assert!(looks_like_reference("127.0.0.1:5000/app:v1"));
        assert!(looks_like_reference("registry.example/team/app@sha256:abc"));
        assert!(looks_like_reference("localhost/app:v1"));
        assert!(looks_like_reference("oci://app:v1"));
        assert!(!looks_like_reference("spin.toml"));
        assert!(!looks_like_reference("tests/apps/llm/spin.toml"));
        assert!(!looks_like_reference("app"));
        assert!(!looks_like_reference("./app.v2/x"));
        assert!(!looks_like_reference("../apps/x"));
        let reference = parse_reference("127.0.0.1:5000/edgeinfer/app:v1").unwrap();
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "edgeinfer/app");
        assert_eq!(reference.tag(), Some("v1"));
    }

    #[test]
    fn digests_and_paths_are_checked_before_they_name_files() {
        let digest = digest_of(b"abc");
        assert_eq!(digest, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(digest_hex(&digest).is_ok());
        assert!(digest_hex("sha256:../../etc").is_err());
        assert!(digest_hex("md5:abc").is_err());
        assert!(safe_relative("model/tokenizer.json").is_ok());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("a/../../x").is_err());
    }

    #[test]
    fn inline_content_is_unpadded_base64_as_spin_writes_it() {
        assert_eq!(locked::encode_inline(b"ab"), "YWI");
        assert_eq!(locked::decode_inline("YWI").unwrap(), b"ab");
        assert_eq!(locked::decode_inline("YWI=").unwrap(), b"ab", "padding accepted on reading");
    }

    #[test]
    fn explicit_credentials_and_insecure_go_to_their_registry_only() {
        let connection = Connection {
            insecure: true,
            credentials: Some(Credentials::Bearer("secret".into())),
            ..Connection::default()
        }
        .scoped_to("127.0.0.1:5000/team/app:v1")
        .unwrap();
        let ours = parse_reference("127.0.0.1:5000/team/model:v1").unwrap();
        let theirs = parse_reference("elsewhere.example/x/model:v1").unwrap();
        assert!(connection.applies_to(&ours) && !connection.applies_to(&theirs));
        assert!(matches!(connection.auth(&ours).unwrap(), RegistryAuth::Bearer(_)));
        let elsewhere = connection.auth(&theirs).unwrap();
        assert!(!matches!(elsewhere, RegistryAuth::Bearer(token) if token == "secret"));
    }

    #[test]
    fn docker_config_credentials_are_found_by_registry() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"auths": {{"https://127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        // The file is named, not put in $DOCKER_CONFIG: other tests of this process read it.
        let file = dir.path().join("config.json");
        let found = docker_config_auth_in(&file, "127.0.0.1:5000").unwrap();
        assert!(matches!(found, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret"));
        assert!(matches!(docker_config_auth_in(&file, "other:1").unwrap(), RegistryAuth::Anonymous));
    }
}
