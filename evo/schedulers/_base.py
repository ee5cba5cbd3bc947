"""What a scheduler sees and what it may decide.

The loop asks a chain of schedulers, in order, what to plan next whenever a device will need
work; the first one with an opinion decides. Each scheduler is a pure function of a
`Snapshot` (the study as the loop last read it, and what this loop has running and queued):
it never touches the store, git or a process, so each one is tested on hand-built records.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field

from evo.proposers import Proposal
from evo.strategies import Plan
from population.lineage import Individual, Lineage


@dataclass
class Child:
    """A genome waiting for a device."""

    operator: str
    parents: list[int]
    commit: str | None = None           # known for the seed, re-evaluations and re-runs
    proposal: Proposal | None = None    # for new genomes
    seed: int = 0
    island: int = 0
    rerun_of: int | None = None
    attrs: dict = field(default_factory=dict)
    published: bool = False             # its commit is on a shared search's remote
    wanted: int = 0                     # a re-evaluation: the evaluations of its genome it completes


@dataclass(frozen=True)
class Snapshot:
    """The search as a scheduler sees it.

    lineage: the study's trials as the loop last read them.
    running: the genomes (git trees) on this loop's devices now.
    queued: children waiting for a device (re-runs, re-evaluations, promotions).
    free_slots: devices with nothing running.
    offline_only: the proposer's API is being waited out: proposals must do without it.
    seed: the search's base seed (a genome's n-th evaluation runs on seed + n).
    rng: the randomness the strategy plans with (seeded by the loop, so a plan repeats).
    """

    lineage: Lineage
    running: tuple[str, ...] = ()
    queued: tuple[Child, ...] = ()
    free_slots: int = 1
    offline_only: bool = False
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def evaluations(self, ind: Individual) -> tuple[int, int]:
        """(finished, running or queued here) evaluations of a genome: its first trial and its
        re-evaluations (failed ones count: a genome that crashes is not retried for ever)."""
        done, _ = self.lineage.evaluations(ind)
        busy = sum(1 for tree in self.running if tree == ind.tree)
        busy += sum(1 for c in self.queued if c.operator == "reeval" and c.parents == [ind.trial])
        return done, busy

    def promoted(self, ind: Individual, rung: int) -> bool:
        """Whether genome `ind` has a trial at rung `rung`, in the study or queued here."""
        return (self.lineage.promoted(ind.tree, rung)
                or any(c.operator == "promote" and c.commit == ind.commit and c.attrs.get("rung") == rung
                       for c in self.queued))


@dataclass(frozen=True)
class Run:
    """Queue this child (a known genome) for the next free device."""

    child: Child


@dataclass(frozen=True)
class Propose:
    """Ask the proposer for a child of this plan."""

    plan: Plan


@dataclass(frozen=True)
class Wait:
    """Plan nothing more for now (a later snapshot may differ)."""

    why: str


Decision = Run | Propose | Wait


class BaseScheduler(abc.ABC):
    """One rule of what runs next. Subclasses implement `decide`."""

    @abc.abstractmethod
    def decide(self, snapshot: Snapshot) -> Decision | None:
        """What to plan next, or None to leave it to the next scheduler of the chain."""


def decide(chain: list[BaseScheduler], snapshot: Snapshot) -> Decision | None:
    """The first decision of `chain` (None: no scheduler had one)."""
    for scheduler in chain:
        decision = scheduler.decide(snapshot)
        if decision is not None:
            return decision
    return None


def reevaluation(snapshot: Snapshot, ind: Individual | None, wanted: int, why: str = "") -> Run | None:
    """A re-evaluation of `ind` on the next seed, unless it has `wanted` evaluations done or under way."""
    if ind is None:
        return None
    done, busy = snapshot.evaluations(ind)
    if done + busy >= wanted:
        return None
    return Run(Child("reeval", [ind.trial], commit=ind.commit, seed=snapshot.seed + done + busy, island=ind.island,
                     wanted=wanted, attrs={"description": f"re-evaluate #{ind.trial}{why} (seed {done + busy})",
                                           "proposer": "reeval"}))


def seed_genome(lineage: Lineage) -> Individual | None:
    """The seed's genome once it has a result."""
    seed = lineage.seed
    return lineage.individual(seed.number) if seed is not None and seed.finished_ok else None
