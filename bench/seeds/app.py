"""The seeds' stack, as its users run it: FastAPI + pydantic + uvicorn + onnxruntime + tokenizers,
serving the same POST /embed contract on the same model file as edgeinfer's default app.

    MODEL_DIR=models/all-minilm-l6-v2 uvicorn app:app --app-dir bench/seeds --port 3200

MAX_TOKENS (default 256) is where inputs are cut; token_type_ids are fed only to a model that takes
them (all-mpnet-base-v2 does not).
"""
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from tokenizers import Tokenizer

MODEL_DIR = os.environ.get("MODEL_DIR", "models/all-minilm-l6-v2")
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "256"))

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("INTRA_THREADS", "2"))
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
# DEVICE=cuda:N: ONNX Runtime's CUDA provider (onnxruntime-gpu), as a GPU deployment configures it.
DEVICE = os.environ.get("DEVICE", "cpu")
if DEVICE.startswith("cuda:"):
    providers = [("CUDAExecutionProvider", {"device_id": int(DEVICE.split(":", 1)[1])})]
else:
    providers = ["CPUExecutionProvider"]
session = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"), options, providers=providers)
if DEVICE.startswith("cuda:") and "CUDAExecutionProvider" not in session.get_providers():
    raise SystemExit(f"the CUDA execution provider did not register: {session.get_providers()}")
TOKEN_TYPES = any(i.name == "token_type_ids" for i in session.get_inputs())
tokenizer = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
# Pad to the longest text with the file's own padding token ([PAD] 0 for BERT, <pad> 1 for MPNet).
padding = tokenizer.padding or {}
tokenizer.enable_padding(pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"))
tokenizer.enable_truncation(MAX_TOKENS)

app = FastAPI(title="seeds /embed")


class EmbedRequest(BaseModel):
    inputs: str | list[str]
    normalize: bool = True


@app.post("/embed")
def embed(request: EmbedRequest):
    texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
    if not texts:
        return JSONResponse({"error": "inputs is empty", "error_type": "Validation"}, status_code=422)
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if TOKEN_TYPES:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    (hidden,) = session.run(["last_hidden_state"], feeds)
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if request.normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.tolist()
