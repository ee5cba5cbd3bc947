"""The schedulers that decide what runs next, each on hand-built records: no store, git or process.

test_engine checks the same rules through the engine (its trials run in-process), and the `evo run`
tests (test_noise, test_promotion, test_llm_overnight) end to end."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from evo.promotion import parse_ladder
from evo.schedulers import (Child, FromStrategy, NoiseFloorWait, NoiseRuns, OutageReevaluation, Promotion, Propose,
                            Reevaluation, Run, Snapshot, Wait, chain, decide)
from evo.strategies import GreedyStrategy, NoParentError
from population.lineage import Lineage
from population.search import SearchConfig
from population.store import TrialRecord

T0 = dt.datetime(2026, 1, 1, 8, 0, 0)


def rec(number: int, operator: str, parents: list[int], value: float | None, *, tree: str | None = None,
        state: str | None = None, **attrs) -> TrialRecord:
    """A trial as the store returns it: ok with a value, crashed without one, or in `state` (RUNNING)."""
    state = state or ("COMPLETE" if value is not None else "FAIL")
    status = attrs.pop("status", "ok" if value is not None else "crash")
    return TrialRecord(number=number, state=state, value=value,
                       attrs={"operator": operator, "parents": parents, "status": status, "tree": tree or f"t{number}",
                              "commit": f"c{tree or f't{number}'}", **attrs},
                       finished=None if state == "RUNNING" else T0 + dt.timedelta(minutes=number))


def snap(trials, **kw) -> Snapshot:
    return Snapshot(Lineage(trials), seed=100, **kw)


SEED = rec(0, "seed", [], 2.0)


# -- the counts, in the data layer ------------------------------------------------------

def test_lineage_counts_a_genomes_evaluations_failed_and_running_ones_included():
    trials = [SEED, rec(1, "reeval", [0], 2.1, tree="t0"), rec(2, "reeval", [0], None, tree="t0"),
              rec(3, "reeval", [0], None, tree="t0", state="RUNNING"), rec(4, "mutate", [0], 1.9),
              rec(5, "mutate", [0], 2.0, tree="t0", status="duplicate")]   # a duplicate is no evaluation
    lineage = Lineage(trials)
    assert lineage.evaluations(lineage.individual(0)) == (3, 1)
    assert lineage.evaluations(lineage.individual(4)) == (1, 0)


def test_lineage_knows_a_genome_promoted_at_a_rung_even_when_it_failed_there():
    trials = [SEED, rec(1, "promote", [0], None, tree="t0", rung=1), rec(2, "mutate", [0], 1.9),
              rec(3, "promote", [2], None, tree="t2", rung=1, state="RUNNING")]
    lineage = Lineage(trials)
    assert lineage.promoted("t0", 1) and lineage.promoted("t2", 1)
    assert not lineage.promoted("t0", 2) and not lineage.promoted("t9", 1)


# -- one scheduler at a time -------------------------------------------------------------

def test_noise_runs_queue_the_seeds_next_seed_until_enough_are_done_or_under_way():
    first = NoiseRuns(2).decide(snap([SEED]))
    assert isinstance(first, Run) and first.child.operator == "reeval" and first.child.parents == [0]
    assert first.child.seed == 101 and first.child.wanted == 3 and first.child.commit == "ct0"
    # One queued here, one running here: the third evaluation is under way, nothing more to queue.
    assert NoiseRuns(2).decide(snap([SEED], queued=(first.child,), running=("t0",))) is None
    assert NoiseRuns(2).decide(snap([SEED], queued=(first.child,))).child.seed == 102
    assert NoiseRuns(0).decide(snap([SEED])) is None
    assert NoiseRuns(2).decide(snap([rec(0, "seed", [], None)])) is None   # a failed seed has no floor to measure


def test_children_wait_for_the_noise_floor_until_the_noise_runs_finished():
    running = [SEED, rec(1, "reeval", [0], None, tree="t0", state="RUNNING")]
    assert isinstance(NoiseFloorWait(1).decide(snap(running)), Wait)
    assert NoiseFloorWait(1).decide(snap([SEED, rec(1, "reeval", [0], 2.1, tree="t0")])) is None
    assert NoiseFloorWait(1).decide(snap([SEED, rec(1, "reeval", [0], None, tree="t0")])) is None  # a crash counts
    assert NoiseFloorWait(0).decide(snap(running)) is None


def test_the_best_is_reevaluated_until_it_has_its_extra_seeds():
    trials = [SEED, rec(1, "mutate", [0], 1.9)]
    run = Reevaluation(2).decide(snap(trials))
    assert run.child.parents == [1] and run.child.seed == 101 and "re-evaluate #1" in run.child.attrs["description"]
    more = trials + [rec(2, "reeval", [1], 1.95, tree="t1"), rec(3, "reeval", [1], None, tree="t1")]
    assert Reevaluation(2).decide(snap(more)) is None
    assert Reevaluation(0).decide(snap(trials)) is None


def config() -> SearchConfig:
    return SearchConfig(name="s", profile="tiny", budget=10.0, mutable=["train.py"], data="shakespeare", seed=7)


def test_promotion_sends_the_top_of_a_rung_up_once():
    trials = [SEED, rec(1, "mutate", [0], 1.9), rec(2, "mutate", [0], 1.8)]
    rule = Promotion(parse_ladder("budget*5"), 1 / 3, config())
    run = rule.decide(snap(trials))
    assert run.child.operator == "promote" and run.child.parents == [2] and run.child.seed == 7
    assert run.child.attrs["rung"] == 1 and run.child.attrs["rung_budget"] == 50.0
    assert rule.decide(snap(trials, queued=(run.child,))) is None      # queued here
    taken = trials + [rec(3, "promote", [2], None, tree="t2", rung=1)]  # failed at rung 1: not retried
    assert rule.decide(snap(taken)) is None
    assert Promotion(parse_ladder("budget*5"), 1 / 3, config()).decide(snap(trials[:2])) is None  # too few to rank


def test_an_outage_reevaluates_the_ranked_genomes_on_free_devices_else_waits():
    trials = [SEED, rec(1, "mutate", [0], 1.9)]
    rule = OutageReevaluation(2, offline_fallback=False)
    assert rule.decide(snap(trials)) is None                            # the API answers
    assert OutageReevaluation(2, offline_fallback=True).decide(snap(trials, offline_only=True)) is None
    run = rule.decide(snap(trials, offline_only=True))
    assert run.child.parents == [1] and "while the API is down" in run.child.attrs["description"]
    second = rule.decide(snap(trials, offline_only=True, queued=(run.child,), free_slots=2))
    assert second.child.parents == [0]                                  # the best has its two: the next genome
    assert isinstance(rule.decide(snap(trials, offline_only=True, queued=(run.child,))), Wait)  # no free device
    done = trials + [rec(2, "reeval", [1], 1.9, tree="t1"), rec(3, "reeval", [0], 2.0, tree="t0")]
    assert isinstance(rule.decide(snap(done, offline_only=True)), Wait)


def test_the_strategy_plans_a_child_and_has_no_parent_before_any_result():
    proposed = FromStrategy(GreedyStrategy()).decide(snap([SEED, rec(1, "mutate", [0], 1.9)], rng=random.Random(0)))
    assert isinstance(proposed, Propose) and proposed.plan.operator == "mutate" and proposed.plan.parents == (1,)
    with pytest.raises(NoParentError):
        FromStrategy(GreedyStrategy()).decide(snap([rec(0, "seed", [], None)]))


# -- the chain ----------------------------------------------------------------------------

def test_the_chain_measures_the_noise_floor_first_then_reevaluates_the_best_then_proposes():
    rules = chain(strategy=GreedyStrategy(), noise_runs=1, reeval=1)
    first = decide(rules, snap([SEED]))
    assert first.child.parents == [0] and first.child.wanted == 2                 # the seed's noise run
    assert isinstance(decide(rules, snap([SEED], queued=(first.child,))), Wait)  # children wait for it
    measured = [SEED, rec(1, "reeval", [0], 2.02, tree="t0"), rec(2, "mutate", [0], 1.9)]
    assert decide(rules, snap(measured)).child.parents == [2]                     # the new best's extra seed
    settled = measured + [rec(3, "reeval", [2], 1.91, tree="t2")]
    assert isinstance(decide(rules, snap(settled, rng=random.Random(1))), Propose)
    assert decide(chain(strategy=GreedyStrategy()), snap([SEED], queued=(Child("seed", []),))).plan.parents == (0,)
