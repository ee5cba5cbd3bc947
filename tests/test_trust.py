"""Trusted trials, cheats on the score: half of the cheating corpus (tests/cheats.py) run as children of
one sandboxed search.

Every cheat is caught (invalid, timeout, oom, limit) or neutralised (it runs, but what it tried
has no effect on its score), and the honest seed passes untouched. These cheats run once, in a
module-scoped search; each test reads the trial of one cheat. The cheats that try to reach past
their trial run in a search of their own, in tests/test_trust_escapes.py, so that two test
workers share the corpus.
"""

from __future__ import annotations

import pytest

from cheats import CHEATS, MODEL_TRAINED_MARKER, ON_THE_SCORE
from evo.runner import bwrap_works
from trust_corpus import BUDGET, log_of, run_corpus

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(bwrap_works()), reason=f"the sandbox cannot run here: {bwrap_works()}")]
HERE = tuple(c for c in CHEATS if c.expect in ON_THE_SCORE)
# No honest genome gets near this on the tiny profile (30 s of training reach ~2.4); the scores
# the cheats fake are ~0. Comparing with the seed instead would measure the machine's load.
HONEST_FLOOR = 1.5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache_dir):
    """The search after each cheat on the score ran: (search, trial of each cheat by name, the seed's trial)."""
    yield from run_corpus(tmp_path_factory.mktemp("trust"), cache_dir, HERE)


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


@pytest.mark.parametrize("name", [c.name for c in HERE if c.expect.startswith("neutralised")])
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


@pytest.mark.parametrize("name", [c.name for c in HERE if c.expect == "non-causal"])
def test_attention_that_sees_later_tokens_is_invalid(corpus, name):
    _, trials, _ = corpus
    t = trials[name]
    assert t.status == "invalid" and t.value is None
    assert t.error.startswith(("non-causal", "rows are not independent")), t.error


@pytest.mark.parametrize("name", [c.name for c in HERE if c.expect == "stateful"])
def test_answers_that_depend_on_what_the_model_process_saw_before_are_invalid(corpus, name):
    """A memo of prefixes, or a temperature fitted to the first batch, makes one process agree with
    itself; a probe answered by another, fresh process disagrees."""
    _, trials, _ = corpus
    t = trials[name]
    assert t.status == "invalid" and t.value is None, (t.status, t.error, t.value)
    assert t.error.startswith(("non-causal", "stateful", "rows are not independent")), t.error


@pytest.mark.parametrize("name", [c.name for c in HERE if c.expect == "over-budget"])
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


def test_long_literal_data_as_text_or_numbers_is_flagged_and_a_genome_over_the_size_cap_is_refused(corpus):
    _, trials, _ = corpus
    for name in ("recite-the-text", "recite-the-text-as-numbers"):
        assert any("KB of literal data" in f for f in trials[name].attrs["provenance"].get("suspicious", ())), name
    big = trials["oversized-genome"]
    assert big.status == "invalid_proposal" and "a mutable file may hold at most 131,072" in big.error, (big.status, big.error)


def test_a_hand_over_through_a_link_is_refused(corpus):
    search, trials, _ = corpus
    t = trials["link-the-hand-over"]
    assert "cheat: handed over a link" in log_of(search, t)
    assert t.status == "invalid" and t.value is None and "a symbolic link" in t.error, (t.status, t.error)
