"""The engine without the loop: a whole search stepped by ask, run and tell, with genomes of the
user's own handed in by enqueue; the events it emits; the devices.json record the loop writes.

Then the engine's decisions that once had a whole training search each (test_search): what a
crossover commits, that a known genome is never trained again, that invalid proposals do not end
a search early (through the loop: its planning again is what is checked); and those of `evo run`
tests in test_search, test_noise, test_promotion and test_llm_overnight, which keep checking what
the CLI shows: what is re-evaluated, measured first and kept, that an infeasible result is no
parent, what is promoted, what a device does while the API is down and that it does not use up the
trial limit. Their trials run in this process (`InstantRunner`): a
decision needs a result, not a trial process."""

from __future__ import annotations

import ast
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, assert_promoted_at_twice_the_budget, assert_trials_match_git
from evo import (BackoffSpec, Engine, EventKind, EvolveStrategy, GreedyStrategy, LimitSpec, NoiseSpec, OfflineProposer,
                 PromotionSpec, Proposal, Proposer, RunOptions, Search, SearchError, SearchLoop, StopKind, create_search,
                 make_strategy, parse_devices)
from evo.engine import AUTO
from evo.promotion import parse_ladder
from evo.proposers import ProposerUnavailable
from evo.strategies import Plan, Strategy
from in_process import InstantRunner
from analysis.promotion import rung_rows
from population.devices import DeviceRow, DevicesRecord, RunFacts
from population.lineage import MIN_GAIN_ATTR, NOISE_MULTIPLE, Lineage

OPTIMUM = {"LR": "0.03", "DEPTH": "6", "WARMDOWN_RATIO": "0.4", "BATCH": "128"}  # the instant genome's best knobs


def with_knobs(text: str, **knobs: str) -> str:
    """The instant genome with some of its UPPERCASE knobs set."""
    for name, value in knobs.items():
        text = re.sub(rf"^{name} = [^ ]+", f"{name} = {value}", text, flags=re.M)
    return text


@pytest.fixture
def engine(instant_project):
    events = []
    search = create_search("steps", root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
    engine = Engine(search, GreedyStrategy(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=7)),
                    on_event=lambda kind, info: events.append((kind, info)))
    engine.events = events
    yield engine
    engine.close()
    search.close()


def test_a_whole_search_runs_through_ask_tell_and_enqueue_without_the_loop(engine, instant_project):
    seed_text = (instant_project / "train.py").read_text()
    first = engine.ask()
    assert (first.number, first.operator, first.parents) == (0, "seed", [])
    told = engine.tell(first, engine.run(first))
    assert told.status == "ok" and told.kept and told.new_best and told.told

    # A genome of the user's own is the next trial, whatever the strategy would have planned.
    engine.enqueue({"train.py": with_knobs(seed_text, **OPTIMUM)}, note="the known optimum")
    mine = engine.ask()
    assert (mine.number, mine.operator, mine.parents, mine.description) == (1, "enqueued", [], "the known optimum")
    told = engine.tell(mine, engine.run(mine))
    assert told.kept and told.value == pytest.approx(1.0) and told.value < engine.search.lineage().score_of(0)
    assert engine.search.lineage().best.trial == 1

    # The same genome again is recognised and never trained twice; a worse one is told, and not kept.
    engine.enqueue({"train.py": with_knobs(seed_text, **OPTIMUM)}, note="the optimum once more")
    engine.enqueue({"train.py": with_knobs(seed_text, LR="0.3")}, note="far too fast", parent=1)
    worse = engine.ask()
    assert (worse.number, worse.operator, worse.parents) == (3, "enqueued", [1])
    told = engine.tell(worse, engine.run(worse))
    assert told.status == "ok" and not told.kept and not told.new_best

    # The rest of the search comes from the strategy, until the trial limit.
    while (ticket := engine.ask()) is not None:
        assert ticket.operator == "mutate" and ticket.parents == [1]  # greedy: the best so far
        assert not engine.tell(ticket, engine.run(ticket)).kept  # nothing beats the optimum
    assert engine.limit_reached().kind is StopKind.TRIALS

    trials = engine.search.trials()
    assert len(trials) == 7 and all(t.status in ("ok", "duplicate") for t in trials)
    assert [t.status for t in trials[:4]] == ["ok", "ok", "duplicate", "ok"]
    assert trials[2].attrs["duplicate_of"] == 1 and trials[2].operator == "enqueued"
    assert {t.proposer for t in trials[1:4]} == {"user"}
    assert engine.search.repo.parents(trials[3].commit) == [trials[1].commit]  # its lineage, in git too
    assert "diff against parent" in engine.search.paths.trial(3).diff.read_text()
    kinds = [kind for kind, _ in engine.events]
    assert kinds.count("started") == sum(t.status == "ok" for t in trials) and kinds.count("finished") == 7
    assert all(type(kind) is str and kind in set(EventKind) for kind in kinds)


