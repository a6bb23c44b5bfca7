#!/usr/bin/env python3
"""Reference outputs for /predict and for `edgeinfer export`, computed independently of edgeinfer.

The classifier's source pipeline is sentence-transformers (PyTorch) + scikit-learn. Without torch,
this script runs BERT itself in numpy (float64) from the checkpoint's safetensors, mean-pools and
L2-normalises like sentence-transformers, and asks scikit-learn's own `predict_proba` of the
packaged LogisticRegression. It also checks the exported ONNX files with Python ONNX Runtime.

Run from the repo root after `edgeinfer fetch` (it provisions and exports the models):

    python3 -m pip install -r tests/reference/requirements-intents.txt
    python3 tests/reference/generate_intents.py
"""
import json
import math
import pathlib
import sys
import warnings

import joblib
import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
ENCODER_DIR = ROOT / "models" / "all-minilm-l6-v2"
HEAD_DIR = ROOT / "models" / "rag-intent-classifier"
EXPORTED = ROOT / "models" / "intents" / "model.onnx"
INT8 = ENCODER_DIR / "model.onnx"
MAX_TOKENS = 256


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def bert(weights, config, ids, types):
    """BertModel.forward for one unpadded sequence, in float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    n = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.token_type_embeddings.weight"][types]
         + w["embeddings.position_embeddings.weight"][:n])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    d = x.shape[1] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin(x, "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x


def label_name(prediction, label_map):
    """The source package's resolution of a class to its display name."""
    p = str(prediction)
    if p in label_map:
        v = label_map[p]
        return p if str(v).lstrip("-").isdigit() else str(v)
    for k, v in label_map.items():
        if str(v) == p:
            return str(k)
    return p


def main():
    warnings.filterwarnings("ignore")
    sentences = json.loads((HERE / "intent_sentences.json").read_text())
    config = json.loads((ENCODER_DIR / "config.json").read_text())
    weights = load_file(str(ENCODER_DIR / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(ENCODER_DIR / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    clf = joblib.load(HEAD_DIR / "LogisticRegression.joblib")
    label_map = joblib.load(HEAD_DIR / "label_map.joblib")
    labels = [label_name(c, label_map) for c in clf.classes_]

    exported = ort.InferenceSession(str(EXPORTED), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(INT8), providers=["CPUExecutionProvider"])
    cases, worst_prob, worst_cos_int8 = [], 0.0, 1.0
    for text in sentences:
        enc = tokenizer.encode(text)
        hidden = bert(weights, config, np.array(enc.ids), np.array(enc.type_ids))
        emb = hidden.mean(0)
        emb /= max(np.linalg.norm(emb), 1e-12)
        probs = clf.predict_proba(emb[None, :].astype(np.float32))[0]
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        logits = exported.run(["logits"], feeds)[0][0].astype(np.float64)
        onnx_probs = np.exp(logits - logits.max())
        onnx_probs /= onnx_probs.sum()
        worst_prob = max(worst_prob, float(np.abs(onnx_probs - probs).max()))
        q = int8.run(["last_hidden_state"], feeds)[0][0].mean(0)
        worst_cos_int8 = min(worst_cos_int8, float(q @ emb / np.linalg.norm(q)))
        cases.append({
            "text": text,
            "label": labels[int(np.argmax(probs))],
            "scores": [round(float(p), 8) for p in probs],
            "embedding": [round(float(v), 7) for v in emb],
        })
    print(f"exported ONNX vs numpy+scikit-learn: max |Δprob| = {worst_prob:.2e}")
    print(f"int8 ONNX vs float64 numpy embedding: min cosine = {worst_cos_int8:.5f}")
    for c in cases:
        print(f"  {c['label']:<28} {max(c['scores']):.3f}  {c['text']}")
    out = {"labels": labels, "cases": cases}
    (HERE / "intents.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    if worst_prob > 1e-4 or worst_cos_int8 < 0.995:
        sys.exit("reference checks failed")


if __name__ == "__main__":
    main()
