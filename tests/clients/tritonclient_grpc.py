#!/usr/bin/env python3
"""Drives a running edgeinfer host's KServe v2 gRPC API with NVIDIA's `tritonclient.grpc`.

Run by tests/tests/tritonclient.rs against a host it started with `--grpc-listen` (KServe on,
behind a token). Checks health and metadata, BERT inference whose outputs equal the REST JSON
path's exactly and ONNX Runtime's Python API within 1e-4, 32 concurrent clients (each its own
channel), and malformed requests sent with the protocol's own generated stub. Prints one JSON line
of figures; any failed check raises.

    python tests/clients/tritonclient_grpc.py GRPC_HOST:PORT HTTP_HOST:PORT TOKEN MODEL.onnx TOKENS.json
"""
import json
import sys
import threading

import grpc
import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "minilm"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"


def arrays(case):
    return {
        "input_ids": np.array([case["ids"]], dtype=np.int64),
        "attention_mask": np.array([case["attention_mask"]], dtype=np.int64),
        "token_type_ids": np.array([case["type_ids"]], dtype=np.int64),
    }


def grpc_inputs(tensors):
    inputs = []
    for name in INPUTS:
        tensor = grpcclient.InferInput(name, list(tensors[name].shape), "INT64")
        tensor.set_data_from_numpy(tensors[name])
        inputs.append(tensor)
    return inputs


def json_answer(client, tensors, headers):
    inputs = []
    for name in INPUTS:
        tensor = httpclient.InferInput(name, list(tensors[name].shape), "INT64")
        tensor.set_data_from_numpy(tensors[name], binary_data=False)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(OUTPUT, binary_data=False)]
    return client.infer(MODEL, inputs, outputs=outputs, headers=dict(headers)).as_numpy(OUTPUT)


def raw_request(tensors, **changes):
    """A ModelInferRequest built by hand, as any gRPC client of the protocol would."""
    request = service_pb2.ModelInferRequest(model_name=changes.get("model", MODEL))
    for name in INPUTS:
        tensor = request.inputs.add(name=name, datatype=changes.get("datatype", "INT64"))
        tensor.shape.extend(tensors[name].shape)
        request.raw_input_contents.append(tensors[name].tobytes())
    return request


def expect_status(stub, request, metadata, code, fragment):
    try:
        stub.ModelInfer(request, metadata=metadata)
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        assert fragment in e.details(), f"expected {fragment!r} in {e.details()!r}"
        error_type = dict(e.trailing_metadata()).get("x-error-type")
        return {"code": e.code().name, "error_type": error_type, "message": e.details()}
    raise AssertionError(f"expected {code}")


def main():
    grpc_url, http_url, token, model_path, tokens_path = sys.argv[1:6]
    headers = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url=grpc_url)
    http = httpclient.InferenceServerClient(url=http_url)

    assert client.is_server_live(headers=headers), "server live"
    assert client.is_server_ready(headers=headers), "server ready"
    assert client.is_model_ready(MODEL, headers=headers), "model ready"
    server = client.get_server_metadata(headers=headers, as_json=True)
    assert server["name"] == "edgeinfer" and "binary_tensor_data" in server["extensions"], server
    metadata = client.get_model_metadata(MODEL, headers=headers, as_json=True)
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [(n, "INT64") for n in INPUTS], metadata
    assert metadata["outputs"][0]["name"] == OUTPUT and metadata["outputs"][0]["shape"] == ["-1", "-1", "384"], metadata

    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    cases = json.load(open(tokens_path))[:6]
    max_diff = 0.0
    for case in cases:
        tensors = arrays(case)
        (reference,) = session.run([OUTPUT], tensors)
        answer = client.infer(MODEL, grpc_inputs(tensors), headers=headers, request_id="g-1")
        assert answer.get_response().id == "g-1"
        values = answer.as_numpy(OUTPUT)
        assert values.dtype == np.float32 and values.shape == reference.shape, (values.dtype, values.shape)
        assert np.array_equal(values, json_answer(http, tensors, headers)), f"{case['text']!r}: gRPC and REST JSON differ"
        max_diff = max(max_diff, float(np.abs(values - reference).max()))
    assert max_diff < 1e-4, f"max |edgeinfer - onnxruntime| = {max_diff}"

    # Compressed messages (the client's compression_algorithm), same answers.
    tensors = arrays(cases[0])
    plain = client.infer(MODEL, grpc_inputs(tensors), headers=headers).as_numpy(OUTPUT)
    for algorithm in ("gzip", "deflate"):
        packed = client.infer(MODEL, grpc_inputs(tensors), headers=headers, compression_algorithm=algorithm)
        assert np.array_equal(packed.as_numpy(OUTPUT), plain), f"{algorithm} message answered differently"

    # 32 clients, each on its own channel, released together.
    tensors = arrays(cases[1])
    (expected,) = session.run([OUTPUT], tensors)
    clients = [grpcclient.InferenceServerClient(url=grpc_url) for _ in range(32)]
    barrier = threading.Barrier(len(clients))
    answers = [None] * len(clients)

    def one(i):
        barrier.wait()
        answers[i] = clients[i].infer(MODEL, grpc_inputs(tensors), headers=headers).as_numpy(OUTPUT)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None and np.array_equal(a, answers[0]) for a in answers), "concurrent answers differ"
    burst_diff = float(np.abs(answers[0] - expected).max())
    assert burst_diff < 1e-4, f"concurrent answer off by {burst_diff}"
    for c in clients:
        c.close()

    # Malformed requests through the protocol's own stub; then the host still answers.
    channel = grpc.insecure_channel(grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    auth = [("authorization", f"Bearer {token}")]
    short = raw_request(tensors)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-8]
    missing = raw_request(tensors)
    del missing.raw_input_contents[2]
    errors = {
        "short raw contents": expect_status(stub, short, auth, grpc.StatusCode.INVALID_ARGUMENT, "needs"),
        "raw count": expect_status(stub, missing, auth, grpc.StatusCode.INVALID_ARGUMENT, "2 entries for 3 inputs"),
        "datatype": expect_status(
            stub, raw_request(tensors, datatype="BOOL"), auth, grpc.StatusCode.INVALID_ARGUMENT, "not supported"
        ),
        "unknown model": expect_status(
            stub, raw_request(tensors, model="nope"), auth, grpc.StatusCode.NOT_FOUND, "no model named"
        ),
        "no token": expect_status(stub, raw_request(tensors), [], grpc.StatusCode.UNAUTHENTICATED, "bearer token"),
    }
    assert errors["short raw contents"]["error_type"] == "Validation", errors
    after = stub.ModelInfer(raw_request(tensors), metadata=auth)
    assert np.array_equal(np.frombuffer(after.raw_output_contents[0], np.float32).reshape(expected.shape), answers[0])
    try:
        client.infer("nope", grpc_inputs(tensors), headers=headers)
        raise AssertionError("an unknown model must fail")
    except InferenceServerException as e:
        assert "no model named" in e.message(), e.message()
    channel.close()
    client.close()
    http.close()
    print(json.dumps({
        "cases": len(cases),
        "max_abs_diff_vs_onnxruntime": max_diff,
        "concurrent_clients": len(answers),
        "errors": errors,
    }))


if __name__ == "__main__":
    main()
