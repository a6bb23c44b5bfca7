"""TEI-shaped requests to every route of TEI's API the default app serves, with each answer
checked against TEI's documented response type (tests/clients/tei_types.json, validated with
`jsonschema`) and TEI's timing headers.

Usage: tei_routes.py BASE_URL TEI_TYPES_JSON

Prints a JSON report as its last line: per route, the status, the number of items and the headers
seen; exits non-zero on the first failed check.
"""

import json
import sys
import urllib.error
import urllib.request

import jsonschema

from checks import check

base, types_path = sys.argv[1:3]
types = json.load(open(types_path))
TIMING = ["x-compute-time", "x-queue-time", "x-inference-time", "x-tokenization-time", "x-total-time"]


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers.items()), json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), json.load(e)


def validate(value, type_name):
    schema = {"$defs": types["$defs"], "$ref": f"#/$defs/{type_name}"}
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


# (route, method, TEI's example request, TEI's response type)
cases = [
    ("/embed", "POST", {"inputs": "What is Deep Learning?"}, "EmbedResponse"),
    ("/embed", "POST", {"inputs": ["What is Deep Learning?", "Hi"], "truncate": True, "truncation_direction": "Left", "dimensions": 64}, "EmbedResponse"),
    ("/embed_all", "POST", {"inputs": ["What is Deep Learning?", "Hi"]}, "EmbedAllResponse"),
    ("/similarity", "POST", {"inputs": {"source_sentence": "What is Deep Learning?", "sentences": ["What is Machine Learning?", "The weather is nice"]}}, "SimilarityResponse"),
    ("/rerank", "POST", {"query": "What is Deep Learning?", "texts": ["Deep Learning is a kind of machine learning.", "Paris is in France."], "return_text": True}, "RerankResponse"),
    ("/tokenize", "POST", {"inputs": "test", "add_special_tokens": True}, "TokenizeResponse"),
    ("/tokenize", "POST", {"inputs": ["What is Deep Learning?", "Hi"]}, "TokenizeResponse"),
    ("/decode", "POST", {"ids": [101, 3231, 102]}, "DecodeResponse"),
    ("/decode", "POST", {"ids": [[101, 3231, 102], [7592]], "skip_special_tokens": False}, "DecodeResponse"),
    ("/info", "GET", None, "Info"),
    ("/predict", "POST", {"inputs": "set a timer"}, None),
]
report = {}
for path, method, body, type_name in cases:
    status, headers, answer = call(method, path, body)
    check(status == 200, f"{method} {path} {body}: {status} {answer}")
    if type_name:
        validate(answer, type_name)
    headers = {k.lower(): v for k, v in headers.items()}
    if method == "POST":
        missing = [h for h in TIMING if h not in headers]
        check(not missing, f"{path}: timing headers missing: {missing} (got {sorted(headers)})")
        for h in TIMING:
            check(headers[h].isdigit(), f"{path}: {h} is {headers[h]!r}, not whole milliseconds")
    entry = report.setdefault(path, {"calls": 0})
    entry["calls"] += 1
    entry["items"] = len(answer) if isinstance(answer, list) else len(answer.keys())

# Errors keep TEI's error shape.
for path, body in [
    ("/embed", {"inputs": []}),
    ("/tokenize", {"inputs": []}),
    ("/decode", {"ids": [999999]}),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}),
    ("/rerank", {"query": "a", "texts": []}),
    ("/embed", {"inputs": "a", "prompt_name": "nope"}),
]:
    status, _, answer = call("POST", path, body)
    check(400 <= status < 500, f"{path} {body}: {status} {answer}")
    validate(answer, "ErrorResponse")
    report.setdefault("errors", []).append([path, status, answer["error_type"]])

print(json.dumps(report))
