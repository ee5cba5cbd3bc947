"""Proposers: turn parents into a child genome.

Build one by name as the CLI does (`from_spec("offline:0.8,anthropic:0.2", model=...)`)
or construct a class directly.
"""

from evo.proposers._base import (CAPS, Genome, Proposal, ProposalContext, Proposer, ProposerError, ProposerUnavailable,
                                 cap_proposal, truncated)
from evo.proposers._hyperparams import hyperparameter_values
from evo.proposers._offline import OfflineProposer
from evo.proposers._known import Judgement, KnownIdeas, ask_again_message
from evo.proposers._anthropic import AnthropicProposer
from evo.proposers._command import CommandProposer
from evo.proposers._mixed import MixedProposer
from evo.proposers._adaptive import WEIGHTS_ATTR, AdaptiveProposer
from evo.proposers._openai_compat import OpenAICompatibleProposer
from evo.proposers._pricing import Price, load_prices
from evo.proposers._family import FAMILY_ATTR, code_family, tunable_numbers
from evo.proposers._ranges import RangeError
from evo.proposers._sampler import SAMPLERS, STATE_ATTR, WROTE_ATTR, SamplerProposer, wrote_of
from evo.proposers._spec import PROPOSERS, SpecError, from_spec, parse_spec

__all__ = ["hyperparameter_values", "CAPS", "Genome", "Proposal", "ProposalContext", "Proposer", "ProposerError", "ProposerUnavailable",
           "cap_proposal", "truncated", "OfflineProposer", "Judgement", "KnownIdeas", "ask_again_message",
           "AnthropicProposer", "CommandProposer", "MixedProposer", "AdaptiveProposer", "WEIGHTS_ATTR", "OpenAICompatibleProposer", "Price", "load_prices",
           "PROPOSERS", "SpecError", "from_spec", "parse_spec",
           "FAMILY_ATTR", "code_family", "tunable_numbers", "RangeError", "SAMPLERS", "STATE_ATTR", "WROTE_ATTR",
           "SamplerProposer", "wrote_of"]
