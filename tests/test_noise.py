"""The noise floor, measured and used: --noise-runs, --min-gain, and the one rule of "better" that the
loop and every replay share (population.lineage)."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics

import pytest

from analysis.noise import noise_floor, within_noise
from conftest import run_evo
from population.lineage import MIN_GAIN_ATTR, NOISE_MULTIPLE, Lineage, auto_min_gain
from population.search import Search
from population.store import TrialRecord

T0 = dt.datetime(2026, 1, 1)


def rec(number: int, operator: str, value: float | None, *, parents=(), tree: str | None = None,
        min_gain: float | None = None, feasible: bool = True, finished: float | None = None) -> TrialRecord:
    attrs = {"operator": operator, "parents": list(parents), "status": "ok" if value is not None else "crash",
             "tree": tree or f"t{number}", "commit": f"c{number}"}
    if min_gain is not None:
        attrs[MIN_GAIN_ATTR] = min_gain
    return TrialRecord(number=number, state="COMPLETE" if value is not None else "FAIL", value=value, attrs=attrs,
                       constraints={} if feasible else {"vram_gb": 1.0},
                       finished=T0 + dt.timedelta(minutes=number if finished is None else finished))


# -- the rule ------------------------------------------------------------------------------------

def test_a_child_better_by_less_than_the_min_gain_is_neither_kept_nor_the_best():
    trials = [rec(0, "seed", 2.0), rec(1, "mutate", 1.97, parents=[0], min_gain=0.05)]
    lineage = Lineage(trials)
    assert not lineage.kept(1) and lineage.best.trial == 0
    assert [i.trial for i in lineage.ranked()] == [0, 1]      # the better mean ranks second: it did not count
    assert Lineage(trials[:1]).would_keep(1.97, operator="mutate", feasible=True, min_gain=0.05) is False
    assert Lineage(trials[:1]).would_keep(1.94, operator="mutate", feasible=True, min_gain=0.05) is True
    more = trials + [rec(2, "mutate", 1.94, parents=[0], min_gain=0.05)]
    lineage = Lineage(more)
    assert lineage.kept(2) and lineage.best.trial == 2
    assert [r.gain for r in lineage.history()] == [None, None, pytest.approx(0.06)]


def test_a_reevaluation_moves_the_best_only_by_more_than_the_min_gain():
    # #1 was kept at 1.80; re-measured at 2.00 its mean is 1.90: #2 (1.88) is better, but by less than 0.05.
    trials = [rec(0, "seed", 2.0), rec(1, "mutate", 1.8, parents=[0], min_gain=0.05),
              rec(2, "mutate", 1.88, parents=[1], min_gain=0.05),
              rec(3, "reeval", 2.0, parents=[1], tree="t1", min_gain=0.05)]
    assert Lineage(trials).best.trial == 1
    # A second bad re-measure (mean 1.933) puts #2 ahead by more than the min gain.
    trials.append(rec(4, "reeval", 2.0, parents=[1], tree="t1", min_gain=0.05))
    lineage = Lineage(trials)
    assert lineage.best.trial == 2 and not lineage.kept(4)
    # Without a min gain the first re-measure already hands the best over.
    assert Lineage([rec(t.number, t.operator, t.value, parents=t.parents, tree=t.tree) for t in trials[:4]]).best.trial == 2


def _old_rule(trials: list[TrialRecord]) -> tuple[int | None, set[int]]:
    """The rule before min gains: best = feasible genome with the lowest mean (ties: earlier trial); kept = fresh,
    feasible and strictly below the best mean when it arrived."""
    values: dict[str, list[float]] = {}
    first: dict[str, int] = {}
    infeasible: set[str] = set()
    kept = set()
    for t in sorted(trials, key=lambda t: (t.finished, t.number)):
        if not t.finished_ok:
            continue
        means = [statistics.fmean(v) for k, v in values.items() if k not in infeasible]
        if t.operator != "reeval" and t.feasible and (not means or t.value < min(means)):
            kept.add(t.number)
        values.setdefault(t.tree, []).append(t.value)
        first.setdefault(t.tree, t.number)
        if not t.feasible:
            infeasible.add(t.tree)
    pool = [(statistics.fmean(v), first[k]) for k, v in values.items() if k not in infeasible]
    return (min(pool)[1] if pool else None), kept


def _random_search(rng: random.Random, n: int, *, min_gain: float | None) -> list[TrialRecord]:
    """A search with crashes, infeasible results, ties and re-evaluations arriving out of order."""
    trials = [rec(0, "seed", 2.0, min_gain=min_gain)]
    for i in range(1, n):
        r = rng.random()
        finished = i + rng.choice((0, 0, 0.5, 2.5))
        if r < 0.25 and len(trials) > 1:
            target = rng.choice([t for t in trials if t.finished_ok])
            trials.append(rec(i, "reeval", round(target.value + rng.gauss(0, 0.05), 2), parents=[target.number],
                              tree=target.tree, min_gain=min_gain, finished=finished))
        else:
            value = None if r < 0.3 else round(2.0 - 0.01 * i + rng.gauss(0, 0.05), 2)  # rounding makes ties
            trials.append(rec(i, "mutate", value, parents=[0], min_gain=min_gain, feasible=rng.random() > 0.1,
                              finished=finished))
    return trials


@pytest.mark.parametrize("seed", range(6))
def test_without_a_min_gain_the_rule_is_the_one_every_earlier_search_was_judged_by(seed):
    rng = random.Random(seed)
    for min_gain in (None, 0.0):   # a search from before (no attribute) and one run with the default
        trials = _random_search(rng, 60, min_gain=min_gain)
        lineage = Lineage(trials)
        best, kept = _old_rule(trials)
        assert (lineage.best.trial if lineage.best else None) == best
        assert {t.number for t in trials if lineage.kept(t.number)} == kept


@pytest.mark.parametrize("seed", range(4))
def test_the_loop_question_and_the_replay_agree_at_every_step(seed):
    rng = random.Random(seed)
    trials = _random_search(rng, 50, min_gain=None)
    for t in trials:
        t.attrs[MIN_GAIN_ATTR] = rng.choice((0.0, 0.02, 0.05))
    ordered = sorted(trials, key=lambda t: (t.finished, t.number))
    for k, t in enumerate(ordered):
        before = Lineage(ordered[:k])
        asked = before.would_keep(t.value, operator=t.operator, feasible=t.feasible, min_gain=t.attrs[MIN_GAIN_ATTR],
                                  key=t.tree)
        assert asked == Lineage(ordered[:k + 1]).kept(t.number), f"trial #{t.number}"


def test_noise_floor_and_auto_min_gain_come_from_the_same_pooled_sd():
    trials = [rec(0, "seed", 2.0), rec(1, "reeval", 2.1, parents=[0], tree="t0"), rec(2, "reeval", 1.95, parents=[0], tree="t0"),
              rec(3, "mutate", 1.8, parents=[0]), rec(4, "reeval", 1.9, parents=[3], tree="t3")]
    lineage = Lineage(trials)
    expected = ((2 * statistics.variance([2.0, 2.1, 1.95]) + statistics.variance([1.8, 1.9])) / 3) ** 0.5
    assert lineage.noise_sd() == pytest.approx(expected) == noise_floor(lineage).sd
    assert auto_min_gain(lineage.noise_sd()) == pytest.approx(NOISE_MULTIPLE * expected)
    assert auto_min_gain(None) == 0.0 and Lineage(trials[:1]).noise_sd() is None


def test_new_bests_inside_the_floor_are_flagged():
    # floor: seed re-measured at 2.0, 2.1 -> sd 0.0707; #3 gains 0.05 (inside 2 sd), #4 gains 0.3 (outside)
    trials = [rec(0, "seed", 2.0), rec(1, "reeval", 2.1, parents=[0], tree="t0"), rec(3, "mutate", 2.0, parents=[0]),
              rec(4, "mutate", 1.7, parents=[3])]
    assert [r.trial.number for r in within_noise(Lineage(trials))] == [3]
    assert within_noise(Lineage([trials[0], trials[2]])) == []     # no floor, no flag


# -- the loop and the command line -----------------------------------------------------------------

@pytest.mark.slow
def test_noise_runs_measure_the_seed_first_and_auto_min_gain_is_recorded_on_every_trial(instant_project):
    proc = run_evo("run", "n", "--profile", "tiny", "--budget", "1", "--trials", "14", "--strategy", "greedy",
                   "--noise-runs", "3", "--min-gain", "auto", cwd=instant_project, env={"EVO_TEST_NOISE": "0.05"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Search.open("n", root=instant_project / "runs") as search:
        trials = search.trials()
    assert [(t.operator, t.parents, t.seed) for t in trials[:4]] == [("seed", [], 0), ("reeval", [0], 1),
                                                                    ("reeval", [0], 2), ("reeval", [0], 3)]
    assert all(t.operator in ("mutate", "crossover") for t in trials[4:])      # children only after the floor
    seed_values = [t.value for t in trials[:4]]
    assert trials[4].attrs[MIN_GAIN_ATTR] == pytest.approx(NOISE_MULTIPLE * statistics.stdev(seed_values))
    assert all(MIN_GAIN_ATTR in t.attrs for t in trials)
    lineage = Lineage(trials)
    assert all(bool(t.attrs.get("kept")) == lineage.kept(t.number) for t in trials)   # the loop and the replay agree
    status = run_evo("status", "n", "--json", cwd=instant_project)
    summary = json.loads(status.stdout)
    assert summary["noise_sd"] == pytest.approx(statistics.stdev(seed_values))
    assert summary["min_gain"] == pytest.approx(trials[-1].attrs[MIN_GAIN_ATTR])
    text = run_evo("status", "n", cwd=instant_project).stdout
    assert "noise floor: val_bpb sd" in text and "over 4 evaluations of 1 genome" in text


@pytest.mark.parametrize("args,message", [
    (["--noise-runs", "0", "--min-gain", "auto"], "--min-gain auto needs a measured noise floor: add --noise-runs K"),
    (["--min-gain", "auto"], "--min-gain auto needs a measured noise floor"),
    (["--min-gain", "-0.1"], "expected 'auto' or a number >= 0"),
    (["--min-gain", "lots"], "expected 'auto' or a number"),
])
def test_bad_noise_options_exit_2_with_one_line_before_anything_is_created(project, args, message):
    proc = run_evo("run", "bad", "--profile", "tiny", "--trials", "3", *args, cwd=project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (project / "runs").exists()
