"""An API outage: while the proposer's API is waited out, idle devices re-evaluate good genomes.

One proposal asks the API again once the wait is over (the loop's back-off); meanwhile a
device with nothing to do re-evaluates a good genome on a new seed, the best first, rather
than idle: ranking by the mean only gets better for it. A proposer with an offline fallback
(a mix with the offline proposer) goes on proposing instead."""

from __future__ import annotations

from evo.schedulers._base import BaseScheduler, Decision, Snapshot, Wait, reevaluation
from population.store import WHILE_WAITING


class OutageReevaluation(BaseScheduler):
    """While only offline proposals are possible and the proposer has none, re-evaluate the ranked
    genomes up to `evaluations` each on free devices, else wait."""

    def __init__(self, evaluations: int, offline_fallback: bool):
        self.evaluations, self.offline_fallback = evaluations, offline_fallback

    def decide(self, snapshot: Snapshot) -> Decision | None:
        if not snapshot.offline_only or self.offline_fallback:
            return None
        if len(snapshot.queued) < snapshot.free_slots:
            for ind in snapshot.lineage.ranked():
                run = reevaluation(snapshot, ind, self.evaluations, " while the API is down")
                if run is not None:
                    run.child.attrs[WHILE_WAITING] = True  # not counted towards --trials: an outage must not use up a search
                    return run
        return Wait("the proposer's API is down")
