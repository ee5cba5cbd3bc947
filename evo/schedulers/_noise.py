"""The noise floor: the seed genome's extra runs, and children held back until they are in.

`--min-gain auto` is a multiple of the noise floor, which the seed's extra runs measure: the
runs go first, and no child is planned until they finished (a child's min gain would be
judged against a floor not yet measured)."""

from __future__ import annotations

from evo.schedulers._base import BaseScheduler, Decision, Snapshot, Wait, reevaluation, seed_genome


class NoiseRuns(BaseScheduler):
    """Queue the seed genome's evaluations until it has 1 + `runs` of them, done or under way."""

    def __init__(self, runs: int):
        self.runs = runs

    def decide(self, snapshot: Snapshot) -> Decision | None:
        if self.runs < 1:
            return None
        return reevaluation(snapshot, seed_genome(snapshot.lineage), 1 + self.runs)


class NoiseFloorWait(BaseScheduler):
    """Hold every later plan while the seed's noise runs are still to finish."""

    def __init__(self, runs: int):
        self.runs = runs

    def decide(self, snapshot: Snapshot) -> Decision | None:
        seed = seed_genome(snapshot.lineage)
        if self.runs < 1 or seed is None:
            return None
        done, _ = snapshot.evaluations(seed)
        return Wait("measuring the noise floor") if done < 1 + self.runs else None
