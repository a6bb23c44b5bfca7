"""The official `openai` Python client against the host's /v1 API, as RAG stacks call it.

Usage: openai_embeddings.py BASE_URL API_KEY EMBEDDINGS_JSON TOKENS_JSON

BASE_URL is the host's `/v1`; API_KEY the key the host's openai component expects ("" when it
expects none). Checks answers against the Python reference (sentence-transformers-equivalent
embeddings of tests/reference) and prints a JSON report as its last line; exits non-zero on the
first failed check.
"""

import base64
import json
import sys

import numpy as np
import openai

from checks import check, cosine

base_url, api_key, embeddings_json, tokens_json = sys.argv[1:5]
MODEL = "all-minilm-l6-v2"
report = {}


client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0, timeout=60)

# Models.
listed = [m.id for m in client.models.list()]
check(MODEL in listed, f"{MODEL} listed by /v1/models: {listed}")
check(client.models.retrieve(MODEL).id == MODEL, "models.retrieve")
report["models"] = listed

# Float vectors, every reference sentence that fits the limit, in batches: parity with Python.
cases = [c for c in json.load(open(embeddings_json)) if not c.get("needs_truncate")]
worst = 1.0
for start in range(0, len(cases), 10):
    chunk = cases[start : start + 10]
    answer = client.embeddings.create(model=MODEL, input=[c["text"] for c in chunk], encoding_format="float")
    check(answer.object == "list" and answer.model == MODEL, f"envelope {answer.object} {answer.model}")
    check([d.index for d in answer.data] == list(range(len(chunk))), "indices in input order")
    for case, item in zip(chunk, answer.data):
        check(item.object == "embedding" and isinstance(item.embedding[0], float), "float embedding")
        check(len(item.embedding) == 384, f"384 values, got {len(item.embedding)}")
        worst = min(worst, cosine(item.embedding, case["embedding"]))
check(worst >= 0.999, f"cosine vs Python reference {worst}")
report["float_cases"] = len(cases)
report["float_min_cosine"] = worst

# The client's default (it asks for base64 and decodes it itself) and explicit base64.
text = cases[0]["text"]
default = client.embeddings.create(model=MODEL, input=text).data[0].embedding
floats = client.embeddings.create(model=MODEL, input=text, encoding_format="float").data[0].embedding
raw = client.embeddings.create(model=MODEL, input=text, encoding_format="base64").data[0].embedding
check(isinstance(raw, str), "base64 answers a string")
decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4")
check(np.array_equal(decoded, np.asarray(floats, dtype=np.float32)), "base64 bytes equal the float answer")
check(np.allclose(default, floats, atol=0), "the client's default path decodes to the same vector")
report["base64_values"] = int(decoded.size)

# Matryoshka dimensions: the first N values of the full vector, renormalised.
for n in (64, 128, 383):
    cut = client.embeddings.create(model=MODEL, input=text, dimensions=n).data[0].embedding
    check(len(cut) == n, f"dimensions={n} gives {len(cut)} values")
    check(abs(np.linalg.norm(cut) - 1.0) < 1e-4, f"dimensions={n} renormalised")
    want = np.asarray(floats[:n]) / np.linalg.norm(floats[:n])
    check(np.allclose(cut, want, atol=1e-5), f"dimensions={n} is the renormalised prefix")
report["dimensions"] = [64, 128, 383]

# Usage counts the tokens the Python tokenizer gives (special tokens included), and token-id
# input gives the same vectors as the text.
token_cases = json.load(open(tokens_json))[:4]
answer = client.embeddings.create(model=MODEL, input=[c["text"] for c in token_cases])
want_tokens = sum(len(c["ids"]) for c in token_cases)
check(answer.usage.prompt_tokens == want_tokens, f"prompt_tokens {answer.usage.prompt_tokens} != {want_tokens}")
check(answer.usage.total_tokens == want_tokens, "total_tokens")
by_ids = client.embeddings.create(model=MODEL, input=[c["ids"] for c in token_cases])
for text_item, ids_item in zip(answer.data, by_ids.data):
    check(cosine(text_item.embedding, ids_item.embedding) > 0.9999, "token ids embed like their text")
single_ids = client.embeddings.create(model=MODEL, input=token_cases[0]["ids"]).data
check(len(single_ids) == 1, "one list of ids is one input")
report["usage_prompt_tokens"] = answer.usage.prompt_tokens

# Errors, as the client raises them.
errors = {}
try:
    client.embeddings.create(model="text-embedding-3-small", input="x")
    raise SystemExit("check failed: an unknown model was accepted")
except openai.NotFoundError as e:
    check(e.code == "model_not_found" and e.param == "model", f"unknown model error {e.body}")
    errors["unknown_model"] = e.status_code
try:
    client.embeddings.create(model=MODEL, input="")
    raise SystemExit("check failed: an empty input was accepted")
except openai.BadRequestError as e:
    check(e.body["type"] == "invalid_request_error", f"empty input error {e.body}")
    errors["empty_input"] = e.status_code
try:
    client.embeddings.create(model=MODEL, input="x", dimensions=385)
    raise SystemExit("check failed: dimensions past the model's were accepted")
except openai.BadRequestError as e:
    check(e.param == "dimensions", f"dimensions error {e.body}")
    errors["too_many_dimensions"] = e.status_code
if api_key:
    for wrong in ("unused", "sk-wrong"):
        try:
            openai.OpenAI(base_url=base_url, api_key=wrong, max_retries=0).embeddings.create(model=MODEL, input="x")
            raise SystemExit("check failed: a wrong API key was accepted")
        except openai.AuthenticationError as e:
            check(e.code == "invalid_api_key", f"wrong key error {e.body}")
            errors["wrong_api_key"] = e.status_code
report["errors"] = errors

print(json.dumps(report))
