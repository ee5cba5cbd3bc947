"""Admission: whether a child still becomes a trial, judged inside the store's claim from the study
as it is now, and whether its genome was evaluated already (a duplicate is never trained twice)."""

from __future__ import annotations

from evo.schedulers import Child
from population.lineage import Lineage
from population.store import INTERRUPTED, INVALID, TrialRecord

# Operators whose genome may be one the search knows: the known one's result is reused.
NEW_GENOME_OPERATORS = ("mutate", "crossover", "enqueued")


def toward_limit(trials) -> int:
    """Trials that spend one of --trials, finished or running (re-evaluations during an outage spend none)."""
    return sum(1 for t in trials if t.holds_trial)


def admit(child: Child, lineage: Lineage, *, limit: int | None, shared: bool, base_seed: int) -> bool:
    """Whether `child` should still become a trial, judged from the study as it is now (inside the claim).

    On one host the engine's own bookkeeping already made sure of all this; with other
    workers it is where the trial limit holds across hosts, a re-run is taken once, the
    seed is trained once, and re-evaluations stop at the number asked for (a shared
    re-evaluation's seed is set here: no two hosts pick the same new seed)."""
    trials = lineage.trials
    if limit is not None and toward_limit(trials) >= limit:
        return False
    if child.rerun_of is not None:
        return not any(t.attrs.get("rerun_of") == child.rerun_of for t in trials)
    if child.operator == "seed":  # a seed that failed runs again (after its cause was fixed)
        return not any(t.operator == "seed" and (t.finished_ok or t.state == "RUNNING") for t in trials)
    genome = lineage.individual(child.parents[0]) if child.parents else None
    if child.operator == "reeval" and shared and genome is not None:
        done, running = lineage.evaluations(genome)
        if done + running >= child.wanted:  # the limit the plan had: noise runs, --reeval, or an outage's
            return False
        child.seed = base_seed + done + running
    if child.operator == "promote":  # once per genome and rung, whichever host gets there first
        return genome is not None and not lineage.promoted(genome.tree, child.attrs.get("rung"))
    return True


def original_of(child: Child, tree: str | None, lineage: Lineage) -> TrialRecord | None:
    """The trial that evaluated (or is evaluating, on some host) the new genome `tree` already, if any."""
    if tree is None or child.operator not in NEW_GENOME_OPERATORS or child.rerun_of is not None:
        return None
    return next((t for t in lineage.trials if t.tree == tree and t.operator != "reeval"
                 and t.status not in (INVALID, INTERRUPTED)), None)
