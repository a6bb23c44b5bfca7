"""What the client scripts check with: a failed check ends the script with its message (the Rust
test shows it), and the cosine similarity of two vectors in float64."""

import numpy as np


def check(condition, message):
    if not condition:
        raise SystemExit(f"check failed: {message}")


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