def test_enqueue_refuses_files_the_search_does_not_evolve_and_parents_it_does_not_have(engine):
    with pytest.raises(SearchError, match=r"outside the mutable set: \['prepare.py'\].*evolves train.py"):
        engine.enqueue({"prepare.py": "x = 1\n"})
    with pytest.raises(SearchError, match="trial #5 has no genome"):
        engine.enqueue({"train.py": "x = 1\n"}, parent=5)
    assert engine.ready == []


def test_ask_refuses_a_second_trial_on_a_busy_slot(engine):
    ticket = engine.ask()
    with pytest.raises(SearchError, match="every slot .cpu0. has a trial running: tell one of them first"):
        engine.ask()
    assert engine.tell(ticket, engine.run(ticket)).kept


def test_the_event_kinds_are_the_ones_the_code_emits():
    emitted = set()
    for path in (ROOT / "evo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "on_event"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                emitted.add(node.args[0].value)
    assert emitted == {kind.value for kind in EventKind}


def test_the_devices_record_reads_and_writes_the_json_it_always_had(tmp_path):
    # As evo 0.x wrote it, key for key.
    old = {"pid": 12, "updated": 1700000000.5,
           "slots": [{"slot": "cpu0", "device": "cpu", "trial": 7, "seconds": 2.5, "fraction": 0.4, "loss": 3.25},
                     {"slot": "cpu1", "device": "cpu", "trial": None, "seconds": None, "fraction": None, "loss": None}],
           "run": {"target": 50, "hours": None, "started": 1699999000.0, "finished": 6, "stopping": False},
           "waiting": {"since": 1.0, "retry_at": 2.0, "error": "overloaded", "tries": 2},
           "proposals": [{"operator": "mutate", "parents": [3], "proposer": "offline", "started": 5.0, "seconds": 1.5}]}
    record = DevicesRecord.from_json(json.dumps(old))
    assert record.slots[0] == DeviceRow("cpu0", "cpu", 7, 2.5, 0.4, 3.25) and record.run.finished == 6
    assert record.to_json() == json.dumps(old)
    path = tmp_path / "devices.json"
    DevicesRecord(pid=1, updated=2.0, slots=[DeviceRow("cuda0", "cuda:0")], run=RunFacts(target=3)).write(path)
    assert DevicesRecord.read(path).slots == [DeviceRow("cuda0", "cuda:0")]
    assert list(json.loads(path.read_text())) == ["pid", "updated", "slots", "run", "waiting", "proposals"]
    assert DevicesRecord.read(Path(tmp_path / "missing.json")) is None


@pytest.mark.slow
def test_the_readme_notebook_example_runs(project):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("The same engine is a library a notebook can drive", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0].replace("budget=5", "budget=1")  # the same calls, shorter trials
    text = (project / "train.py").read_text()
    (project / "my_train.py").write_text(text.replace("EMBEDDING_LR = 0.6 ", "EMBEDDING_LR = 0.5 "))
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("0 seed ok") and lines[1].startswith("1 enqueued ok"), proc.stdout
    with Search.open("nb", root=project / "runs") as search:
        trials = search.trials()
    assert len(trials) == 6 and trials[1].proposer == "user" and trials[1].description == "my own idea"


# -- decisions that once took a whole training search -----------------------------------------

@pytest.fixture
def instant_engine(instant_project):
    """An engine over a new search of the instant genome whose trials run in this process: call it with the
    strategy, proposer and options; `.runner.runs` lists the trials it ran."""
    made = []

    def make(strategy, proposer, options, name="e", on_event=None):
        search = create_search(name, root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
        made.append(Engine(search, strategy, proposer, options, runner=InstantRunner(), on_event=on_event))
        return made[-1]

    yield make
    for engine in made:
        engine.close()
        engine.search.close()


def drive(engine):
    """What the loop does on one device: ask, run and tell until nothing more is to run; then why the search
    stopped, or None when it only waits (an API outage waited out)."""
    while (ticket := engine.ask()) is not None:
        engine.tell(ticket, engine.run(ticket))
    return engine.limit_reached()


class CrossTheFirstTwoChildren(Strategy):
    """Mutates the seed twice, then crosses its two children: a deterministic crossover for the test."""

    name = "cross-first-two"

    def plan(self, lineage, rng):
        kids = [i.trial for i in lineage.ranked() if i.operator == "mutate"]
        if len(kids) >= 2:
            return Plan("crossover", tuple(sorted(kids[:2])))
        return Plan("mutate", (lineage.seed.number,))


def test_crossover_child_is_a_merge_commit_of_both_parents(instant_engine):
    # Was test_search.py's (a SearchLoop training train.py): the commit is the engine's, the training was not needed.
    engine = instant_engine(CrossTheFirstTwoChildren(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=5)))
    drive(engine)
    search = engine.search
    trials = search.trials()
    crosses = [t for t in trials if t.operator == "crossover"]
    assert crosses, [(t.number, t.operator, t.status) for t in trials]
    child = crosses[0]
    a, b = (next(t for t in trials if t.number == n) for n in child.parents)
    assert search.repo.parents(child.commit) == [a.commit, b.commit]
    message = search.repo.message(child.commit)
    assert f"Evo-Parents: #{a.number} #{b.number}" in message and "Evo-Operator: crossover" in message
    assert child.description.startswith(f"cross #{a.number} x #{b.number}")
    assert_trials_match_git(search)


class SameEditEveryTime(Proposer):
    """Always sets LR to 0.05: after the first child, every proposal is a genome the search knows."""

    name = "same-edit"

    def mutate(self, parent, ctx):
        return Proposal({"train.py": with_knobs(parent.files["train.py"], LR="0.05")}, "LR -> 0.05")


def test_identical_genomes_are_recorded_as_duplicates_and_never_trained_again(instant_engine):
    # Was test_search.py's (a SearchLoop training train.py, the edit MATRIX_LR -> 0.05).
    engine = instant_engine(GreedyStrategy(), SameEditEveryTime(), RunOptions(limits=LimitSpec(trials=4)))
    drive(engine)
    search = engine.search
    trials = search.trials()
    assert [t.status for t in trials[:2]] == ["ok", "ok"]
    for t in trials[2:]:
        assert t.status == "duplicate" and t.attrs["duplicate_of"] == 1 and t.value == trials[1].value
        assert not search.paths.trial(t.number).run_log.exists()
        assert t.tree == trials[1].tree
    assert engine.runner.runs == [0, 1]  # the duplicates were never handed to the runner


class InvalidEveryOtherTime(Proposer):
    """Fails every second proposal, like an LLM whose edits do not apply."""

    name = "flaky"

    def __init__(self):
        self.calls = 0
        self.offline = OfflineProposer()

    def mutate(self, parent, ctx):
        self.calls += 1
        if self.calls % 2 == 0:
            return Proposal(parent.files, "", ok=False, error="edit did not apply")
        return self.offline.mutate(parent, ctx)


@pytest.mark.parametrize("strategy", [GreedyStrategy(), EvolveStrategy(crossover_rate=0.0)], ids=["greedy", "evolve"])
def test_invalid_proposals_are_recorded_and_the_search_goes_on_to_its_limit(instant_project, strategy):
    # Was test_search.py's, with trial processes. Still the loop: after a proposal that ran nothing it must plan
    # again rather than conclude there is nothing left (evolve prepares proposals ahead, greedy one at a time).
    search = create_search("inv", root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
    reason = SearchLoop(search, strategy, InvalidEveryOtherTime(), parse_devices("cpu"),
                        RunOptions(limits=LimitSpec(trials=9)),
                        runner=InstantRunner()).run()
    trials = search.trials()
    assert str(reason) == "reached 9 trials" and len(trials) == 9
    invalid = [t for t in trials if t.status == "invalid_proposal"]
    assert len(invalid) >= 3 and all(t.error == "edit did not apply" and not t.commit for t in invalid)
    assert all(json.loads(search.paths.trial(t.number).proposal.read_text())["ok"] is False for t in invalid)
    search.close()


def test_noise_runs_measure_the_seed_first_and_auto_min_gain_is_recorded_on_every_trial(instant_engine, monkeypatch):
    # The decisions of test_noise.py's test of this name, which runs `evo run` and also checks what `evo status` says.
    monkeypatch.setenv("EVO_TEST_NOISE", "0.05")  # a seed-dependent error, as training has
    engine = instant_engine(GreedyStrategy(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=14),
                                                                          noise=NoiseSpec(noise_runs=3, min_gain=AUTO)))
    assert drive(engine).kind is StopKind.TRIALS
    trials = engine.search.trials()
    assert [(t.operator, t.parents, t.seed) for t in trials[:4]] == [("seed", [], 0), ("reeval", [0], 1),
                                                                    ("reeval", [0], 2), ("reeval", [0], 3)]
    assert all(t.operator in ("mutate", "crossover") for t in trials[4:])      # children only after the floor
    seed_values = [t.value for t in trials[:4]]
    assert len(set(seed_values)) == 4                                          # the noise reached each run
    assert trials[4].attrs[MIN_GAIN_ATTR] == pytest.approx(NOISE_MULTIPLE * statistics.stdev(seed_values))
    assert all(MIN_GAIN_ATTR in t.attrs for t in trials)
    lineage = Lineage(trials)
    assert all(bool(t.attrs.get("kept")) == lineage.kept(t.number) for t in trials)   # the engine and the replay agree
    assert lineage.noise_sd() == pytest.approx(statistics.stdev(seed_values))  # what `evo status` shows as the floor


def test_reevaluation_ranks_the_best_by_its_mean_over_new_seeds(instant_engine, monkeypatch):
    # The decision of test_search.py's test of this name, which trains the real train.py through `evo run` and
    # reads the best, its mean and its spread from `evo status --json` (what the engine's lineage says here).
    monkeypatch.setenv("EVO_TEST_NOISE", "0.05")  # each seed scores differently, as training does
    engine = instant_engine(GreedyStrategy(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=3),
                                                                          noise=NoiseSpec(reeval=2)))
    drive(engine)
    trials = engine.search.trials()
    reevals = [t for t in trials if t.operator == "reeval"]
    assert [(t.parents, t.seed) for t in reevals] == [([0], 1), ([0], 2)]
    values = [trials[0].value] + [t.value for t in reevals]
    best = engine.search.lineage().best
    assert best.trial == 0
    assert best.score == pytest.approx(sum(values) / 3)
    assert best.spread is not None and best.spread > 0


