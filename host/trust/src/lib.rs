//! Who may put code on a host: components and apps signed with ECDSA P-256 (SHA-256) keys, in
//! the formats cosign uses, so that other tools verify what edgeinfer signs and the other way
//! round:
//! - a blob (a component's Wasm) has a detached signature: base64 of the DER signature over its
//!   bytes, what `cosign sign-blob --key` prints and `cosign verify-blob --key` checks;
//! - a registry artifact is signed through cosign's "simple signing" payload, which names its
//!   manifest digest; the payload and its signature live beside the artifact (`registry`).
//!
//! Keys are PEM: a private key as PKCS#8 (`openssl genpkey -algorithm EC -pkeyopt
//! ec_paramgen_curve:P-256`) or SEC1, a public key as SubjectPublicKeyInfo (`cosign.pub`,
//! `openssl pkey -pubout`).

use std::path::{Path, PathBuf};

use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey as P256SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};

/// The `type` cosign's simple-signing payload declares.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";

/// Why a key or a signature is refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the key {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a PEM ECDSA P-256 {what}", path.display())]
    Key { path: PathBuf, what: &'static str },
    #[error("no signature: this host runs only components signed by one of its trusted keys ({keys})")]
    Unsigned { keys: String },
    #[error("the signature is not base64 of a DER ECDSA signature")]
    Malformed,
    #[error("the signature does not verify with any trusted key ({keys})")]
    NotTrusted { keys: String },
    #[error("the signed payload is not cosign's simple signing for {expected}: {why}")]
    Payload { expected: String, why: String },
}

/// A private key that signs.
pub struct SigningKey {
    key: P256SigningKey,
}

impl SigningKey {
    /// Reads a PEM private key (PKCS#8 or SEC1, P-256).
    pub fn load(path: &Path) -> Result<SigningKey, TrustError> {
        let pem = read(path)?;
        let key = P256SigningKey::from_pkcs8_pem(&pem)
            .ok()
            .or_else(|| p256::SecretKey::from_sec1_pem(&pem).ok().map(P256SigningKey::from))
            .ok_or_else(|| TrustError::Key { path: path.to_path_buf(), what: "private key" })?;
        Ok(SigningKey { key })
    }

    /// The detached signature of `bytes`: base64 of the DER signature (`cosign sign-blob`'s).
    pub fn sign(&self, bytes: &[u8]) -> String {
        let signature: Signature = self.key.sign(bytes);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }
}

/// The public keys a host trusts, each named by its file (for logs and refusals).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// Reads PEM public keys (SubjectPublicKeyInfo, P-256).
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, TrustError> {
        let mut keys = Vec::new();
        for path in paths {
            let key = VerifyingKey::from_public_key_pem(&read(path)?)
                .map_err(|_| TrustError::Key { path: path.clone(), what: "public key" })?;
            let name = path
                .file_name()
                .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            keys.push((name, key));
        }
        Ok(TrustedKeys { keys })
    }

    /// Whether no key is trusted (then nothing is checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The fingerprint of the trusted key named `name`: sha256 of its uncompressed public point,
    /// in hex (what a cache may record to stand for a verification made with it).
    pub fn fingerprint(&self, name: &str) -> Option<String> {
        let (_, key) = self.keys.iter().find(|(n, _)| n == name)?;
        Some(fingerprint(key))
    }

    /// Whether a key of this fingerprint is trusted now.
    pub fn trusts(&self, fingerprint_hex: &str) -> bool {
        self.keys.iter().any(|(_, key)| fingerprint(key) == fingerprint_hex)
    }

    /// The trusted keys' names, for messages.
    pub fn names(&self) -> String {
        self.keys.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Checks a detached signature (`None`: none was given) of `bytes`; the name of the key that
    /// made it.
    pub fn verify(&self, bytes: &[u8], signature: Option<&str>) -> Result<&str, TrustError> {
        let signature = signature.ok_or_else(|| TrustError::Unsigned { keys: self.names() })?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| TrustError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| TrustError::Malformed)?;
        self.keys
            .iter()
            .find(|(_, key)| key.verify(bytes, &signature).is_ok())
            .map(|(name, _)| name.as_str())
            .ok_or_else(|| TrustError::NotTrusted { keys: self.names() })
    }

    /// Checks a signed simple-signing `payload` (its signature verifies, it names
    /// `manifest_digest`); the name of the key that signed it.
    pub fn verify_payload(
        &self,
        payload: &[u8],
        signature: &str,
        manifest_digest: &str,
    ) -> Result<&str, TrustError> {
        let key = self.verify(payload, Some(signature))?;
        let fail = |why: String| TrustError::Payload { expected: manifest_digest.to_string(), why };
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| fail(format!("not JSON: {e}")))?;
        let critical = &value["critical"];
        if critical["type"] != SIMPLE_SIGNING_TYPE {
            return Err(fail(format!("its type is {}", critical["type"])));
        }
        let named = critical["image"]["docker-manifest-digest"].as_str().unwrap_or_default();
        if named != manifest_digest {
            return Err(fail(format!("it names {named:?}")));
        }
        Ok(key)
    }
}

