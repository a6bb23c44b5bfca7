"""A cross-encoder for the /rerank tests, and its reference scores, in plain numpy.

No cross-encoder's weights ship in a registry package, so the tests make one the way users bring
theirs: a BertForSequenceClassification checkpoint with one label (all-MiniLM-L6-v2's encoder and
pooler, plus a classifier of fixed pseudo-random weights), which `edgeinfer export` turns into
ONNX. The reference runs the encoder-only export of the same checkpoint in ONNX Runtime on pairs
tokenized by Hugging Face `tokenizers`, then the pooler and classifier in numpy.

Usage:
  cross_encoder.py make MINILM_DIR OUT_DIR
  cross_encoder.py reference ENCODER_ONNX CHECKPOINT_DIR SETS_JSON MAX_TOKENS
     (prints, per set, [{"logit", "score"}] per text as one JSON line)
"""

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np


def read_safetensors(path):
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = {"F32": "<f4", "I64": "<i8"}[info["dtype"]]
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    return tensors


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        dtype = {"float32": "F32", "int64": "I64"}[str(array.dtype)]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def make(minilm_dir, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = read_safetensors(Path(minilm_dir) / "model.safetensors")
    rng = np.random.default_rng(20261202)
    hidden = tensors["pooler.dense.weight"].shape[0]
    tensors["classifier.weight"] = (rng.standard_normal((1, hidden)) * 0.2).astype(np.float32)
    tensors["classifier.bias"] = np.array([0.1], dtype=np.float32)
    write_safetensors(out / "model.safetensors", tensors)
    config = json.loads((Path(minilm_dir) / "config.json").read_text())
    config.update({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    shutil.copy(Path(minilm_dir) / "tokenizer.json", out / "tokenizer.json")


def reference(encoder_onnx, checkpoint_dir, sets_json, max_tokens):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tensors = read_safetensors(Path(checkpoint_dir) / "model.safetensors")
    tokenizer = Tokenizer.from_file(str(Path(checkpoint_dir) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(max_tokens))
    session = ort.InferenceSession(encoder_onnx, providers=["CPUExecutionProvider"])
    for case in json.load(open(sets_json)):
        answers = []
        for text in case["texts"]:
            enc = tokenizer.encode(case["query"], text)
            feeds = {
                "input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
            }
            hidden = session.run(["last_hidden_state"], feeds)[0][0].astype(np.float64)
            pooled = np.tanh(tensors["pooler.dense.weight"] @ hidden[0] + tensors["pooler.dense.bias"])
            logit = float(tensors["classifier.weight"][0] @ pooled + tensors["classifier.bias"][0])
            answers.append({"logit": logit, "score": 1.0 / (1.0 + np.exp(-logit)), "tokens": len(enc.ids)})
        print(json.dumps(answers))


if __name__ == "__main__":
    {"make": make, "reference": reference}[sys.argv[1]](*sys.argv[2:])
