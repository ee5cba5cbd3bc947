"""Schedulers: what runs next on a device, as a chain of small rules (one module each).

The loop asks `chain(...)` in order, and the first rule with a decision wins:

1. `NoiseRuns`: the seed's extra runs that measure the noise floor;
2. `Reevaluation`: the best genome's extra seeds;
3. `Promotion`: the top of a rung re-run at the next scale;
4. `NoiseFloorWait`: no child until the noise runs finished;
5. `OutageReevaluation`: while the proposer's API is down, re-evaluations instead of children;
6. `FromStrategy`: a new child from the strategy.

A notebook can ask the same chain what a search would run next:

    >>> decide(chain(strategy=GreedyStrategy()), Snapshot(search.lineage()))   # doctest: +SKIP
"""

from evo.promotion import DEFAULT_TOP, Rung
from evo.schedulers._base import (BaseScheduler, Child, Decision, Propose, Run, Snapshot, Wait, decide, reevaluation,
                                  seed_genome)
from evo.schedulers._noise import NoiseFloorWait, NoiseRuns
from evo.schedulers._outage import OutageReevaluation
from evo.schedulers._promotion import Promotion
from evo.schedulers._reeval import Reevaluation
from evo.schedulers._strategy import FromStrategy
from evo.strategies import Strategy
from population.search import SearchConfig


def chain(*, strategy: Strategy, noise_runs: int = 0, reeval: int = 0, promote: tuple[Rung, ...] = (),
          promote_top: float = DEFAULT_TOP, config: SearchConfig | None = None, reeval_while_waiting: int = 3,
          offline_fallback: bool = False) -> list[BaseScheduler]:
    """The loop's chain, in its order (the arguments are `evo.RunOptions`' specs: noise_runs and reeval its
    `noise`, promote and promote_top its `promotion` ladder and top, reeval_while_waiting its `backoff`; `config`
    is needed with a ladder, whose rungs scale the search's budget)."""
    rules: list[BaseScheduler] = [NoiseRuns(noise_runs), Reevaluation(reeval)]
    if promote:
        rules.append(Promotion(promote, promote_top, config))
    return rules + [NoiseFloorWait(noise_runs), OutageReevaluation(reeval_while_waiting, offline_fallback),
                    FromStrategy(strategy)]


__all__ = ["BaseScheduler", "Child", "Decision", "FromStrategy", "NoiseFloorWait", "NoiseRuns", "OutageReevaluation",
           "Promotion", "Propose", "Reevaluation", "Run", "Snapshot", "Wait", "chain", "decide", "reevaluation",
           "seed_genome"]
