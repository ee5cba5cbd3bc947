"""Several proposers in one search, each chosen with a weight, so their yields can be compared.

Each child's proposer is drawn from the context's seeded rng (the same search draws the
same sequence again) and recorded on the trial as ``proposer``.
"""

from __future__ import annotations

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError
from population.errors import OptionError


class MixedProposer(Proposer):
    """Delegates each child to one of several proposers, drawn by weight.

    >>> MixedProposer([(OfflineProposer(), 0.8), (AnthropicProposer(), 0.2)])  # doctest: +SKIP

    Args:
        members: (proposer, weight) pairs; weights are positive and need not sum to 1.
    """

    def __init__(self, members: list[tuple[Proposer, float]]):
        if not members or any(w <= 0 for _, w in members):
            raise OptionError("a mix needs at least one proposer, each with a positive weight")
        self.members = list(members)
        self.name = ",".join(f"{p.name}:{w:g}" for p, w in self.members)

    @property
    def remote(self) -> bool:
        return any(p.remote for p, _ in self.members)

    @property
    def offline_fallback(self) -> bool:
        return any(p.offline_fallback for p, _ in self.members)

    def _pick(self, ctx: ProposalContext) -> Proposer:
        members = self.members
        if ctx.offline_only:  # the API is down: the members that need none keep the devices busy
            members = [(p, w) for p, w in self.members if p.offline_fallback] or members
        proposers, weights = zip(*members)
        return ctx.rng.choices(proposers, weights=weights)[0]

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        member = self._pick(ctx)
        return self._tagged(member.mutate(parent, ctx), member)

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        member = self._pick(ctx)
        return self._tagged(member.crossover(a, b, base, ctx), member)

    @staticmethod
    def _tagged(proposal: Proposal, member: Proposer) -> Proposal:
        proposal.proposer = proposal.proposer or member.name
        proposal.remote = proposal.remote and member.remote
        return proposal

    def preflight(self, parent: Genome, ctx: ProposalContext) -> list[str]:
        """The members' lines; a member that cannot work here is a warning while another can (its share
        of the mix fails), and the mix's error when none can."""
        lines, failed = [], []
        for member, _ in self.members:
            try:
                lines += member.preflight(parent, ctx)
            except ProposerError as e:
                failed.append(e)
        if failed and len(failed) == len(self.members):
            raise failed[0]
        return lines + [f"warning: {e}; its share of the mix fails" for e in failed]

    def close(self) -> None:
        for member, _ in self.members:
            member.close()
