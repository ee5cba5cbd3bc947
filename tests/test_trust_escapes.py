"""Trusted trials, cheats on the machine: the half of the cheating corpus (tests/cheats.py) that tries
to reach past its trial, run as children of one sandboxed search.

Every cheat is caught (oom, limit) or neutralised: what it tried has no effect on anything outside
its trial (the harness, later trials, the engine, the interpreter, the host's processes). These
cheats run once, in a module-scoped search; each test reads the trial of one cheat. The cheats on
the score run in tests/test_trust.py, in a search of their own, so that two test workers share
the corpus.
"""

from __future__ import annotations

import os
import site
from pathlib import Path

import pytest

from cheats import CHEATS, DAEMON_MARKER, ON_THE_SCORE, SECRET
from evo.runner import bwrap_works
from evo.search import check_harness
from trust_corpus import log_of, run_corpus

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(bwrap_works()), reason=f"the sandbox cannot run here: {bwrap_works()}")]
HERE = tuple(c for c in CHEATS if c.expect not in ON_THE_SCORE)
# No honest genome gets near this on the tiny profile (30 s of training reach ~2.4).
HONEST_FLOOR = 1.5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache_dir):
    """The search after each cheat on the machine ran: (search, trial of each cheat by name, the seed's trial)."""
    yield from run_corpus(tmp_path_factory.mktemp("trust-escapes"), cache_dir, HERE)


def test_the_harness_cannot_be_edited_from_a_trial(corpus):
    search, trials, _ = corpus
    log = log_of(search, trials["edit-the-harness"])
    assert "could not write prepare.py" in log and "could not write ../../harness/prepare.py" in log
    check_harness(search)  # the search's copy still has the hash recorded at creation
    assert "cheat" not in (search.paths.harness / "prepare.py").read_text()


def test_nothing_a_trial_writes_reaches_the_next_one(corpus):
    search, trials, _ = corpus
    assert "cheat: stashed at" in log_of(search, trials["stash-weights"])  # it wrote, but only in its sandbox
    assert "cheat: no stash from an earlier trial" in log_of(search, trials["resume-stashed-weights"])
    # What it could write (its private /tmp and HOME, its own compile cache) went with its sandbox.
    assert not list(search.folder.rglob("evo-stash")) and not Path("/tmp/evo-stash").exists()


def test_no_trial_sees_the_engines_keys(corpus):
    search, trials, _ = corpus
    assert "cheat: no key anywhere" in log_of(search, trials["read-the-engine-environment"])
    for path in search.folder.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".patch", ".md"):
            assert SECRET not in path.read_text(errors="replace"), path


def test_a_detached_daemon_dies_with_its_trial(corpus):
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert DAEMON_MARKER.encode() not in cmdline, f"process {pid} outlived its trial"


def test_killing_everything_in_sight_does_not_stop_the_search(corpus):
    search, trials, _ = corpus
    assert "killing my parent" in log_of(search, trials["kill-the-parent"])
    later = [t for t in search.trials() if t.number > trials["kill-the-parent"].number]
    assert later and all(t.state != "RUNNING" for t in later)


def test_the_interpreter_cannot_be_changed_from_a_trial(corpus):
    search, trials, _ = corpus
    assert "could not plant" in log_of(search, trials["plant-a-startup-file"])
    assert not any((Path(p) / "zz-evo-cheat.pth").exists() for p in site.getsitepackages())


def test_a_flood_of_output_is_stopped_and_marked(corpus):
    search, trials, _ = corpus
    t = trials["flood-stdout"]
    assert t.status == "limit" and "printed more than 20 MB" in t.error
    assert search.paths.trial(t.number).run_log.stat().st_size < 25 << 20


def test_memory_is_measured_and_limited_by_the_engine(corpus):
    _, trials, seed = corpus
    t = trials["hog-memory"]
    assert t.status == "oom" and "over the slot's 2048 MB" in t.error
    assert 0 < seed.metrics["peak_vram_mb"] < 2048  # the engine's measure of the seed, not the seed's word
    assert seed.attrs["provenance"]["memory"] == "measured by the engine"


def test_no_genome_process_can_read_what_the_data_was_made_from(corpus):
    search, trials, _ = corpus
    t = trials["read-the-source-text"]
    assert "cheat: no source text anywhere" in log_of(search, t), log_of(search, t)[-2000:]
    assert t.status == "ok" and t.value > HONEST_FLOOR


def test_nothing_a_trial_hides_in_its_folder_reaches_the_next_one(corpus):
    search, trials, _ = corpus
    stash = trials["stash-in-a-nested-repository"]
    assert "cheat: stashed weights in notes/.git and left a named pipe" in log_of(search, stash)
    assert stash.status == "ok"  # the pipe it left where the engine reads the genome's code stopped nothing
    assert "cheat: nothing left by an earlier trial" in log_of(search, trials["resume-from-a-nested-repository"])


def test_memory_held_in_tmpfs_counts_towards_the_limit(corpus):
    search, trials, _ = corpus
    t = trials["hog-tmpfs"]
    assert "cheat: hid 1 GiB in /dev/shm" in log_of(search, t)
    assert t.status == "oom" and "over the slot's 2048 MB" in t.error, (t.status, t.error)
