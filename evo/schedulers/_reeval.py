"""Re-evaluation of the best: a genome that becomes the best is run on `extra` more seeds, so
the best is a mean rather than one lucky draw."""

from __future__ import annotations

from evo.schedulers._base import BaseScheduler, Decision, Snapshot, reevaluation


class Reevaluation(BaseScheduler):
    """Queue the best genome's evaluations until it has 1 + `extra`, done or under way."""

    def __init__(self, extra: int):
        self.extra = extra

    def decide(self, snapshot: Snapshot) -> Decision | None:
        if self.extra < 1:
            return None
        return reevaluation(snapshot, snapshot.lineage.best, 1 + self.extra)