def test_infeasible_trials_stay_on_record_but_are_never_parents_or_best(instant_engine):
    # The decision of test_search.py's test of this name, which trains the real train.py through `evo run` and
    # checks its exit code, what it prints and `evo status --json`. The instant genome reports a peak of 1 MB.
    engine = instant_engine(GreedyStrategy(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=3),
                                                                          max_vram_gb=0.0001))
    reason = drive(engine)
    assert reason.kind is StopKind.ERROR and "cannot plan a child" in str(reason)
    assert engine.search.lineage().best is None
    trials = engine.search.trials()
    assert [t.status for t in trials] == ["ok"] and trials[0].constraints["vram_gb"] > 0


def test_a_search_promotes_its_best_genomes_at_twice_the_budget_and_reports_how_well_the_small_scale_predicted(
        instant_engine):
    # The decisions of test_promotion.py's test of this name, which runs `evo run` and also checks `evo status`,
    # the report and the ladder refused on resume.
    engine = instant_engine(make_strategy("evolve"), OfflineProposer(),
                            RunOptions(limits=LimitSpec(trials=14),
                                       promotion=PromotionSpec(ladder=parse_ladder("budget*2"))))
    drive(engine)
    lineage = engine.search.lineage()
    assert_promoted_at_twice_the_budget(engine.search.trials(), lineage)
    assert rung_rows(lineage)[1].rho == pytest.approx(1.0)          # a pure shift keeps the ranking


