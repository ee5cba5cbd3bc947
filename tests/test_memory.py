"""The lab notebook (population.notebook), what proposers learn from it, and `evo ideas` (issue 23)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_evo
from evo.proposers import Genome, OfflineProposer, ProposalContext
from population import Lineage, genome_hash
from population.notebook import FILE, Change, Idea, Notebook, Recall, task_of

SEED = (ROOT / "train.py").read_text()


def idea(trial: int, changes: tuple[Change, ...], effect: float, *, search="old", noise_sd=None) -> Idea:
    return Idea(search_id=f"{search}@t", trial=trial, search=search, task="t", profile="tiny", budget=1.0,
                metric="val_bpb", direction="minimize", operator="mutate", proposer="offline", parents=(0,),
                description=", ".join(str(c) for c in changes), changes=changes, parent_score=2.0,
                score=2.0 - effect, effect=effect, noise_sd=noise_sd, status="ok")


def ctx(seed: int, memory: Recall | None) -> ProposalContext:
    return ProposalContext(program="", mutable=["train.py"], settings={"profile": "tiny", "seq_len": 128},
                           lineage=Lineage([]), rng=random.Random(seed), memory=memory)


def test_the_offline_proposer_does_not_try_a_third_time_a_move_measured_worse_twice():
    """The quick start's `HEAD_DIM 32 -> 16`, worse each of three times (issue 23): with two measurements
    in the notebook, well beyond its noise floor, the proposer stops drawing it."""
    worse = Change("HEAD_DIM", 32, 16)
    memory = Recall.of([idea(1, (worse,), -0.05, noise_sd=0.005), idea(2, (worse,), -0.04, noise_sd=0.005)])
    parent = Genome(trial=0, commit="c0", files={"train.py": SEED})
    proposer = OfflineProposer()
    without = [proposer.mutate(parent, ctx(seed, None)).description for seed in range(60)]
    assert any("HEAD_DIM 32 -> 16" in d for d in without)  # what the proposer did before it had memory
    with_memory = [proposer.mutate(parent, ctx(seed, memory)) for seed in range(60)]
    assert all(p.ok for p in with_memory)
    assert not any("HEAD_DIM 32 -> 16" in p.description for p in with_memory)
    # Other moves of the same knob are still tried (the notebook rules out a move, not a constant).
    assert any("HEAD_DIM 32 -> 64" in p.description for p in with_memory)


def test_the_offline_proposer_leans_towards_a_move_measured_better_but_still_explores():
    better = Change("MATRIX_LR", 0.04, 0.05)
    memory = Recall.of([idea(1, (better,), 0.03, noise_sd=0.005)])
    parent = Genome(trial=0, commit="c0", files={"train.py": SEED})
    proposer = OfflineProposer()
    picked = [proposer.mutate(parent, ctx(seed, memory)).description for seed in range(80)]
    plain = [proposer.mutate(parent, ctx(seed, None)).description for seed in range(80)]
    hits = sum("MATRIX_LR 0.04 -> 0.05" in d for d in picked)
    assert hits > 3 * max(1, sum("MATRIX_LR 0.04 -> 0.05" in d for d in plain))
    assert hits < len(picked)  # exploration: other moves still get drawn
