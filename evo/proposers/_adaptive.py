"""A mix of proposers whose weights follow what each member's children achieved (`adaptive:` in --proposer).

The rule is Thompson sampling over Bernoulli arms: a member's chance that its next child makes a
new best is Beta(1 + its children that did, 1 + those that did not), read from the search's own
records each time (so it survives restarts and needs no state); each child goes to the member
whose draw from that belief is highest. A member that never pays is drawn less and less, but
never never: its belief keeps a tail, which is the exploration. The weights in force (each
member's chance to be drawn, estimated from the same beliefs) are recorded on every trial as
`mix_weights`, so the report can show how they moved.

Cost is not in the rule: a trial's device time is spent whoever proposes, and the spend cap
(`--max-cost-usd`) bounds the dollars; the report's yield by proposer shows cost per member.
"""

from __future__ import annotations

import random

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer
from evo.proposers._mixed import MixedProposer
from population.lineage import MIX_WEIGHTS_ATTR as WEIGHTS_ATTR, Lineage

ESTIMATE_DRAWS = 400           # draws that estimate the weights in force (from their own rng, not the search's)


class AdaptiveProposer(MixedProposer):
    """A mix drawn by Thompson sampling on each member's record of new bests (see the module docstring).

    >>> AdaptiveProposer([(OfflineProposer(), 1.0), (AnthropicProposer(), 1.0)])   # doctest: +SKIP

    Args:
        members: (proposer, prior) pairs: a member's belief starts as Beta(prior, 1), its prior counting as
            that many pseudo new bests; 1 each gives every member the same start.
    """

    def __init__(self, members: list[tuple[Proposer, float]]):
        super().__init__(members)
        self.name = "adaptive:" + ",".join(p.name for p, _ in self.members)

    def record(self, lineage: Lineage) -> dict[str, tuple[int, int]]:
        """Member name -> (children with a result, those that made a new best), from the search's trials."""
        counts = {p.name: [0, 0] for p, _ in self.members}
        for t in lineage.children():
            if t.proposer in counts:
                counts[t.proposer][0] += 1
                counts[t.proposer][1] += lineage.kept(t.number)
        return {name: (n, k) for name, (n, k) in counts.items()}

    def _draw(self, members: list[tuple[Proposer, float]], record: dict, rng: random.Random) -> Proposer:
        def sample(member: tuple[Proposer, float]) -> float:
            n, k = record[member[0].name]
            return rng.betavariate(member[1] + k, 1 + n - k)
        return max(members, key=sample)[0]

    def weights(self, lineage: Lineage, members: list[tuple[Proposer, float]] | None = None) -> dict[str, float]:
        """Each member's chance to be drawn now, estimated from its belief (reproducibly)."""
        members = members or self.members
        record = self.record(lineage)
        rng = random.Random(sum(n for n, _ in record.values()))
        wins = {p.name: 0 for p, _ in self.members}
        for _ in range(ESTIMATE_DRAWS):
            wins[self._draw(members, record, rng).name] += 1
        return {name: round(count / ESTIMATE_DRAWS, 3) for name, count in wins.items()}

    def _chosen(self, ctx: ProposalContext) -> tuple[Proposer, dict[str, float]]:
        members = self.members
        if ctx.offline_only:
            members = [(p, w) for p, w in self.members if p.offline_fallback] or members
        return self._draw(members, self.record(ctx.lineage), ctx.rng), self.weights(ctx.lineage, members)

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        member, weights = self._chosen(ctx)
        return self._weighed(self._tagged(member.mutate(parent, ctx), member), weights)

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        member, weights = self._chosen(ctx)
        return self._weighed(self._tagged(member.crossover(a, b, base, ctx), member), weights)

    @staticmethod
    def _weighed(proposal: Proposal, weights: dict[str, float]) -> Proposal:
        proposal.attrs[WEIGHTS_ATTR] = weights
        return proposal
