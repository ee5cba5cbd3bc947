"""The noise floor: how much val_bpb moves when the same genome is trained again on a new seed.

Only genomes evaluated more than once (`evo run --reeval K`) say anything about noise.
The floor is the pooled within-genome standard deviation,
sqrt(sum((n_i - 1) * s_i^2) / sum(n_i - 1)): every re-evaluated genome contributes in
proportion to its extra evaluations. Differences between two single runs smaller than
about twice that are not evidence of anything.

>>> floor = noise_floor(search.lineage())     # doctest: +SKIP
>>> floor.sd if floor else "no re-evaluations"  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from population.lineage import Lineage


@dataclass(frozen=True)
class Remeasured:
    """One genome evaluated several times."""

    trial: int                 # the trial that first evaluated it
    values: tuple[float, ...]  # every evaluation, first one first
    mean: float
    sd: float                  # sample standard deviation

    @property
    def range(self) -> float:
        return max(self.values) - min(self.values)


@dataclass(frozen=True)
class NoiseFloor:
    """The pooled spread of re-evaluated genomes."""

    sd: float                       # pooled within-genome standard deviation of val_bpb
    genomes: tuple[Remeasured, ...]

    @property
    def evaluations(self) -> int:
        return sum(len(g.values) for g in self.genomes)

    @property
    def max_range(self) -> float:
        """The largest max-minus-min spread of any one genome."""
        return max(g.range for g in self.genomes)

    def describe(self) -> str:
        """One sentence for people: the floor and what it means."""
        return (f"noise floor: val_bpb sd {self.sd:.4f} (pooled over {len(self.genomes)} re-evaluated genome"
                f"{'s' if len(self.genomes) != 1 else ''}, {self.evaluations} evaluations; largest spread "
                f"{self.max_range:.4f}); single-run differences below ~{2 * self.sd:.4f} are within noise")


def noise_floor(lineage: Lineage) -> NoiseFloor | None:
    """The noise floor of a search, or None when no genome was evaluated twice.

    Args:
        lineage: the search's lineage (`search.lineage()` or `Lineage(trials)`).
    """
    genomes = []
    for ind in lineage.individuals:
        if len(ind.values) > 1:
            genomes.append(Remeasured(trial=ind.trial, values=tuple(ind.values), mean=ind.score, sd=ind.spread))
    if not genomes:
        return None
    dof = sum(len(g.values) - 1 for g in genomes)
    pooled = math.sqrt(sum((len(g.values) - 1) * g.sd ** 2 for g in genomes) / dof)
    return NoiseFloor(sd=pooled, genomes=tuple(genomes))
