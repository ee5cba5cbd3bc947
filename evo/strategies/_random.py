from __future__ import annotations

import random

from evo.strategies._base import NoParentError, Plan, Strategy
from population.lineage import Lineage


class RandomStrategy(Strategy):
    """Best-of-N sampling: every child is a mutation of the seed.

    The baseline that answers "does evolution beat sampling?": the same proposer and
    budget, with no selection at all."""

    name = "random"

    def plan(self, lineage: Lineage, rng: random.Random) -> Plan:
        seed = lineage.seed
        if seed is None or lineage.individual(seed.number) is None:
            raise NoParentError("the seed genome has not finished successfully (see trials/0/run.log)")
        return Plan("mutate", (seed.number,))
