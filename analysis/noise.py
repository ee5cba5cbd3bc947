"""The noise floor: how much val_bpb moves when the same genome is trained again on a new seed.

Only genomes evaluated more than once (`evo run --noise-runs K` for the seed, `--reeval K`
for each new best) say anything about noise. The floor is the pooled within-genome standard
deviation (`population.lineage.pooled_sd`, the same number `--min-gain auto` uses): every
re-evaluated genome contributes in proportion to its extra evaluations. Differences between
two single runs smaller than about twice that are not evidence of anything, so a "new best"
that beat the best before it by less than `NOISE_MULTIPLE` times the floor is flagged as
possibly luck (`within_noise`).

>>> floor = noise_floor(search.lineage())     # doctest: +SKIP
>>> floor.sd if floor else "no re-evaluations"  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from population.lineage import NOISE_MULTIPLE, Lineage, Result


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

    def describe(self, metric: str = "val_bpb") -> str:
        """One sentence for people: the floor and what it means."""
        return (f"noise floor: {metric} sd {self.sd:.4f} (pooled over {len(self.genomes)} re-evaluated genome"
                f"{'s' if len(self.genomes) != 1 else ''}, {self.evaluations} evaluations; largest spread "
                f"{self.max_range:.4f}); single-run differences below ~{NOISE_MULTIPLE * self.sd:.4f} are within noise")


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
    return NoiseFloor(sd=lineage.noise_sd(), genomes=tuple(genomes))


def within_noise(lineage: Lineage, floor: NoiseFloor | None = None) -> list[Result]:
    """The new bests that beat the best before them by less than NOISE_MULTIPLE x the noise floor.

    They may be luck: the seed run again, or the machine a little quieter, can move as far.
    Judged with the floor measured now (the best estimate), whatever min gain the search
    ran with; empty when the floor is unknown.

    Args:
        lineage: the search's lineage.
        floor: its noise floor, when already computed.
    """
    floor = floor or noise_floor(lineage)
    if floor is None:
        return []
    return [r for r in lineage.history() if r.kept and r.gain is not None and r.gain < NOISE_MULTIPLE * floor.sd]
