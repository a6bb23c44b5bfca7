#!/usr/bin/env python3
"""Reference embeddings of all-mpnet-base-v2 for `edgeinfer export`'s MPNet graph, computed
independently of edgeinfer.

sentence-transformers runs MPNetModel (PyTorch) and then mean-pools and L2-normalises. Without
torch, this script runs MPNetModel.forward itself in numpy (float64) from the checkpoint's
safetensors: position ids counted past the padding id, no token types, and the relative-position
attention bias (32 buckets, max distance 128) shared by every layer. Token ids come from Hugging
Face `tokenizers` (Python).

Run from the repo root after the mpnet test app fetched its checkpoint (tests/tests/export.rs, or
`edgeinfer fetch -f tests/apps/mpnet/spin.toml --runtime-config-file tests/apps/mpnet/runtime.toml`):

    python3 -m pip install -r tests/reference/requirements-intents.txt
    python3 tests/reference/generate_mpnet.py
"""
import json
import math
import pathlib

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from generate_intents import gelu, layer_norm  # the same float64 building blocks as the BERT reference

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
CHECKPOINT = ROOT / "models" / "all-mpnet-base-v2-checkpoint"
TOKENIZER = ROOT / "models" / "all-mpnet-base-v2" / "tokenizer.json"
MAX_TOKENS = 384  # sentence-transformers' max_seq_length for all-mpnet-base-v2


def bucket(relative_position, num_buckets=32, max_distance=128):
    """MPNetEncoder.relative_position_bucket for one distance (key - query)."""
    n = -relative_position
    num_buckets //= 2
    ret = num_buckets if n < 0 else 0
    n = abs(n)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


def mpnet(w, config, ids):
    """MPNetModel.forward for one unpadded sequence, in float64: [tokens, hidden]."""
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    pad = config["pad_token_id"]
    n = len(ids)
    positions = np.arange(n) + pad + 1  # no padding in an unpadded sequence
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    table = w["encoder.relative_attention_bias.weight"]  # [buckets, heads]
    rel = np.arange(n)[None, :] - np.arange(n)[:, None]  # [query, key] = key - query
    buckets = np.vectorize(lambda r: bucket(r, config["relative_attention_num_buckets"]))(rel)
    position_bias = table[buckets].transpose(2, 0, 1)  # [heads, query, key]
    d = x.shape[1] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin(x, "attention.attn.q").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(x, "attention.attn.k").reshape(n, heads, d).transpose(1, 0, 2)
        v = lin(x, "attention.attn.v").reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d) + position_bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = layer_norm(lin(ctx, "attention.attn.o") + x,
                       w[p + "attention.LayerNorm.weight"], w[p + "attention.LayerNorm.bias"], eps)
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x


def main():
    config = json.loads((CHECKPOINT / "config.json").read_text())
    weights = {k: v.astype(np.float64) for k, v in load_file(str(CHECKPOINT / "model.safetensors")).items()}
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    # The file fixes padding and truncation at 128; sentence-transformers cuts at 384.
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    sentences = json.loads((HERE / "sentences.json").read_text())[:10]
    # Longer than 128 tokens, so that distances past the last logarithmic bucket are covered.
    sentences.append(" ".join(["Edge hosts serve sentence embeddings from WebAssembly components."] * 20))
    cases = []
    for text in sentences:
        enc = tokenizer.encode(text)
        hidden = mpnet(weights, config, np.array(enc.ids))
        emb = hidden.mean(0)
        emb /= max(np.linalg.norm(emb), 1e-12)
        cases.append({"text": text, "tokens": len(enc.ids), "embedding": [round(float(v), 7) for v in emb]})
        print(f"{len(enc.ids):4} tokens  {text[:60]}")
    out = {"model": "all-mpnet-base-v2", "max_tokens": MAX_TOKENS, "cases": cases}
    (HERE / "mpnet.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
