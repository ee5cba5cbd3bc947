from __future__ import annotations

import random

from evo.strategies._base import Plan, Strategy, require_individuals
from population.lineage import Lineage


class GreedyStrategy(Strategy):
    """autoresearch's hill-climb: every child is a mutation of the current best genome.

    A child becomes the parent of the next only if it is strictly better (ties keep the
    earlier genome), so the line never moves to a worse genome. With several devices,
    that many children of the current best run at once. Children are planned only when a
    device is free, so each one starts from the best known at that moment.
    """

    name = "greedy"
    prefetch = False

    def plan(self, lineage: Lineage, rng: random.Random) -> Plan:
        best = require_individuals(lineage)[0]
        return Plan("mutate", (best.trial,))
