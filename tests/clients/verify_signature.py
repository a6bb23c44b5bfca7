#!/usr/bin/env python3
"""Verifies edgeinfer's signatures with code of its own (Python's `cryptography` and the standard
library), as cosign would, so the tests do not take our word for the format:

    python tests/clients/verify_signature.py blob PUBLIC.pem FILE SIGNATURE_FILE
        a detached signature: base64 of the DER ECDSA P-256 / SHA-256 signature over FILE's bytes
        (`cosign sign-blob` / `cosign verify-blob --key`)
    python tests/clients/verify_signature.py registry PUBLIC.pem http://HOST:PORT REPOSITORY DIGEST
        cosign's signature of a registry artifact: the manifest tagged sha256-HEX.sig in the same
        repository, its simple-signing layer (digest checked), the signature in the layer's
        `dev.cosignproject.cosign/signature` annotation, and the payload naming DIGEST

Prints one JSON line; a failed check raises.
"""
import base64
import hashlib
import json
import sys
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"


def public_key(path):
    with open(path, "rb") as f:
        key = serialization.load_pem_public_key(f.read())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1", key
    return key


def get(url, accept=None):
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def main():
    mode, key_path = sys.argv[1], sys.argv[2]
    key = public_key(key_path)
    if mode == "blob":
        data = open(sys.argv[3], "rb").read()
        signature = base64.b64decode(open(sys.argv[4]).read().strip())
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        print(json.dumps({"verified": True, "bytes": len(data)}))
        return
    base, repository, digest = sys.argv[3:6]
    tag = digest.replace(":", "-", 1) + ".sig"
    manifest = json.loads(get(f"{base}/v2/{repository}/manifests/{tag}", "application/vnd.oci.image.manifest.v1+json"))
    layers = [layer for layer in manifest["layers"] if layer["mediaType"] == SIMPLE_SIGNING]
    assert layers, manifest
    layer = layers[0]
    payload = get(f"{base}/v2/{repository}/blobs/{layer['digest']}")
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"], "the payload's digest"
    key.verify(base64.b64decode(layer["annotations"][ANNOTATION]), payload, ec.ECDSA(hashes.SHA256()))
    critical = json.loads(payload)["critical"]
    assert critical["type"] == "cosign container image signature", critical
    assert critical["image"]["docker-manifest-digest"] == digest, critical
    print(json.dumps({"verified": True, "identity": critical["identity"]["docker-reference"], "tag": tag}))


if __name__ == "__main__":
    main()
