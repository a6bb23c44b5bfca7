#!/usr/bin/env python3
"""Drives a running edgeinfer host's KServe v2 API with NVIDIA's own `tritonclient.http`.

Run by tests/tests/tritonclient.rs against a host it started (KServe on, behind a token), with the
interpreter of scripts/python-clients. Checks health and metadata as the client reads them, then
BERT inference with binary tensors on and off (the client's default is binary), compared with
each other and with ONNX Runtime's Python API on the same model file, a burst of concurrent
requests, and the errors the client raises. Prints one JSON line of figures; any failed check
raises (non-zero exit, the reason on stderr).

    python tests/clients/tritonclient_http.py HOST:PORT TOKEN MODEL.onnx TOKENS.json
"""
import json
import sys

import numpy as np
import onnxruntime
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "minilm"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"


def arrays(case):
    ids = np.array([case["ids"]], dtype=np.int64)
    mask = np.array([case["attention_mask"]], dtype=np.int64)
    types = np.array([case["type_ids"]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def infer_inputs(tensors, binary):
    inputs = []
    for name in INPUTS:
        tensor = httpclient.InferInput(name, list(tensors[name].shape), "INT64")
        tensor.set_data_from_numpy(tensors[name], binary_data=binary)
        inputs.append(tensor)
    return inputs


def expect_error(call, status, fragment):
    try:
        call()
    except InferenceServerException as e:
        assert str(e.status()) == str(status), f"expected HTTP {status}, got {e.status()}: {e}"
        assert fragment in e.message(), f"expected {fragment!r} in {e.message()!r}"
        return e.message()
    raise AssertionError(f"expected an HTTP {status} error")


def main():
    url, token, model_path, tokens_path = sys.argv[1:5]
    # A fresh dict per call: the client writes its own headers (Inference-Header-Content-Length)
    # into the dict it is given, which would then go with the next call too.
    def headers():
        return {"Authorization": f"Bearer {token}"}

    client = httpclient.InferenceServerClient(url=url, concurrency=32)

    assert client.is_server_live(headers=headers()), "server live"
    assert client.is_server_ready(headers=headers()), "server ready"
    assert client.is_model_ready(MODEL, headers=headers()), "model ready"
    server = client.get_server_metadata(headers=headers())
    assert "binary_tensor_data" in server["extensions"], server
    metadata = client.get_model_metadata(MODEL, headers=headers())
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [(n, "INT64") for n in INPUTS], metadata
    assert metadata["outputs"][0]["name"] == OUTPUT, metadata

    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    cases = json.load(open(tokens_path))[:6]
    max_diff = 0.0
    binary_bytes = 0
    for case in cases:
        tensors = arrays(case)
        (reference,) = session.run([OUTPUT], tensors)
        # The client's default: binary inputs, no outputs named (so binary_data_output).
        default = client.infer(MODEL, infer_inputs(tensors, True), headers=headers())
        binary = default.as_numpy(OUTPUT)
        as_binary = [httpclient.InferRequestedOutput(OUTPUT, binary_data=True)]
        named = client.infer(MODEL, infer_inputs(tensors, True), outputs=as_binary, headers=headers())
        as_json = [httpclient.InferRequestedOutput(OUTPUT, binary_data=False)]
        text = client.infer(MODEL, infer_inputs(tensors, False), outputs=as_json, headers=headers())
        assert binary.dtype == np.float32 and binary.shape == reference.shape, (binary.dtype, binary.shape)
        assert np.array_equal(binary, named.as_numpy(OUTPUT)), "binary answers differ"
        assert np.array_equal(binary, text.as_numpy(OUTPUT)), f"{case['text']!r}: binary and JSON answers differ"
        assert default.get_output(OUTPUT)["parameters"]["binary_data_size"] == binary.nbytes
        assert "data" in text.get_output(OUTPUT), "a JSON output carries its data inline"
        max_diff = max(max_diff, float(np.abs(binary - reference).max()))
        binary_bytes += binary.nbytes
    assert max_diff < 1e-4, f"max |edgeinfer - onnxruntime| = {max_diff}"

    # Compressed requests (the client's request_compression_algorithm), same answers.
    tensors = arrays(cases[0])
    plain = client.infer(MODEL, infer_inputs(tensors, True), headers=headers()).as_numpy(OUTPUT)
    for algorithm in ("gzip", "deflate"):
        packed = client.infer(MODEL, infer_inputs(tensors, True), headers=headers(),
                              request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
        assert np.array_equal(packed.as_numpy(OUTPUT), plain), f"{algorithm} request answered differently"

    # 32 requests in flight at once through the client's own connection pool.
    tensors = arrays(cases[0])
    (expected,) = session.run([OUTPUT], tensors)
    pending = [client.async_infer(MODEL, infer_inputs(tensors, True), headers=headers()) for _ in range(32)]
    burst = [p.get_result().as_numpy(OUTPUT) for p in pending]
    assert all(np.array_equal(b, burst[0]) for b in burst), "concurrent answers differ"
    burst_diff = float(np.abs(burst[0] - expected).max())
    assert burst_diff < 1e-4, f"concurrent answer off by {burst_diff}"

    # Errors, as the client raises them.
    errors = {
        "unknown model": expect_error(
            lambda: client.infer("no-such-model", infer_inputs(tensors, True), headers=headers()), 404, "no-such-model"
        ),
        "no token": expect_error(lambda: client.infer(MODEL, infer_inputs(tensors, True)), 401, "bearer token"),
        "wrong shape": expect_error(
            lambda: client.infer(MODEL, bad_inputs(tensors), headers=headers()), 400, "binary_data_size"
        ),
    }
    client.close()
    print(json.dumps({
        "cases": len(cases),
        "max_abs_diff_vs_onnxruntime": max_diff,
        "binary_output_bytes": binary_bytes,
        "concurrent": len(burst),
        "errors": errors,
    }))


def bad_inputs(tensors):
    """Inputs whose declared shape does not match the binary data the client sends."""
    inputs = infer_inputs(tensors, True)
    n = tensors["input_ids"].shape[1]
    inputs[0].set_shape([1, n + 1])
    return inputs


if __name__ == "__main__":
    main()
