"""Proposers: turn parents into a child genome."""

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError
from evo.proposers._offline import OfflineProposer

__all__ = ["Genome", "Proposal", "ProposalContext", "Proposer", "ProposerError", "OfflineProposer"]
