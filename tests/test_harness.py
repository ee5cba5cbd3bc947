"""The fixed harness (prepare.py) and the seed genome (train.py) on the tiny profile."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT


@pytest.fixture
def harness(tiny_env):
    """prepare.py imported under the tiny profile, with the session's prepared cache."""
    sys.path.insert(0, str(ROOT))
    try:
        import prepare
        yield importlib.reload(prepare)
    finally:
        sys.path.remove(str(ROOT))


def test_tokenizer_round_trips_text_including_unicode(harness):
    tok = harness.Tokenizer.load()
    assert tok.vocab_size == harness.PROFILES["tiny"].vocab_size
    for text in ["To be, or not to be: that is the question.", "Numbers 12345 and tabs\there", "naïve café 你好 🙂", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a", prepend=tok.bos_token_id)[0] == tok.bos_token_id


def test_token_bytes_zero_only_for_special_tokens(harness):
    tok = harness.Tokenizer.load()
    nbytes = harness.get_token_bytes().numpy()
    special = set(tok.enc.special_tokens_set)
    for i in range(tok.vocab_size):
        is_special = tok.decode([i]) in special
        assert (nbytes[i] == 0) == is_special


def test_packing_fills_rows_exactly_with_bos_first_and_only_real_text(harness):
    tok = harness.Tokenizer.load()
    B, T = 8, harness.MAX_SEQ_LEN
    loader = harness.make_dataloader(tok, B, T, "train", seed=3)
    tokens = np.load(harness._split_paths(harness.DATA_SOURCE, tok.vocab_size, "train")[0])
    haystack = tokens.astype(np.uint16).tobytes()
    for _ in range(3):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (B, T) and epoch == 1
        assert torch.equal(x[:, 1:], y[:, :-1])          # targets are the inputs shifted by one
        assert (x[:, 0] == tok.bos_token_id).all()       # every row starts with BOS
        for r in range(B):
            row = torch.cat([x[r], y[r, -1:]]).numpy()
            pieces = np.split(row, np.flatnonzero(row == tok.bos_token_id))
            for piece in pieces:
                body = piece[1:] if len(piece) and piece[0] == tok.bos_token_id else piece
                if len(body):  # each stretch between BOS tokens is contiguous text of the split: no padding, no junk
                    at = haystack.find(body.astype(np.uint16).tobytes())
                    while at != -1 and at % 2:
                        at = haystack.find(body.astype(np.uint16).tobytes(), at + 1)
                    assert at != -1


def test_training_order_depends_on_seed_but_validation_does_not(harness):
    tok = harness.Tokenizer.load()
    a = next(harness.make_dataloader(tok, 4, 32, "train", seed=1))[0]
    b = next(harness.make_dataloader(tok, 4, 32, "train", seed=2))[0]
    assert not torch.equal(a, b)
    v1 = next(harness.make_dataloader(tok, 4, 32, "val", seed=1))[0]
    v2 = next(harness.make_dataloader(tok, 4, 32, "val", seed=2))[0]
    assert torch.equal(v1, v2)


class UniformModel(torch.nn.Module):
    """Returns zero logits: every token has probability 1/V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab)


def _eval_targets(harness, tok, batch_size):
    loader = harness.make_dataloader(tok, batch_size, harness.MAX_SEQ_LEN, "val")
    rows, ys = harness.eval_rows(vocab_size=tok.vocab_size), []
    for start in range(0, rows, batch_size):
        ys.append(next(loader)[1][: rows - start])
    return torch.cat(ys).flatten()


def test_evaluate_bpb_of_uniform_logits_is_log2_vocab_times_tokens_per_byte(harness):
    tok = harness.Tokenizer.load()
    nbytes = harness.get_token_bytes()
    y = _eval_targets(harness, tok, 32)
    counted = int((nbytes[y] > 0).sum())
    total_bytes = int(nbytes[y].sum())
    expected = math.log2(tok.vocab_size) * counted / total_bytes
    assert harness.evaluate_bpb(UniformModel(tok.vocab_size), tok, 32) == pytest.approx(expected, rel=1e-6)  # float32 loss


def test_evaluate_bpb_scores_the_same_tokens_at_any_batch_size(harness):
    tok = harness.Tokenizer.load()
    model = UniformModel(tok.vocab_size)
    assert harness.evaluate_bpb(model, tok, 32) == pytest.approx(harness.evaluate_bpb(model, tok, 7), rel=1e-12)


def unigram_bpb(harness, tok) -> float:
    """Bits per byte of the best context-free model: training-split token frequencies (add-one smoothed)."""
    train = np.load(harness._split_paths(harness.DATA_SOURCE, tok.vocab_size, "train")[0])
    counts = np.bincount(train, minlength=tok.vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    y = _eval_targets(harness, tok, 32).numpy()
    nbytes = harness.get_token_bytes().numpy()[y]
    return float(-(logp[y] * (nbytes > 0)).sum() / (math.log(2) * nbytes.sum()))


def run_train(budget: float, env_extra=None) -> dict:
    env = {**os.environ, "EVO_PROFILE": "tiny", "EVO_TIME_BUDGET": str(budget), "EVO_DEVICE": "cpu", "EVO_SEED": "0",
           **(env_extra or {})}
    proc = subprocess.run([sys.executable, "train.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = dict(re.findall(r"^(\w+):\s+(\S+)$", proc.stdout.split("\n---\n", 1)[1], flags=re.M))
    return {k: float(v) for k, v in summary.items()}


@pytest.mark.slow
def test_tiny_run_beats_unigram_and_a_longer_budget_beats_a_shorter_one(harness):
    # Budgets in optimizer steps: both runs train exactly as far however busy the machine is
    # (a budget in seconds gives a loaded machine fewer steps, and start-up may eat into it).
    tok = harness.Tokenizer.load()
    baseline = unigram_bpb(harness, tok)
    short = run_train(600, {"EVO_STEP_BUDGET": "2"})
    long = run_train(600, {"EVO_STEP_BUDGET": "16"})
    for summary in (short, long):
        assert set(summary) >= {"val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                                "total_tokens_M", "num_steps", "num_params_M", "depth"}
    assert (short["num_steps"], long["num_steps"]) == (2, 16)
    assert long["val_bpb"] < baseline, (long, baseline)
    assert long["val_bpb"] < short["val_bpb"] - 0.05, (short, long)


@pytest.mark.slow
def test_a_budget_in_seconds_trains_until_the_budget_clock_says_stop(harness, tmp_path):
    # What the genome guarantees, whatever the load: it trains its whole budget, unless the budget
    # clock (start-up included) nears the runner's deadline first. Never how many seconds that takes.
    budget = 3.0
    summary = run_train(budget, {"EVO_OUTPUT": str(tmp_path)})
    clock = json.loads((tmp_path / harness.BUILD_FILE).read_text())["budget_clock"]
    deadline = harness.PROFILES["tiny"].startup_allowance + budget
    assert summary["training_seconds"] >= budget or clock >= deadline - max(1.0, 0.02 * budget), (summary, clock)
    assert summary["num_steps"] >= 2


def test_train_prints_parseable_progress_lines_and_fails_clearly_on_divergence(harness, tmp_path):
    # A genome whose loss turns NaN must stop with FAIL, not train on NaNs (a NaN soft-cap
    # poisons the logits from the first step, whatever the machine's speed).
    source = (ROOT / "train.py").read_text()
    source = re.sub(r"^LOGIT_SOFTCAP = .*$", 'LOGIT_SOFTCAP = float("nan")', source, flags=re.M)
    (tmp_path / "train.py").write_text(source)
    (tmp_path / "prepare.py").write_text((ROOT / "prepare.py").read_text())
    env = {**os.environ, "EVO_PROFILE": "tiny", "EVO_TIME_BUDGET": "5", "EVO_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert re.search(r"^FAIL: training loss is nan at step 0", proc.stdout, flags=re.M)
    healthy = subprocess.run([sys.executable, "train.py"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**env, "EVO_TIME_BUDGET": "1"})
    assert re.search(r"^step \d+ \|\s+[\d.]+% \| loss \d+\.\d+ \| lrm", healthy.stdout, flags=re.M)
    assert "val_bpb:" not in proc.stdout


def test_seed_model_returns_logits_without_targets_and_imports_without_training(harness):
    sys.path.insert(0, str(ROOT))
    try:
        import train
        train = importlib.reload(train)
    finally:
        sys.path.remove(str(ROOT))
    config = train.GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    model = train.GPT(config)
    model.init_weights()
    idx = torch.randint(0, 64, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 64)
    loss = model(idx, idx)
    assert loss.ndim == 0 and math.isfinite(loss.item())


def test_prepare_cli_describes_profiles_and_rejects_unknown_ones(tiny_env):
    out = subprocess.run([sys.executable, "prepare.py", "--describe", "--profile", "gpu"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert '"seq_len": 2048' in out and '"vocab_size": 8192' in out and '"time_budget": 300' in out
    bad = subprocess.run([sys.executable, "prepare.py", "--profile", "huge"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_folder_source_uses_val_files_or_a_stable_hash_split(harness, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    plays = [text for _, text in harness._shakespeare_documents()]
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pq.write_table(pa.table({"text": plays[:150]}), parquet / "shard_00000.parquet")
    pq.write_table(pa.table({"text": plays[150:160]}), parquet / "shard_val.parquet")
    splits = [split for split, _ in harness.iter_documents(str(parquet))]
    assert splits.count("train") == 150 and splits.count("val") == 10

    txt = tmp_path / "txt"
    txt.mkdir()
    for i, text in enumerate(plays):
        (txt / f"doc{i:03d}.txt").write_text(text)
    first = dict((text, split) for split, text in harness.iter_documents(str(txt)))
    (txt / "doc000.txt").rename(txt / "zzz-renamed.txt")   # a split must not depend on file names or order
    second = dict((text, split) for split, text in harness.iter_documents(str(txt)))
    assert first == second and set(first.values()) == {"train", "val"}

    cache = tmp_path / "cache"
    root = harness.prepare(str(parquet), harness.PROFILES["tiny"], cache_dir=str(cache), verbose=False)
    assert harness.is_prepared(str(parquet), 512, str(cache)) and str(cache) in root
    tok = harness.Tokenizer.load(str(parquet), 512, str(cache))
    assert tok.decode(tok.encode("Friends, Romans, countrymen")) == "Friends, Romans, countrymen"

    few = tmp_path / "few"
    few.mkdir()
    for i, text in enumerate(plays[:3]):
        (few / f"{i}.txt").write_text(text)
    harness.prepare(str(few), harness.PROFILES["tiny"], cache_dir=str(cache), verbose=False)   # still gets a val split
    offsets = np.load(harness._split_paths(str(few), 512, "val", str(cache))[1])
    assert len(offsets) - 1 >= 1


def test_unknown_source_fails_with_a_clear_message(harness, tmp_path):
    with pytest.raises(SystemExit, match="neither 'shakespeare', 'climbmix' nor a folder"):
        list(harness.iter_documents(str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .txt or .parquet files"):
        list(harness.iter_documents(str(tmp_path / "empty")))


def _score_with_separate_processes(folder, handed, env, processes=1):
    """Run the harness's model processes and scorer on a handed-over model, as the engine does (no sandbox)."""
    import json
    import socket
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(processes)]
    env = {**env, "EVO_OUTPUT": str(handed)}
    models = [subprocess.Popen([sys.executable, "-P", "prepare.py", "--serve-model"], cwd=folder,
                               pass_fds=[theirs.fileno()], stdout=subprocess.DEVNULL,
                               env={**env, "EVO_EVAL_SOCKET": str(theirs.fileno())}) for _, theirs in pairs]
    fds = [ours.fileno() for ours, _ in pairs]
    scorer = subprocess.Popen([sys.executable, "prepare.py", "--score"], cwd=folder, pass_fds=fds,
                              env={**env, "EVO_EVAL_SOCKETS": ",".join(map(str, fds))}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    for ours, theirs in pairs:
        ours.close()
        theirs.close()
    out, _ = scorer.communicate("go\n", timeout=300)
    for model in models:
        model.wait(timeout=60)
    return json.loads(next(l for l in out.splitlines() if l.startswith("EVO_SCORE "))[len("EVO_SCORE "):])


@pytest.mark.slow
def test_the_separate_scorer_agrees_with_the_in_process_evaluation_of_the_same_weights(harness, tmp_path):
    import json
    for name in ("train.py", "prepare.py"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    env = {**os.environ, "EVO_PROFILE": "tiny", "EVO_TIME_BUDGET": "2", "EVO_DEVICE": "cpu",
           "EVO_OUTPUT": str(tmp_path / "out")}
    trained = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert trained.returncode == 0, trained.stdout[-1000:] + trained.stderr[-1000:]
    assert "[harness] model handed over" in trained.stdout and "val_bpb:" not in trained.stdout
    result = _score_with_separate_processes(tmp_path, tmp_path / "out", env)
    assert result["verdict"] == "ok" and result["probe_batches"] >= 2, result
    assert result["largest_change"] < 1e-4  # the honest seed answers shuffled and probed rows alike
    # Spread over three fresh processes (probes never in their original's), the same weights score the same.
    spread = _score_with_separate_processes(tmp_path, tmp_path / "out", env, processes=3)
    assert spread["verdict"] == "ok" and spread["model_processes"] == 3 and spread["largest_change"] < 1e-4, spread
    assert spread["val_bpb"] == pytest.approx(result["val_bpb"], rel=1e-9)

    sys.path.insert(0, str(tmp_path))
    try:
        import train
        train = importlib.reload(train)
    finally:
        sys.path.remove(str(tmp_path))
    record = json.loads((tmp_path / "out" / "model.json").read_text())
    model = getattr(train, record["build"])(**record["config"])
    model.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True), assign=True)
    in_process = harness.evaluate_bpb(model.eval(), harness.Tokenizer.load(), harness.PROFILE.eval_batch_size)
    assert result["val_bpb"] == pytest.approx(in_process, abs=1e-4)
