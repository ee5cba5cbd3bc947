"""The engine: a search stepped by ask and tell, the primitive `evo.SearchLoop` is built on.

    >>> engine = Engine(search, GreedyStrategy(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=5)))   # doctest: +SKIP
    >>> engine.enqueue({"train.py": my_text}, note="my idea")                              # doctest: +SKIP
    >>> while (ticket := engine.ask()) is not None:                                        # doctest: +SKIP
    ...     told = engine.tell(ticket, engine.run(ticket))

One concept per module: `_engine` (the Engine), `_options` (RunOptions, StopReason),
`_records` (Order, Ticket, Told), `_outage` (an API outage waited out), `_admission` (whether
a child still becomes a trial), `_starting` (a child becomes a trial), `_telling` (its run and
result), `_trial_files` (what is written in its folder), `_proposing` (a plan turned into a
child), `_recovery` (after a crash), `_explain` (why a search cannot go on).
"""

from evo.engine._engine import ENQUEUED, Engine
from evo.engine._options import (AUTO, INTERRUPTED_STOP, BackoffSpec, LimitSpec, NoiseSpec, PromotionSpec, RunOptions,
                                 StopKind, StopReason, fix_ladder)
from evo.engine._records import Order, ProposalFacts, Ticket, Told
from evo.events import EventKind

__all__ = ["AUTO", "BackoffSpec", "ENQUEUED", "Engine", "LimitSpec", "NoiseSpec", "PromotionSpec", "EventKind", "INTERRUPTED_STOP", "Order", "ProposalFacts", "RunOptions",
           "StopKind", "StopReason", "Ticket", "Told", "fix_ladder"]
