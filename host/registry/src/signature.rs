//! Cosign's key-based signatures beside an artifact: for the manifest `sha256:HEX` of
//! `host/repo`, an OCI image tagged `sha256-HEX.sig` in the same repository whose layer is the
//! simple-signing payload (`application/vnd.dev.cosign.simplesigning.v1+json`, naming that
//! digest) with its signature in the `dev.cosignproject.cosign/signature` annotation. That is
//! what `cosign sign --key` writes and `cosign verify --key` checks. The payload names the
//! manifest, the manifest names every layer by digest, and every layer is verified by digest as
//! it is pulled: one signature covers the whole app.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;

use crate::digest_of;
use edgeinfer_trust::{SigningKey, TrustedKeys, simple_signing_payload};

/// The media type of cosign's signed payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation carrying the payload's signature (base64 DER).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An artifact refused because no trusted key signed it (a client's request for code this host
/// will not run, not a registry failure).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);

/// The tag cosign keeps the signatures of manifest `digest` under: `sha256-HEX.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

fn signature_reference(reference: &Reference, digest: &str) -> Reference {
    Reference::with_tag(
        reference.registry().to_string(),
        reference.repository().to_string(),
        signature_tag(digest),
    )
}

/// Signs the manifest `digest` of `reference`'s repository with `key` and pushes the signature
/// beside it; the signature manifest's digest.
pub(crate) async fn push_signature(
    client: &oci_client::Client,
    reference: &Reference,
    digest: &str,
    key: &SigningKey,
) -> Result<String> {
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    let payload = simple_signing_payload(&repository, digest);
    let signature = key.sign(&payload);
    let payload_digest = digest_of(&payload);
    let payload_size = payload.len() as i64;
    client.push_blob(reference, payload, &payload_digest).await.context("cannot push the signed payload")?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
    }))?;
    let config_digest = digest_of(&config);
    let config_size = config.len() as i64;
    client
        .push_blob(reference, config, &config_digest)
        .await
        .context("cannot push the signature's config")?;
    let layer = OciDescriptor {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_string(),
        digest: payload_digest,
        size: payload_size,
        annotations: Some(BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signature)])),
        ..OciDescriptor::default()
    };
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest,
            size: config_size,
            ..OciDescriptor::default()
        },
        layers: vec![layer],
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let body = serde_json::to_vec(&manifest)?;
    let signed = digest_of(&body);
    let target = signature_reference(reference, digest);
    client
        .push_manifest_raw(
            &target,
            body,
            http::HeaderValue::from_static(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .with_context(|| format!("cannot push the signature {target}"))?;
    Ok(signed)
}

/// Checks that a trusted key signed the manifest `digest` of `reference`'s repository; the name
/// of the key. `Untrusted` when there is no signature or none verifies; other errors are the
/// registry's.
pub(crate) async fn verify(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    reference: &Reference,
    digest: &str,
    trusted: &TrustedKeys,
) -> Result<String, crate::FetchError> {
    let target = signature_reference(reference, digest);
    let manifest = match client.pull_image_manifest(&target, auth).await {
        Ok((manifest, _)) => manifest,
        Err(e) if is_not_found(&e) => {
            return Err(Untrusted(format!(
                "{reference} ({digest}) is not signed: no {target}; this host runs only apps signed by {}",
                trusted.names()
            ))
            .into());
        }
        Err(e) => {
            let error = anyhow::Error::new(e).context(format!("cannot fetch the signature {target}"));
            return Err(error.into());
        }
    };
    let mut refusals = Vec::new();
    for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE) {
        let Some(signature) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
            refusals.push(format!("layer {} has no {SIGNATURE_ANNOTATION}", layer.digest));
            continue;
        };
        if layer.size > 64 << 10 {
            refusals.push(format!("layer {} is {} bytes, too large for a payload", layer.digest, layer.size));
            continue;
        }
        let mut payload = Vec::new();
        // No more than the declared size is taken in, whatever the registry sends.
        let mut writer = crate::bounded::Bounded { inner: &mut payload, left: layer.size.max(0) as u64 };
        client
            .pull_blob(&target, layer, &mut writer)
            .await
            .with_context(|| format!("cannot fetch the signed payload {}", layer.digest))
            .map_err(crate::FetchError::Registry)?;
        match trusted.verify_payload(&payload, signature, digest) {
            Ok(key) => return Ok(key.to_string()),
            Err(e) => refusals.push(e.to_string()),
        }
    }
    Err(Untrusted(format!(
        "{reference} ({digest}): no signature in {target} verifies: {}",
        refusals.join("; ")
    ))
    .into())
}

/// Whether the registry answered that the manifest does not exist.
fn is_not_found(error: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match error {
        E::ImageManifestNotFoundError(_) => true,
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                oci_client::errors::OciErrorCode::ManifestUnknown
                    | oci_client::errors::OciErrorCode::NameUnknown
            )
        }),
        E::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}
