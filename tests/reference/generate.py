#!/usr/bin/env python3
"""Computes the reference outputs the end-to-end tests compare against.

Independent of edgeinfer: Hugging Face `tokenizers` (Python) for token ids, ONNX Runtime (Python)
for the model, numpy for pooling. Run from the repo root after `edgeinfer up` fetched the model:

    python3 -m pip install -r tests/reference/requirements.txt
    python3 tests/reference/generate.py
"""
import json
import pathlib

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
MODEL_DIR = ROOT / "models" / "all-minilm-l6-v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def byte_offsets(text, char_offsets):
    """Python tokenizers reports character offsets; the WIT contract uses byte offsets."""
    starts = [len(text[:i].encode("utf-8")) for i in range(len(text) + 1)]
    return [[starts[s], starts[e]] for s, e in char_offsets]


def main():
    sentences = json.loads((HERE / "sentences.json").read_text())
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    # The file fixes padding and truncation at 128: the contract decides them per call instead.
    tokenizer.no_padding()
    tokenizer.no_truncation()

    token_cases = []
    for text in sentences:
        enc = tokenizer.encode(text)
        token_cases.append({
            "text": text,
            "ids": enc.ids,
            "type_ids": enc.type_ids,
            "attention_mask": enc.attention_mask,
            "offsets": byte_offsets(text, enc.offsets),
        })
    (HERE / "tokens.json").write_text(json.dumps(token_cases, ensure_ascii=False, indent=1) + "\n")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
    tokenizer.enable_truncation(MAX_TOKENS)

    def embed(text):
        """One text, unpadded (cut at MAX_TOKENS): its hidden states' mean, L2-normalised."""
        enc = tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        hidden = session.run(["last_hidden_state"], feeds)[0][0]
        mask = np.array(enc.attention_mask, dtype=np.float32)[:, None]
        mean = (hidden * mask).sum(axis=0) / max(mask.sum(), 1e-9)
        return mean / max(np.linalg.norm(mean), 1e-12)

    embeddings = []
    for text, case in zip(sentences, token_cases):
        embeddings.append({
            "text": text,
            # Longer inputs need "truncate": true; the reference embeds their first MAX_TOKENS.
            "needs_truncate": len(case["ids"]) > MAX_TOKENS,
            "embedding": [round(float(v), 7) for v in embed(text)],
        })
    (HERE / "embeddings.json").write_text(json.dumps(embeddings, ensure_ascii=False) + "\n")

    # /rerank and /similarity: cosine of the query's embedding with each passage's (this app has
    # no cross-encoder), on hand-written sets whose relevant passage is obvious.
    rerank = []
    for case in json.loads((HERE / "rerank_sets.json").read_text()):
        query = embed(case["query"])
        scores = [float(np.dot(query, embed(text))) for text in case["texts"]]
        rerank.append({**case, "scores": [round(s, 7) for s in scores]})
    (HERE / "rerank.json").write_text(json.dumps(rerank, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(token_cases)} token cases, {len(embeddings)} embeddings, {len(rerank)} rerank sets")


if __name__ == "__main__":
    main()
