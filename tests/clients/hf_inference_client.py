"""Hugging Face's own client, `huggingface_hub.InferenceClient`, against the host as its docs point
it at a TEI server: the server's base URL as the model.

Usage: hf_inference_client.py BASE_URL EMBEDDINGS_JSON RERANK_JSON INTENTS_JSON [ROOT_TASK]

- feature extraction at the root URL (`POST /`, TEI's default task of an embedding model), and at
  SageMaker's `/invocations` through the same client, with parity to the Python reference;
- sentence similarity at `/similarity` (or at the root URL when ROOT_TASK is `similarity`, TEI's
  TASK=sentence-similarity), against the reference cosines;
- text classification at `/predict` against the reference classifier.
Prints a JSON report as its last line; exits non-zero on the first failed check.
"""

import json
import sys

import numpy as np
from huggingface_hub import InferenceClient

from checks import check, cosine

base, embeddings_json, rerank_json, intents_json = sys.argv[1:5]
root_task = sys.argv[5] if len(sys.argv) > 5 else "embed"
report = {}


def client(path=""):
    return InferenceClient(model=base.rstrip("/") + path, timeout=60)


if root_task == "embed":
    cases = [c for c in json.load(open(embeddings_json)) if not c.get("needs_truncate")]
    worst = 1.0
    for path in ["", "/invocations"]:
        for case in cases:
            vector = client(path).feature_extraction(case["text"])
            check(vector.shape == (1, 384), f"one 384-vector from {path or '/'}, got {vector.shape}")
            check(abs(np.linalg.norm(vector[0]) - 1.0) < 1e-3, "normalised by default, as TEI")
            worst = min(worst, cosine(vector[0], case["embedding"]))
    check(worst >= 0.999, f"feature extraction vs Python reference: cosine {worst}")
    report["feature_extraction_cases"] = len(cases)
    report["feature_extraction_min_cosine"] = worst

similarity_path = "" if root_task == "similarity" else "/similarity"
worst = 0.0
for case in json.load(open(rerank_json)):
    scores = client(similarity_path).sentence_similarity(case["query"], other_sentences=case["texts"])
    check(len(scores) == len(case["texts"]), f"one score per sentence: {scores}")
    worst = max(worst, max(abs(a - b) for a, b in zip(scores, case["scores"])))
check(worst < 1e-3, f"sentence similarity vs reference cosines: max |diff| {worst}")
report["similarity_path"] = similarity_path or "/"
report["similarity_max_diff"] = worst

if root_task == "embed":
    intents = json.load(open(intents_json))
    worst = 0.0
    for case in intents["cases"][:40]:
        top = client("/predict").text_classification(case["text"])
        # The client reads TEI's answer to one text as it reads the Inference API's batch: it returns
        # the top prediction (TEI's answer is sorted best first).
        top = top[0] if isinstance(top, list) else top
        check(top.label == case["label"], f"{case['text']!r}: {top.label} vs reference {case['label']}")
        worst = max(worst, abs(top.score - max(case["scores"])))
    check(worst < 1e-2, f"text classification vs reference probabilities: max |diff| {worst}")
    report["classification_cases"] = min(40, len(intents["cases"]))
    report["classification_max_diff"] = worst

print(json.dumps(report))
