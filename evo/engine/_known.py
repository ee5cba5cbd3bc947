"""No trial spent twice on a known idea: one proposal's check against the lab notebook (issue 31).

Every proposal passes through an `IdeaGate` before its child is trained, whoever wrote it (any
proposer, a member of a mix). The judge is `evo.proposers.KnownIdeas`; the gate does what follows:

- a proposer may ask first (`ProposalContext.known_idea`, the gate's `hook`): the chat proposers send a
  refused answer back to the model with what was measured (one more turn), a constant-only proposer
  draws again;
- what a proposer returns is judged once more here: an offline proposal refused (`remote` False) is drawn
  again, up to REDRAWS times; a refused proposal from a service (an LLM that insisted, an agent command)
  is recorded as an invalid proposal, never trained, since asking it again would pay for a whole proposal;
- the child's trial records every proposal refused before it (`population.repeats.SKIPPED_ATTR`: what it
  was, the verdict and what was measured) and, when it repeats an idea measured better or inside the
  noise and is trained as a new combination, says that too (`REPEAT_ATTR`). `evo show` prints both and
  `evo status` counts the trials saved.

Without memory (`--no-memory`, or a notebook with no rows yet) the gate lets everything through.
"""

from __future__ import annotations

from typing import Callable

from evo.proposers import CAPS, KnownIdeas, Proposal, truncated
from population.genomes import genome_hash
from population.repeats import REPEAT_ATTR, SKIPPED_ATTR

REDRAWS = 5          # further proposals asked of an offline proposer whose child repeated a known idea
KEPT_SKIPS = 10      # refused proposals a trial records (each one a line of `evo show`)


class IdeaGate:
    """The notebook's check of one proposal's children (see the module docstring).

    ideas: the judge for this proposal's parents; None lets everything through.
    known: the trees of the genomes the search has: one of them is no new idea but a duplicate, recorded as
        one with its original's score (`_starting.record_duplicate`), so the gate leaves it alone."""

    def __init__(self, ideas: KnownIdeas | None, known: set[str] | frozenset[str] = frozenset()):
        self.ideas, self.known = ideas, known
        self.refused: dict[str, dict] = {}      # genome hash -> what the record says of it, in refusal order
        self._judged: dict[str, object] = {}    # genome hash -> its judgement (None: nothing known)

    def is_refused(self, files: dict[str, str]) -> bool:
        """Whether a child with these files was refused already (a proposer's redraw must not bring it again)."""
        return bool(self.refused) and genome_hash(files) in self.refused

    def hook(self, files: dict[str, str], description: str = "") -> str | None:
        """`ProposalContext.known_idea`: why this child is not to be trained (what was measured), or None."""
        return self._refuse(files, description, "")

    def _judge(self, files: dict[str, str]):
        key = genome_hash(files)
        if key not in self._judged:
            self._judged[key] = self.ideas.judge(files) if self.ideas is not None and key not in self.known else None
        return self._judged[key]

    def _refuse(self, files: dict[str, str], description: str, proposer: str) -> str | None:
        judgement = self._judge(files)
        if judgement is None or not judgement.refuse:
            return None
        entry = self.refused.setdefault(genome_hash(files), {
            "description": truncated((description or "").strip().split("\n")[0], CAPS["description"]),
            "verdict": judgement.verdict, "reason": judgement.reason(), "proposer": proposer})
        return entry["reason"]

    def screen(self, propose: Callable[[], Proposal]) -> Proposal:
        """The proposal `propose()` makes, asked again while an offline one repeats a known idea; a refused
        proposal that is not asked again comes back invalid. Its record says what was refused (`stamp`)."""
        proposal = propose()
        for redraw in range(REDRAWS + 1):
            why = self._refuse(proposal.files, proposal.description, proposal.proposer) if proposal.ok else None
            if why is None:
                break
            if proposal.remote or redraw == REDRAWS:
                again = "" if proposal.remote else f" (and so did the {REDRAWS} proposals drawn again)"
                proposal.ok = False
                proposal.error = truncated(f"not trained: it repeats an idea the lab notebook knows{again}: {why}",
                                           CAPS["error"])
                break
            proposal = propose()
        return self.stamp(proposal)

    def stamp(self, proposal: Proposal) -> Proposal:
        """Write onto the proposal (so onto its trial) what was refused before it, and whether it repeats a known
        idea it is trained for all the same."""
        if self.refused:
            entries = list(self.refused.values())
            for entry in entries:
                entry["proposer"] = entry["proposer"] or proposal.proposer
            proposal.attrs[SKIPPED_ATTR] = entries[:KEPT_SKIPS]
        if proposal.ok and not self.is_refused(proposal.files):
            judgement = self._judge(proposal.files)
            if judgement is not None:
                proposal.attrs[REPEAT_ATTR] = {"verdict": judgement.verdict, "reason": judgement.reason()}
        return proposal