/// Cosign's simple-signing payload for the manifest `digest` of `repository` (`host/repo`).
pub fn simple_signing_payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": SIMPLE_SIGNING_TYPE,
        },
        "optional": null,
    }))
    .expect("a JSON value serialises")
}

fn fingerprint(key: &VerifyingKey) -> String {
    use sha2::Digest;
    let point = key.to_encoded_point(false);
    sha2::Sha256::digest(point.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Read { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed keys made once with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    /// for these tests (not secrets).
    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMennXnU6AHPmzvtl\n4HilZTPGP91a/TLumiCNcCajXEehRANCAASD993vN+8QI0/1TDRN4MHA5dJPRVXy\n/aGU0w3T+KOrqXwEkEzOhVllTUTdYi/I0ukStL6n4eMnjMI1kxzoMPBZ\n-----END PRIVATE KEY-----\n";
    const OTHER: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLbLalc6ZJ8+25vtB\nnhJojwUjefkv+ddF1vqDhbob0TyhRANCAAQ+1TLhBOgmuko5XyoTLSOxAfNCHOoR\noFaEqbLFGJTO3NQI2qf44lPz0B33/WyqDILoUyKe8abVNjB7Bh85QgOA\n-----END PRIVATE KEY-----\n";

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgeinfer-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_its_bytes() {
        use p256::pkcs8::EncodePublicKey;
        let key = SigningKey::load(&write("key.pem", PRIVATE)).unwrap();
        let public = key.key.verifying_key().to_public_key_pem(Default::default()).unwrap();
        let other = SigningKey::load(&write("other.pem", OTHER)).unwrap();
        let other_public = other.key.verifying_key().to_public_key_pem(Default::default()).unwrap();
        let trusted = TrustedKeys::load(&[write("key.pub", &public)]).unwrap();
        let signature = key.sign(b"component bytes");
        assert_eq!(trusted.verify(b"component bytes", Some(&signature)).unwrap(), "key.pub");
        assert!(matches!(
            trusted.verify(b"component byteS", Some(&signature)),
            Err(TrustError::NotTrusted { .. })
        ));
        assert!(matches!(trusted.verify(b"component bytes", None), Err(TrustError::Unsigned { .. })));
        assert!(matches!(
            trusted.verify(b"component bytes", Some("not base64!")),
            Err(TrustError::Malformed)
        ));
        let others = TrustedKeys::load(&[write("other.pub", &other_public)]).unwrap();
        assert!(matches!(
            others.verify(b"component bytes", Some(&signature)),
            Err(TrustError::NotTrusted { .. })
        ));
        // A payload must name the digest it is checked for.
        let payload = simple_signing_payload("registry.example/app", "sha256:aa");
        let signature = key.sign(&payload);
        assert!(trusted.verify_payload(&payload, &signature, "sha256:aa").is_ok());
        assert!(matches!(
            trusted.verify_payload(&payload, &signature, "sha256:bb"),
            Err(TrustError::Payload { .. })
        ));
        assert!(matches!(TrustedKeys::load(&[write("bad.pub", "nope")]), Err(TrustError::Key { .. })));
        // A fingerprint stands for its key alone.
        let fingerprint = trusted.fingerprint("key.pub").unwrap();
        assert!(trusted.trusts(&fingerprint) && !others.trusts(&fingerprint));
    }
}
