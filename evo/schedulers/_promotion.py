"""Promotion: the top of each rung re-run at the next, larger scale (see `evo.promotion`)."""

from __future__ import annotations

from evo.promotion import Rung, next_promotion
from evo.schedulers._base import BaseScheduler, Child, Decision, Run, Snapshot
from population.search import SearchConfig


class Promotion(BaseScheduler):
    """Queue the next genome to climb `ladder` (the top `top` fraction of each rung), once per genome and rung."""

    def __init__(self, ladder: tuple[Rung, ...], top: float, config: SearchConfig):
        self.ladder, self.top, self.config = ladder, top, config

    def decide(self, snapshot: Snapshot) -> Decision | None:
        if not self.ladder:
            return None
        found = next_promotion(snapshot.lineage, self.ladder, top=self.top, taken=snapshot.promoted)
        if found is None:
            return None
        ind, rung = found
        attrs = self.ladder[rung - 1].attrs(rung, self.config)
        return Run(Child("promote", [ind.trial], commit=ind.commit, seed=self.config.seed, island=ind.island,
                         attrs={**attrs, "proposer": "promote",
                                "description": f"promote #{ind.trial} to rung {rung} ({attrs['rung_label']})"}))
