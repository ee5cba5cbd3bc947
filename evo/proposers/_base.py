"""What a proposer receives and returns."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from population.errors import ProposalError
from population.genomes import Genome
from population.lineage import Lineage
from population.notebook import Recall

__all__ = ["CAPS", "Genome", "Proposal", "ProposalContext", "Proposer", "ProposerError", "ProposerUnavailable",
           "cap_proposal", "truncated"]

# The most a proposal may carry into the commit message, the study and `evo show` (characters;
# bytes for a file). The full answer stays in the trial's response.json or agent.log.
# A mutable file's cap is five times the seed's train.py, and less than the default corpus's
# validation text even compressed (323 KB, 112 KB with lzma, ~150 KB as text): a genome has
# room for code, not for the text it is scored on.
CAPS = {"description": 200, "rationale": 4000, "error": 1000, "file": 128 << 10}


@dataclass
class Proposal:
    """A child genome, or the reason there is none.

    files: the child's complete mutable files (path -> text).
    ok: False when the proposer could not produce a valid child; `error` says why and
        the trial is recorded as ``invalid_proposal`` with the artifacts kept.
    usage: LLM usage of the call(s): input/output/cache tokens and ``cost_usd``.
    artifacts: file name -> text written into the trial's folder (prompts, responses).
    capped: what `cap_proposal` cut, with the sizes (recorded on the trial).
    """

    files: dict[str, str]
    description: str
    rationale: str = ""
    ok: bool = True
    error: str = ""
    usage: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    proposer: str = ""
    capped: dict = field(default_factory=dict)   # field -> {"length": what came, "cap": what was kept}
    attrs: dict = field(default_factory=dict)    # more to record on the trial (a mix's weights in force)
    remote: bool = True   # written by a service that can be down (an LLM API); False for the offline proposer


@dataclass
class ProposalContext:
    """Everything about the search a proposer may use besides the parents.

    program: the research instructions (program.md).
    mutable: the files a child may change; anything else is rejected.
    settings: fixed facts of the search (profile, budget, metric, ...; see `Target.proposer_settings`).
    lineage: the search so far (the proposer's memory).
    rng: seeded per child, so offline proposals are reproducible.
    is_known: whether a genome (path -> text) was already proposed or evaluated.
    scratch: a private folder for this proposal (the command proposer works there).
    executor: how a proposer starts a process of its own (the search's sandbox: an
        `evo.runner.Executor`); None runs it as a plain process.
    offline_only: the search is waiting for an API that stopped answering: a proposer that can
        propose without it (the offline member of a mix) does so.
    progress, say: see below; no-ops unless the search listens.
    hidden_data: what the harness's data was made from (the raw text, the data cache): masked in
        the sandbox of a proposer's processes, which may run genome code.
    training_data: the token files of the training split (and the tokenizer), shown again on top.
    memory: the lab notebook's ideas of searches of the same task, this one's included
        (`population.notebook`); None when the search runs without memory (`--no-memory`).
    known_idea: known_idea(files, description) says why a child with these files is not to be trained
        (what the notebook measured of the idea it repeats: worse beyond the noise, or already measured on
        this parent), or None when it may be. Call it on the child about to be returned: on a reason, a
        chat proposer asks its model again with it (one more turn), a proposer of constants draws again.
        Each reason is recorded on the trial as a proposal skipped; the engine judges the returned child
        the same way whatever the proposer did (`evo.engine._known`).
    """

    program: str
    mutable: list[str]
    settings: dict
    lineage: Lineage
    rng: random.Random
    is_known: Callable[[dict[str, str]], bool] = lambda files: False
    scratch: Path | None = None
    executor: object | None = None
    offline_only: bool = False   # the API is down: a mix draws among its offline members only
    # Where a proposer tells the search what it is doing (both may be called from its worker thread):
    # progress({"proposer": ..., "model": ..., "phase": ..., "tokens": ...}) updates the proposal's row in
    # `evo status` and the live view; say(line) is one line in the run's log (a mode fallback, a warning).
    progress: Callable[[dict], None] = lambda facts: None
    say: Callable[[str], None] = lambda line: None
    hidden_data: tuple[Path, ...] = ()
    training_data: tuple[Path, ...] = ()
    memory: Recall | None = None
    known_idea: Callable[..., str | None] = lambda files, description="": None


class ProposerError(ProposalError, RuntimeError):
    """A problem no retry will fix (a missing or rejected API key, a bad endpoint): stops the search."""


class ProposerUnavailable(ProposalError, RuntimeError):
    """The proposer's service does not answer for now (down, overloaded, rate-limited, timing out)
    and its own retries are spent, or a network fault ended the call (a dropped or refused
    connection). It is the service's fault, never the idea's: the search records no trial (and no
    failed idea), keeps its devices busy otherwise and asks again after a growing wait.

    usage: what the proposal spent before the fault (calls answered, tokens, cost, and
        ``seconds`` waited), so the search can still count it; empty when nothing is known."""

    def __init__(self, message: str, *, usage: dict | None = None):
        super().__init__(message)
        self.usage = dict(usage or {})


def cap_proposal(proposal: Proposal) -> Proposal:
    """Cut what a proposer brought to the sizes in CAPS, recording each cut in `proposal.capped`.

    The description keeps its first line; a mutable file past the cap makes the proposal
    invalid (no such child is committed). Returns the same proposal."""
    first = next((line.strip() for line in (proposal.description or "").splitlines() if line.strip()), "")
    for name, text in (("description", first), ("rationale", proposal.rationale or ""), ("error", proposal.error or "")):
        if len(text) > CAPS[name]:
            proposal.capped[name] = {"length": len(text), "cap": CAPS[name]}
            text = truncated(text, CAPS[name])
        setattr(proposal, name, text)
    big = {path: len(text.encode("utf-8", "replace")) for path, text in proposal.files.items()
           if len(text) > CAPS["file"] // 4 and len(text.encode("utf-8", "replace")) > CAPS["file"]}
    if big and proposal.ok:
        path, size = next(iter(big.items()))
        proposal.capped["file"] = {"length": size, "cap": CAPS["file"], "path": path}
        proposal.ok = False
        proposal.error = f"the child's {path} is {size:,} bytes; a mutable file may hold at most {CAPS['file']:,}"
    return proposal


def truncated(text: str, cap: int) -> str:
    """`text` cut to at most `cap` characters, ending with a mark that says where and how much was cut."""
    if len(text) <= cap:
        return text
    mark = f" [truncated at {cap:,} of {len(text):,} chars]"
    return text[: max(0, cap - len(mark))] + mark


class Proposer:
    """Base class: turns parents into a child genome.

    Implement `mutate` and `crossover`. Both run in a worker thread while devices are
    busy, so they must not touch the store or git: they return a Proposal and the loop
    records it."""

    name = "base"
    remote = True   # its proposals come from a service that can be down

    @property
    def offline_fallback(self) -> bool:
        """Whether it can still propose while its service is down (with `ctx.offline_only`)."""
        return not self.remote

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        raise NotImplementedError

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        raise NotImplementedError

    def preflight(self, parent: Genome, ctx: ProposalContext) -> list[str]:
        """What to say at the start of a run about this proposer's fit to the search (e.g. whether its
        prompt for `parent` fits the model's context), as lines; raises ProposerError when it cannot work."""
        return []

    def close(self) -> None:
        """Release clients or processes (called once when the search stops)."""
