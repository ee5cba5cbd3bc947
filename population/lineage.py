"""Genomes, scores, ancestry and the search's history, derived from the trial records.

A genome (identified by its content hash, the git tree) may be evaluated several times:
its first trial, then re-evaluations on new seeds. Selection ranks genomes by the mean
of their evaluations; ancestry follows the trials' parent numbers (two for crossover).

This module holds the one definition of the words the whole project uses:

- **better**: lower for a minimised metric (val_bpb), higher for a maximised one; nothing
  else in the code compares two scores;
- **best**: the feasible genome with the better mean score (ties to the earlier trial);
- **parent score**: the score of a child's parent, the better parent's for a crossover;
- **kept**: a fresh, feasible result (not a re-evaluation) strictly better than the best
  genome known when it finished. `Lineage.history()` replays the search in the order results
  arrived and marks every kept trial; the loop asks the same question (`would_keep`) the
  moment a result comes in, so `evo status`, the report and the LLM's memory agree.

Everything here is computed from the store's records, so it survives any restart.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from population.store import TrialRecord

# Operators that make a new genome from parents (the seed and re-evaluations do not).
CHILD_OPERATORS = ("mutate", "crossover")
MINIMIZE, MAXIMIZE = "minimize", "maximize"
DIRECTIONS = (MINIMIZE, MAXIMIZE)


def sign(direction: str) -> float:
    """+1 when lower is better, -1 when higher is: `sign * score` sorts the best first."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be minimize or maximize, not {direction!r}")
    return 1.0 if direction == MINIMIZE else -1.0


def better(a: float, b: float, direction: str = MINIMIZE) -> bool:
    """Whether score `a` is strictly better than score `b`."""
    return sign(direction) * a < sign(direction) * b


def best_of(values, direction: str = MINIMIZE) -> float:
    """The best of some scores."""
    return min(values) if direction == MINIMIZE else max(values)


def gain(old: float, new: float, direction: str = MINIMIZE) -> float:
    """How much better `new` is than `old` (positive: an improvement), whatever the direction."""
    return sign(direction) * (old - new)


def is_improvement(value: float | None, best: float | None, *, operator: str, feasible: bool,
                   direction: str = MINIMIZE) -> bool:
    """Whether a result makes a new best: fresh, feasible, finite, strictly better than `best` (None: no best yet)."""
    if value is None or not math.isfinite(value) or not feasible or operator == "reeval":
        return False
    return best is None or better(value, best, direction)


