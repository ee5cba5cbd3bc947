"""The strategy: when no other scheduler has work, a new child from the strategy's plan."""

from __future__ import annotations

from evo.schedulers._base import BaseScheduler, Decision, Propose, Snapshot
from evo.strategies import Strategy


class FromStrategy(BaseScheduler):
    """Plan a child with `strategy` (NoParentError when nothing can be bred from yet: the loop decides
    whether that ends the search)."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy

    def decide(self, snapshot: Snapshot) -> Decision | None:
        return Propose(self.strategy.plan(snapshot.lineage, snapshot.rng))
