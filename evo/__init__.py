"""evoresearch: autonomous ML research as evolution.

A notebook builds and drives the same engine as the `evo` command:

    import evo
    search = evo.create_search("demo", profile="tiny", budget=5)
    loop = evo.SearchLoop(search, evo.make_strategy("evolve"), evo.from_spec("offline"),
                          evo.parse_devices("cpu"), evo.RunOptions(trials=12, prune=True))
    loop.run()
    search.lineage().best

The layers: `population` (the data: genomes, trials, lineage, the search folder) at the
bottom; `evo` (this package: runner, proposers, strategies, loop) and `analysis` (the
read-only views) beside each other on top of it; the `evo` command line over both.

A search shared by several hosts is made with `create_search(..., storage="postgresql://...",
remote=GIT_URL)`; each host joins it once (`join_search`), opens it with
`Search.open(name, worker=True)` and runs the same `SearchLoop` (which then coordinates
through `SharedHosts`).
"""

from evo.compare import CompareConfig, Comparison
from evo.devices import Slot, default_slots, parse_devices
from evo.hosts import OneHost, SharedHosts
from evo.loop import RunOptions, SearchLoop, StopKind, StopReason
from evo.proposers import (Genome, OfflineProposer, Proposal, ProposalContext, Proposer, ProposerError, SpecError,
                           from_spec)
from evo.pruners import make_pruner
from evo.runner import TrialResult, TrialRunner, run_trial, trial_environment
from evo.search import create_search, describe_harness, join_search
from evo.strategies import EvolveStrategy, GreedyStrategy, Plan, RandomStrategy, Strategy, make_strategy
from population import EvoError, Search, SearchConfig, SearchError

try:
    from importlib.metadata import version as _version

    __version__ = _version("evoresearch")
except Exception:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CompareConfig", "Comparison", "Slot", "default_slots", "parse_devices",
    "RunOptions", "SearchLoop", "StopKind", "StopReason",
    "Genome", "OfflineProposer", "Proposal", "ProposalContext", "Proposer", "ProposerError", "SpecError", "from_spec",
    "make_pruner", "TrialResult", "TrialRunner", "run_trial", "trial_environment",
    "create_search", "describe_harness", "join_search", "OneHost", "SharedHosts",
    "EvolveStrategy", "GreedyStrategy", "Plan", "RandomStrategy", "Strategy", "make_strategy",
    "EvoError", "Search", "SearchConfig", "SearchError",
]