class DownForTwoCalls(Proposer):
    """An API that answers, is overloaded for its 2nd and 3rd call, and answers again (the offline edits, as if
    written by the API: `remote`, so an answer ends the outage)."""

    name = "flaky-api"

    def __init__(self):
        self.calls = 0
        self.offline = OfflineProposer()

    def mutate(self, parent, ctx):
        self.calls += 1
        if self.calls in (2, 3):
            raise ProposerUnavailable("overloaded")
        proposal = self.offline.mutate(parent, ctx)
        proposal.remote = True
        return proposal


def test_an_api_outage_in_the_middle_waits_keeps_devices_busy_and_the_search_finishes(instant_engine):
    # The decisions of test_llm_overnight.py's test of this name, which runs `evo run` against a fake API server
    # and also checks what the run prints and `evo status` says. The outage's clock is the test's: a wait ends
    # when the test says so, not when a machine under load gets there.
    now = [1000.0]
    events = []
    engine = instant_engine(GreedyStrategy(), DownForTwoCalls(), RunOptions(limits=LimitSpec(trials=6),
                                                                       backoff=BackoffSpec(api_backoff=(10.0, 40.0))),
                            on_event=lambda kind, info: events.append((kind, info)))
    engine.outages.clock = lambda: now[0]
    assert drive(engine) is None and engine.outages.down   # nothing to run but wait: the search does not stop
    waiting = [t for t in engine.search.trials() if t.operator == "reeval"]
    assert len(waiting) == 4 and all(t.while_waiting for t in waiting)  # seed and #1 re-evaluated to 3 each
    now[0] += 10                                            # the wait is over: the API is asked again, still down
    assert drive(engine) is None and engine.outages.down
    now[0] += 20                                            # twice as long the second time; then it answers
    assert drive(engine).kind is StopKind.TRIALS
    kinds = [kind for kind, _ in events]
    assert kinds.count("waiting") == 2 and kinds.count("resumed") == 1
    assert [info["seconds"] for kind, info in events if kind == "waiting"] == [10.0, 20.0]
    trials = engine.search.trials()
    assert not any("kept failing" in (t.error or "") for t in trials)  # an outage is no trial's failure
    waiting = [t for t in trials if t.operator == "reeval" and t.counts]
    assert waiting and all(t.while_waiting for t in waiting)  # the device re-evaluated while the API was down,
    assert sum(1 for t in trials if t.spends_trial) == 6  # and that did not use up the search's trials
    assert sum(1 for t in trials if t.counts) == 6 + len(waiting)
    assert sum(1 for t in trials if t.operator == "mutate" and t.status == "ok") >= 3  # and mutated once it was back
