"""Genomes, scores and ancestry derived from the trial records.

A genome (identified by its content hash, the git tree) may be evaluated several times:
its first trial, then re-evaluations on new seeds. Selection ranks genomes by the mean
of their evaluations; ancestry follows the trials' parent numbers (two for crossover).
Everything here is computed from the store's records, so it survives any restart.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from population.store import TrialRecord


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


class Lineage:
    """Derived view over a search's trials: individuals, ranking, ancestry."""

    def __init__(self, trials: list[TrialRecord]):
        self.trials = sorted(trials, key=lambda t: t.number)
        self.by_number = {t.number: t for t in self.trials}
        by_tree: dict[str, Individual] = {}
        self._home: dict[int, Individual] = {}
        for t in self.trials:
            if not t.finished_ok or not t.tree:
                continue
            ind = by_tree.get(t.tree)
            if ind is None:
                ind = by_tree[t.tree] = Individual(trial=t.number, tree=t.tree, commit=t.commit, parents=t.parents,
                                                   operator=t.operator, description=t.description,
                                                   island=int(t.attrs.get("island", 0)))
            ind.values.append(t.value)
            ind.evaluations.append(t.number)
            ind.feasible = ind.feasible and t.feasible
            self._home[t.number] = ind
        self.individuals = sorted(by_tree.values(), key=lambda i: i.trial)
        self._by_tree = by_tree

    # -- ranking ----------------------------------------------------------------

    def ranked(self, *, feasible_only: bool = True) -> list[Individual]:
        """Individuals from best (lowest mean val_bpb) to worst; ties go to the earlier trial."""
        pool = [i for i in self.individuals if i.feasible or not feasible_only]
        return sorted(pool, key=lambda i: (i.score, i.trial))

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
        return self._home.get(number) or self._by_tree.get(t.tree)

    def score_of(self, number: int) -> float | None:
        ind = self.individual(number)
        return ind.score if ind else None

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

    # -- history ----------------------------------------------------------------

    def best_before(self, number: int) -> float:
        """The best single ok val_bpb among trials finished before `number` (inf when none)."""
        values = [t.value for t in self.trials if t.number < number and t.finished_ok and t.feasible]
        return min(values, default=math.inf)
