"""evoresearch: autonomous ML research as evolution.

A notebook drives the same engine as the `evo` command:

    import evo
    search = evo.Search.create("demo", profile="tiny", budget=5)
    loop = evo.SearchLoop(search, evo.EvolveStrategy(), evo.OfflineProposer(),
                          evo.parse_devices("cpu"), evo.RunOptions(trials=12))
    loop.run()
    search.lineage().best
"""

from evo.loop import RunOptions, SearchLoop, Slot, parse_devices
from evo.proposers import Genome, OfflineProposer, Proposal, ProposalContext, Proposer, ProposerError
from evo.runner import TrialResult, run_trial, scrub_environment, trial_environment
from evo.search import Search, SearchConfig, SearchError
from evo.strategies import EvolveStrategy, GreedyStrategy, Plan, RandomStrategy, Strategy

__all__ = [
    "RunOptions", "SearchLoop", "Slot", "parse_devices",
    "Genome", "OfflineProposer", "Proposal", "ProposalContext", "Proposer", "ProposerError",
    "TrialResult", "run_trial", "scrub_environment", "trial_environment",
    "Search", "SearchConfig", "SearchError",
    "EvolveStrategy", "GreedyStrategy", "Plan", "RandomStrategy", "Strategy",
]