@dataclass
class Individual:
    """One distinct genome with at least one successful evaluation."""

    trial: int                       # the trial that first evaluated it
    tree: str
    commit: str
    parents: list[int]
    operator: str
    description: str
    island: int = 0
    values: list[float] = field(default_factory=list)   # every ok evaluation, first one first
    evaluations: list[int] = field(default_factory=list)  # their trial numbers
    feasible: bool = True

    @property
    def score(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float | None:
        """Sample standard deviation across evaluations (None with a single one)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Result:
    """One counted trial in the order results arrived, with the best genome's score after it."""

    trial: TrialRecord
    best: float            # best genome's mean score after this trial (±inf before any result)
    kept: bool             # this trial made a new genome the best


def genome_key(t: TrialRecord) -> str:
    """What identifies a trial's genome: its git tree (a record without one stands alone)."""
    return t.tree or f"trial:{t.number}"


def finish_order(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The counted trials (finished, not interrupted) in the order their results became known."""
    done = [t for t in trials if t.counts]
    return sorted(done, key=lambda t: (t.finished.timestamp() if t.finished else math.inf, t.number))


def strategy_of(trials: Iterable[TrialRecord]) -> str:
    """The strategy a search ran with, from its trials' records ("unknown" without one)."""
    names = [t.attrs.get("strategy") for t in trials if t.attrs.get("strategy")]
    return max(set(names), key=names.count) if names else "unknown"


class Lineage:
    """Derived view over a search's trials: individuals, ranking, ancestry, history.

    direction: whether the search's metric is minimised (val_bpb) or maximised.
    """

    def __init__(self, trials: list[TrialRecord], *, direction: str = MINIMIZE):
        self.direction = direction
        self._sign = sign(direction)
        self.trials = sorted(trials, key=lambda t: t.number)
        self.by_number = {t.number: t for t in self.trials}
        by_key: dict[str, Individual] = {}
        self._home: dict[int, Individual] = {}
        for t in self.trials:
            if not t.finished_ok:
                continue
            ind = by_key.get(genome_key(t))
            if ind is None:
                ind = by_key[genome_key(t)] = Individual(trial=t.number, tree=t.tree, commit=t.commit,
                                                         parents=t.parents, operator=t.operator,
                                                         description=t.description,
                                                         island=int(t.attrs.get("island", 0)))
            ind.values.append(t.value)
            ind.evaluations.append(t.number)
            ind.feasible = ind.feasible and t.feasible
            self._home[t.number] = ind
        self.individuals = sorted(by_key.values(), key=lambda i: i.trial)
        self._by_key = by_key

    # -- ranking ----------------------------------------------------------------

    def ranked(self, *, feasible_only: bool = True) -> list[Individual]:
        """Individuals from best to worst by mean score; ties go to the earlier trial."""
        pool = [i for i in self.individuals if i.feasible or not feasible_only]
        return sorted(pool, key=self.rank_key)

    def rank_key(self, ind: Individual) -> tuple[float, int]:
        """Sort key putting the better individual first (ties: the earlier trial)."""
        return (self._sign * ind.score, ind.trial)

    @property
    def best(self) -> Individual | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def seed(self) -> TrialRecord | None:
        return next((t for t in self.trials if t.operator == "seed"), None)

    def individual(self, number: int) -> Individual | None:
        """The individual a trial evaluated (its own genome, re-evaluations included)."""
        t = self.by_number.get(number)
        if t is None:
            return None
        own = self._home.get(number)
        if own is None and t.tree:  # a duplicate or a failed trial of a genome evaluated elsewhere
            own = self._by_key.get(t.tree)
        return own

    def score_of(self, number: int) -> float | None:
        ind = self.individual(number)
        return ind.score if ind else None

    def parent_score(self, t: TrialRecord) -> float | None:
        """The score a child is judged against: its parent's, the better parent's for a crossover."""
        scores = [s for s in (self.score_of(p) for p in t.parents) if s is not None]
        return best_of(scores, self.direction) if scores else None

    def would_keep(self, value: float | None, *, operator: str, feasible: bool) -> bool:
        """Whether a result arriving now would make a new best (see the module docstring)."""
        best = self.best
        return is_improvement(value, best.score if best else None, operator=operator, feasible=feasible,
                              direction=self.direction)

    # -- history ----------------------------------------------------------------

    def history(self) -> list[Result]:
        """Replay the counted trials in the order their results arrived; mark each one that was kept.

        Each Result's `best` is the best genome's mean after it (inf, or -inf when maximising,
        before any result)."""
        return list(self._history)

    @cached_property
    def _history(self) -> tuple[Result, ...]:
        evaluations: dict[str, list[float]] = {}
        best: float | None = None
        out = []
        for t in finish_order(self.trials):
            kept = False
            if t.finished_ok and t.feasible:
                kept = is_improvement(t.value, best, operator=t.operator, feasible=True, direction=self.direction)
                evaluations.setdefault(genome_key(t), []).append(t.value)
                best = best_of((statistics.fmean(v) for v in evaluations.values()), self.direction)
            out.append(Result(trial=t, best=self._sign * math.inf if best is None else best, kept=kept))
        return tuple(out)

    @cached_property
    def _kept(self) -> frozenset[int]:
        return frozenset(r.trial.number for r in self._history if r.kept)

    def kept(self, number: int) -> bool:
        """Whether trial `number` made a new best when its result arrived."""
        return number in self._kept

    def children(self) -> list[TrialRecord]:
        """The counted trials a proposer made (mutations and crossovers: not the seed, not re-evaluations)."""
        return [t for t in self.trials if t.counts and t.operator in CHILD_OPERATORS]

    # -- ancestry ---------------------------------------------------------------

    def ancestors(self, number: int) -> set[int]:
        """Every trial this one descends from (both parents of a crossover, recursively)."""
        seen: set[int] = set()
        stack = list(self.by_number[number].parents) if number in self.by_number else []
        while stack:
            n = stack.pop()
            if n in seen or n not in self.by_number:
                continue
            seen.add(n)
            stack.extend(self.by_number[n].parents)
        return seen

    def related(self, a: int, b: int) -> bool:
        """Whether one of two trials descends from the other (same line of research)."""
        return a == b or a in self.ancestors(b) or b in self.ancestors(a)

    def path_to(self, number: int) -> list[int]:
        """The chain from the seed to `number`, following each step's first parent."""
        chain = [number]
        while self.by_number.get(chain[-1]) and self.by_number[chain[-1]].parents:
            parent = self.by_number[chain[-1]].parents[0]
            if parent in chain:
                break
            chain.append(parent)
        return chain[::-1]
