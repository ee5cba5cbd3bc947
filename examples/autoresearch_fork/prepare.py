"""
A small autoresearch-style harness: data, batches and the evaluation, fixed for every run.

Like autoresearch's prepare.py it is run once to build its cache, then imported by train.py:

    python prepare.py      # writes ~/.cache/evo-example-fork/{train,val}.bin
    python train.py        # trains for TIME_BUDGET seconds, prints val_bpb

The corpus is the Python standard library's own source (present on every machine, no
download): byte-level, so bits per byte are simply the loss in bits.
"""

import math
import os
import sys

import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 64          # context length
TIME_BUDGET = 3           # seconds of training
EVAL_BYTES = 1 << 15      # validation bytes scored
VOCAB_SIZE = 256          # bytes
CACHE_DIR = os.path.expanduser("~/.cache/evo-example-fork")
SOURCES = ("json", "email", "http", "html", "logging", "unittest")   # stdlib packages read as text

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _documents():
    root = os.path.dirname(os.__file__)
    for package in SOURCES:
        folder = os.path.join(root, package)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    yield f"{package}/{name}", f.read()


def prepare():
    os.makedirs(CACHE_DIR, exist_ok=True)
    train, val = [], []
    for i, (name, data) in enumerate(_documents()):
        (val if i % 10 == 0 else train).append(data)
    for split, parts in (("train", train), ("val", val)):
        np.frombuffer(b"".join(parts), dtype=np.uint8).tofile(os.path.join(CACHE_DIR, f"{split}.bin"))
    print(f"prepared {sum(map(len, train)):,} training and {sum(map(len, val)):,} validation bytes in {CACHE_DIR}")


def load_split(split):
    path = os.path.join(CACHE_DIR, f"{split}.bin")
    if not os.path.exists(path):
        sys.exit(f"error: {path} is missing; run `python prepare.py` first")
    return np.fromfile(path, dtype=np.uint8)


def make_batch(data, batch_size, rng):
    """Random windows of MAX_SEQ_LEN + 1 bytes: (inputs, targets) as int64 arrays."""
    starts = rng.integers(0, len(data) - MAX_SEQ_LEN - 1, size=batch_size)
    rows = np.stack([data[s:s + MAX_SEQ_LEN + 1] for s in starts]).astype(np.int64)
    return rows[:, :-1], rows[:, 1:]

# ---------------------------------------------------------------------------
# Evaluation (the fixed metric)
# ---------------------------------------------------------------------------


def evaluate_bpb(model, device="cpu"):
    """Bits per byte on the first EVAL_BYTES of the validation split, in non-overlapping windows."""
    import torch
    import torch.nn.functional as F
    data = load_split("val")[: EVAL_BYTES + 1]
    windows = (len(data) - 1) // MAX_SEQ_LEN
    x = torch.from_numpy(data[: windows * MAX_SEQ_LEN].astype(np.int64)).view(windows, MAX_SEQ_LEN)
    y = torch.from_numpy(data[1: windows * MAX_SEQ_LEN + 1].astype(np.int64)).view(windows, MAX_SEQ_LEN)
    with torch.no_grad():
        logits = model(x.to(device))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).float(), y.to(device).reshape(-1))
    return loss.item() / math.log(2)


if __name__ == "__main__":
    prepare()
