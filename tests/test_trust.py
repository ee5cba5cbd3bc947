"""Trusted trials: the cheating corpus (tests/cheats.py) run as children of one sandboxed search.

Every cheat is caught (invalid, timeout, oom, limit) or neutralised (it runs, but what it
tried has no effect on its score or on anything outside its trial), and the honest seed
passes untouched. The corpus runs once, in a module-scoped search; each test reads the
trial of one cheat.
"""

from __future__ import annotations

import os
import shutil
import site
from pathlib import Path

import pytest

from cheats import CHEATS, DAEMON_MARKER, MODEL_TRAINED_MARKER, SECRET
from conftest import PROJECT_FILES, ROOT
from evo import Proposal, Proposer, RandomStrategy, RunOptions, SearchLoop, create_search, parse_devices
from evo.runner import bwrap_works
from evo.search import check_harness
from population import Search

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(bwrap_works()), reason=f"the sandbox cannot run here: {bwrap_works()}")]
BUDGET = 2
# No honest genome gets near this on the tiny profile (30 s of training reach ~2.4); the scores
# the cheats fake are ~0. Comparing with the seed instead would measure the machine's load.
HONEST_FLOOR = 1.5


class Corpus(Proposer):
    """Proposes each cheat of the corpus once, in order, as a child of the seed."""

    name = "corpus"

    def __init__(self, seed: str):
        self.queue = [(c.name, c.apply(seed)) for c in CHEATS]

    def mutate(self, parent, ctx):
        name, text = self.queue.pop(0)
        return Proposal({"train.py": text}, name, rationale="a cheat from tests/cheats.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache_dir):
    """The search after every cheat ran: (search folder, trial of each cheat by name, the seed's trial)."""
    folder = tmp_path_factory.mktemp("trust")
    for name in PROJECT_FILES:
        shutil.copyfile(ROOT / name, folder / name)
    saved = {k: os.environ.get(k) for k in ("EVO_CACHE", "EVO_PROFILE", "ANTHROPIC_API_KEY")}
    os.environ.update(EVO_CACHE=str(cache_dir), EVO_PROFILE="tiny", ANTHROPIC_API_KEY=SECRET)
    try:
        search = create_search("trust", root=folder / "runs", project=folder, profile="tiny", budget=BUDGET,
                               sandbox="bwrap")
        reason = SearchLoop(search, RandomStrategy(), Corpus((folder / "train.py").read_text()), parse_devices("cpu"),
                            RunOptions(trials=1 + len(CHEATS), max_memory_gb=2)).run()
        assert str(reason) == f"reached {1 + len(CHEATS)} trials", reason
        trials = search.trials()
        by_name = {t.description: t for t in trials if t.operator == "mutate"}
        yield search, by_name, next(t for t in trials if t.operator == "seed")
        search.close()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def log_of(search: Search, trial) -> str:
    return search.paths.trial(trial.number).run_log.read_text(errors="replace")


def test_the_honest_seed_is_scored_by_the_harness_in_a_sandbox(corpus):
    search, _, seed = corpus
    assert seed.status == "ok" and 1.0 < seed.value < 9.0
    p = seed.attrs["provenance"]
    assert (p["sandbox"], p["evaluator"], p["verdict"], p["clock"]) == ("bwrap", "harness", "ok", "cpu")
    assert p["harness_sha256"] == search.config.harness_sha256 and p["probe_batches"] >= 2
    assert "suspicious" not in p
    # Scored by fresh model processes that share nothing, within a start-up measured for this trial.
    assert p["model_processes"] == 2 and 0 < p["reference_startup"] < p["startup_allowance"]
    assert seed.metrics["training_seconds"] <= BUDGET + p["startup_allowance"]


@pytest.mark.parametrize("name", [c.name for c in CHEATS if c.expect.startswith("neutralised")])
def test_faked_and_patched_scores_are_ignored(corpus, name):
    search, trials, seed = corpus
    t = trials[name]
    if t.status == "invalid":  # caught outright is as good as neutralised
        return
    assert t.status == "ok", (t.status, t.error)
    assert t.value > HONEST_FLOOR, f"{name} scored {t.value} (the seed: {seed.value})"
    if name == "fake-summary":
        assert t.attrs["reported_val_bpb"] == pytest.approx(0.01)  # kept on record, never used


def test_code_that_walks_live_objects_is_flagged(corpus):
    _, trials, _ = corpus
    assert "walks every live object (gc.get_objects)" in trials["gc-target-search"].attrs["provenance"]["suspicious"]


@pytest.mark.parametrize("name", [c.name for c in CHEATS if c.expect == "non-causal"])
def test_attention_that_sees_later_tokens_is_invalid(corpus, name):
    _, trials, _ = corpus
    t = trials[name]
    assert t.status == "invalid" and t.value is None
    assert t.error.startswith(("non-causal", "rows are not independent")), t.error


@pytest.mark.parametrize("name", [c.name for c in CHEATS if c.expect == "stateful"])
def test_answers_that_depend_on_what_the_model_process_saw_before_are_invalid(corpus, name):
    """A memo of prefixes, or a temperature fitted to the first batch, makes one process agree with
    itself; a probe answered by another, fresh process disagrees."""
    _, trials, _ = corpus
    t = trials[name]
    assert t.status == "invalid" and t.value is None, (t.status, t.error, t.value)
    assert t.error.startswith(("non-causal", "stateful", "rows are not independent")), t.error


@pytest.mark.parametrize("name", [c.name for c in CHEATS if c.expect == "over-budget"])
def test_training_outside_the_budget_is_invalid(corpus, name):
    """Training in the start-up allowance, or in the model process, is work the budget counts."""
    _, trials, _ = corpus
    t = trials[name]
    assert t.status == "invalid" and t.value is None, (t.status, t.error, t.value)
    assert t.error.startswith("over budget"), t.error


def test_the_harness_loads_the_weights_without_the_genomes_override(corpus):
    search, trials, _ = corpus
    t = trials["trained-in-load-state-dict"]
    eval_log = (search.paths.trial(t.number).path / "eval.log").read_text(errors="replace")
    assert t.status == "ok" and MODEL_TRAINED_MARKER not in eval_log, (t.status, t.error)


def test_training_cannot_read_the_validation_split(corpus):
    search, trials, _ = corpus
    t = trials["train-on-validation"]
    assert "cheat: no validation data" in log_of(search, t) and t.status == "ok"


@pytest.mark.parametrize("name", ["untimed-steps", "slowed-clock"])
def test_a_genome_cannot_buy_time_by_not_counting_it(corpus, name):
    search, trials, _ = corpus
    t = trials[name]
    assert t.status == "timeout" and t.value is None, (t.status, t.error)
    assert "no model handed over" in t.error and "[evo] stopped: timeout" in log_of(search, t)


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


# -- round two ------------------------------------------------------------------------------------------

def test_no_genome_process_can_read_what_the_data_was_made_from(corpus):
    search, trials, _ = corpus
    t = trials["read-the-source-text"]
    assert "cheat: no source text anywhere" in log_of(search, t), log_of(search, t)[-2000:]
    assert t.status == "ok" and t.value > HONEST_FLOOR


def test_long_literal_data_is_flagged_and_a_genome_over_the_size_cap_is_refused(corpus):
    _, trials, _ = corpus
    assert any("KB of literal data" in f for f in trials["recite-the-text"].attrs["provenance"]["suspicious"])
    big = trials["oversized-genome"]
    assert big.status == "invalid_proposal" and "a mutable file may hold at most 131,072" in big.error, (big.status, big.error)


def test_a_hand_over_through_a_link_is_refused(corpus):
    search, trials, _ = corpus
    t = trials["link-the-hand-over"]
    assert "cheat: handed over a link" in log_of(search, t)
    assert t.status == "invalid" and t.value is None and "a symbolic link" in t.error, (t.status, t.error)


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
