"""What a proposer receives and returns."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from population.genomes import Genome
from population.lineage import Lineage

__all__ = ["Genome", "Proposal", "ProposalContext", "Proposer", "ProposerError"]


@dataclass
class Proposal:
    """A child genome, or the reason there is none.

    files: the child's complete mutable files (path -> text).
    ok: False when the proposer could not produce a valid child; `error` says why and
        the trial is recorded as ``invalid_proposal`` with the artifacts kept.
    usage: LLM usage of the call(s): input/output/cache tokens and ``cost_usd``.
    artifacts: file name -> text written into the trial's folder (prompts, responses).
    """

    files: dict[str, str]
    description: str
    rationale: str = ""
    ok: bool = True
    error: str = ""
    usage: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    proposer: str = ""


@dataclass
class ProposalContext:
    """Everything about the search a proposer may use besides the parents.

    program: the research instructions (program.md).
    mutable: the files a child may change; anything else is rejected.
    settings: fixed facts of the search (profile, seq_len, budget, ...).
    lineage: the search so far (the proposer's memory).
    rng: seeded per child, so offline proposals are reproducible.
    is_known: whether a genome (path -> text) was already proposed or evaluated.
    scratch: a private folder for this proposal (the command proposer works there).
    executor: how a proposer starts a process of its own (the search's sandbox: an
        `evo.runner.Executor`); None runs it as a plain process.
    """

    program: str
    mutable: list[str]
    settings: dict
    lineage: Lineage
    rng: random.Random
    is_known: Callable[[dict[str, str]], bool] = lambda files: False
    scratch: Path | None = None
    executor: object | None = None


class ProposerError(RuntimeError):
    """A problem no retry will fix (a missing or rejected API key, a bad endpoint): stops the search."""


class Proposer:
    """Base class: turns parents into a child genome.

    Implement `mutate` and `crossover`. Both run in a worker thread while devices are
    busy, so they must not touch the store or git: they return a Proposal and the loop
    records it."""

    name = "base"

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        raise NotImplementedError

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        raise NotImplementedError

    def close(self) -> None:
        """Release clients or processes (called once when the search stops)."""
