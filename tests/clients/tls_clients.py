#!/usr/bin/env python3
"""Drives a host that serves TLS with the clients its users already have: the official `openai`
client on an https:// base URL trusting the test CA, and NVIDIA's `tritonclient.grpc` with SSL.
Both send the host's API key; a wrong key and no key are refused by the host's one rule.

Run by tests/tests/tls.rs against a host it started with --tls-cert, --grpc-listen and --api-key.

    python tests/clients/tls_clients.py BASE_URL GRPC_HOST:PORT CA.pem API_KEY

Prints one JSON line of what it saw; a failed check raises.
"""
import json
import sys

import httpx
import numpy as np
import openai
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TEXT = "Certificates are re-read when their files change."


def status_of(call):
    """The HTTP status an openai call ended with."""
    try:
        call()
        return 200
    except openai.APIStatusError as error:
        return error.status_code


def grpc_refusal(call):
    try:
        call()
    except InferenceServerException as error:
        return str(error.status())
    raise AssertionError("the call was not refused")


def main():
    base, grpc_address, ca, key = sys.argv[1:5]
    report = {}
    with httpx.Client(verify=ca) as http:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, http_client=http)
        vector = client.embeddings.create(model="all-minilm-l6-v2", input=[TEXT]).data[0].embedding
        embed = http.post(f"{base}/embed", json={"inputs": [TEXT]}, headers={"Authorization": f"Bearer {key}"})
        embed.raise_for_status()
        reference = np.array(embed.json()[0])
        report["openai_dimensions"] = len(vector)
        report["openai_vs_embed_cosine"] = float(np.dot(vector, reference) / np.linalg.norm(vector) / np.linalg.norm(reference))
        wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="not-the-key-0123456789", http_client=http)
        report["openai_wrong_key_status"] = status_of(lambda: wrong.embeddings.create(model="all-minilm-l6-v2", input=[TEXT]))
    # The system's CAs alone do not trust the test CA: the client must refuse the host.
    try:
        with httpx.Client() as untrusting:
            untrusting.get(f"{base}/health")
        report["untrusted_ca"] = "accepted"
    except httpx.ConnectError as error:
        report["untrusted_ca"] = "refused" if "CERTIFICATE_VERIFY_FAILED" in str(error) else str(error)

    client = grpcclient.InferenceServerClient(url=grpc_address, ssl=True, root_certificates=ca)
    headers = {"authorization": f"Bearer {key}"}
    assert client.is_server_live(headers=headers)
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    inputs = []
    for name, values in (("input_ids", ids), ("attention_mask", np.ones_like(ids)), ("token_type_ids", np.zeros_like(ids))):
        tensor = grpcclient.InferInput(name, list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    output = client.infer("minilm", inputs, headers=headers).as_numpy("last_hidden_state")
    report["grpc_output_shape"] = list(output.shape)
    report["grpc_no_key"] = grpc_refusal(lambda: client.infer("minilm", inputs))
    report["grpc_wrong_key"] = grpc_refusal(
        lambda: client.infer("minilm", inputs, headers={"authorization": "Bearer not-the-key-0123456789"}))
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
