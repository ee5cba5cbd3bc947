"""The engine's typed records: a proposal ordered (`Order`), a trial to run (`Ticket`), and what
telling its result changed (`Told`)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from evo.runner import Limits
from evo.slots import Slot
from evo.strategies import Plan
from population.lineage import Lineage


class ProposalFacts:
    """What `evo status` shows of one proposal in flight. Its worker thread updates it (the proposer's
    progress) while the loop's thread reads it: the lock makes each read a whole, consistent copy."""

    def __init__(self, facts: dict):
        self._facts, self._lock = dict(facts), threading.Lock()

    def update(self, facts: dict) -> None:
        with self._lock:
            self._facts.update(facts)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._facts)


@dataclass
class Order:
    """A plan handed to the proposer: `Engine.propose(order)` turns it into a child, in any thread.

    lineage and rng are the ones the plan was made from; offline_only: the API is being waited out;
    probe: this proposal asks the API whether it is back; scratch: a folder of its own."""

    plan: Plan
    lineage: Lineage
    rng: random.Random
    offline_only: bool = False
    probe: bool = False
    scratch: Path | None = None
    facts: ProposalFacts = field(default_factory=lambda: ProposalFacts({}))


@dataclass
class Ticket:
    """A trial recorded as RUNNING and ready to run: everything `Engine.run` (or any runner) needs.

    The progress fields (fraction, loss, pid) are updated while it runs, for `evo status`."""

    number: int
    operator: str
    parents: list[int]
    description: str
    commit: str
    tree: str
    seed: int
    slot: Slot
    worktree: Path
    log_path: Path
    env: dict[str, str]
    timeout: float
    clock: str
    threads: int
    limits: Limits
    started: float = field(default_factory=time.time)
    fraction: float = 0.0
    loss: float | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Told:
    """What telling a result changed.

    told: False when the trial was lost (another worker of a shared search took it over) and
    nothing was recorded. kept: the result beat the best by the min gain, so its genome is the
    best from now on (`new_best`)."""

    number: int
    status: str
    value: float | None
    kept: bool
    feasible: bool = True
    error: str = ""
    operator: str = ""
    description: str = ""
    seconds: float = 0.0
    told: bool = True

    @property
    def new_best(self) -> bool:
        return self.kept
