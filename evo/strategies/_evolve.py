from __future__ import annotations

import random

from evo.strategies._base import Plan, Strategy, require_individuals
from population.errors import OptionError
from population.lineage import Individual, Lineage, apart


class EvolveStrategy(Strategy):
    """Steady-state evolution: tournament selection among elites, crossover, islands.

    Args:
        elite: how many of the best genomes (by mean val_bpb) may become parents. Elites
            are never discarded, so the best genome always stays selectable (elitism).
        tournament: genomes drawn per tournament; the best of them is the parent.
            Larger means stronger selection pressure.
        crossover_rate: probability of a crossover between two elites of different
            lineages (neither descends from the other); otherwise, or when no such pair
            exists, a mutation.
        islands: independent sub-populations; each child belongs to the island of its
            first parent, and islands take turns receiving new children.
        migration_rate: probability that a parent is drawn from the neighbouring
            island's elites (ring migration) instead of the child's own.
        cross_from: who leads a crossover: "best" (the best genome of the island, crossed
            with a tournament winner among the elites unrelated to it) or "tournament" (two
            tournament winners). Crossing the best brings an improvement found on another
            line into the genome everything else is measured against.

    >>> EvolveStrategy(elite=8, tournament=3, crossover_rate=0.2, islands=2)   # doctest: +ELLIPSIS
    <...EvolveStrategy object at ...>
    """

    name = "evolve"

    def __init__(self, *, elite: int = 8, tournament: int = 3, crossover_rate: float = 0.2,
                 islands: int = 1, migration_rate: float = 0.1, cross_from: str = "tournament"):
        if elite < 1 or tournament < 1 or islands < 1:
            raise OptionError("elite, tournament and islands must be at least 1")
        if not 0 <= crossover_rate <= 1 or not 0 <= migration_rate <= 1:
            raise OptionError("crossover_rate and migration_rate are probabilities in [0, 1]")
        if cross_from not in ("best", "tournament"):
            raise OptionError(f"cross_from must be 'best' or 'tournament', not {cross_from!r}")
        self.elite, self.tournament, self.crossover_rate = elite, tournament, crossover_rate
        self.islands, self.migration_rate, self.cross_from = islands, migration_rate, cross_from

    def options(self) -> dict:
        return dict(elite=self.elite, tournament=self.tournament, crossover_rate=self.crossover_rate,
                    islands=self.islands, migration_rate=self.migration_rate, cross_from=self.cross_from)

    def describe(self) -> str:
        return (f"evolve(elite={self.elite}, tournament={self.tournament}, crossover_rate={self.crossover_rate:g}, "
                f"islands={self.islands}, migration_rate={self.migration_rate:g}, cross_from={self.cross_from})")

    def _elites(self, lineage: Lineage, island: int) -> list[Individual]:
        ranked = require_individuals(lineage)
        if self.islands == 1:
            return ranked[: self.elite]
        # The seed belongs to every island; the others live where their first parent did.
        pool = [i for i in ranked if i.operator == "seed" or i.island == island]
        return pool[: self.elite] or ranked[:1]

    def _tournament(self, elites: list[Individual], rng: random.Random, lineage: Lineage,
                    away_from: Individual | None = None) -> Individual:
        contenders = rng.sample(elites, min(self.tournament, len(elites)))
        if away_from is not None and lineage.multi:
            # Several objectives: a partner from another part of the front (the farther, the better, at the
            # same non-dominated rank), so a crossover can join what two trade-offs found.
            return min(contenders, key=lambda i: (lineage.pareto(i)[0], -apart(lineage, i, away_from), i.trial))
        return min(contenders, key=lineage.rank_key)

    def plan(self, lineage: Lineage, rng: random.Random) -> Plan:
        island = len(lineage.trials) % self.islands
        elites = self._elites(lineage, island)
        if self.islands > 1 and rng.random() < self.migration_rate:
            elites = self._elites(lineage, (island - 1) % self.islands)
        # A tournament winner leads a mutation, and a crossover unless the best leads those.
        winner = self._tournament(elites, rng, lineage) if self.cross_from == "tournament" else None
        if len(elites) >= 2 and rng.random() < self.crossover_rate:
            first = winner or elites[0]
            partners = [i for i in elites if not lineage.related(i.trial, first.trial)]
            if partners:
                second = self._tournament(partners, rng, lineage, away_from=first)
                return Plan("crossover", (first.trial, second.trial), island=island)
        return Plan("mutate", ((winner or self._tournament(elites, rng, lineage)).trial,), island=island)
