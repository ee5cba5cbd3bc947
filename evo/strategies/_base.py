"""What a strategy decides: which parents, which operator."""

from __future__ import annotations

import random
from dataclasses import dataclass

from population.errors import EvoError
from population.lineage import Individual, Lineage


@dataclass(frozen=True)
class Plan:
    """The next child: an operator applied to parent trials."""

    operator: str                 # "mutate" or "crossover" ("reeval" is planned by the loop)
    parents: tuple[int, ...]      # trial numbers; one for a mutation, two for a crossover
    island: int = 0


class NoParentError(EvoError, RuntimeError):
    """No genome has been evaluated successfully, so there is nothing to breed from."""


class Strategy:
    """Base class: given the search so far, plan the next child.

    Subclasses implement `plan`. A strategy holds no state of its own between calls:
    everything it needs is in the lineage, so a resumed search plans as it would have.

    prefetch: whether the loop may plan a child while other trials are still running
    (True for population methods; False keeps greedy's one-line semantics exact).
    """

    name = "base"
    prefetch = True

    def plan(self, lineage: Lineage, rng: random.Random) -> Plan:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def options(self) -> dict:
        """The keyword options that rebuild this strategy with `make_strategy(name, **options)`."""
        return {}


def require_individuals(lineage: Lineage) -> list[Individual]:
    ranked = lineage.ranked()
    if not ranked:
        raise NoParentError("no genome has finished successfully yet (did the seed fail? see its run.log)")
    return ranked
