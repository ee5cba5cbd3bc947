"""evoresearch: autonomous ML research as evolution.

A notebook steps the same engine as the `evo` command, one trial at a time (`Engine`: ask,
run, tell; `enqueue` hands it a genome of your own):

    import evo
    search = evo.create_search("demo", profile="tiny", budget=5)
    engine = evo.Engine(search, evo.make_strategy("evolve"), evo.from_spec("offline"), evo.RunOptions(limits=evo.LimitSpec(trials=12)))
    while (ticket := engine.ask()) is not None:
        told = engine.tell(ticket, engine.run(ticket))   # told.kept: a new best
    search.lineage().best

`SearchLoop` runs the same calls on several devices at once (`SearchLoop(search, strategy,
proposer, evo.parse_devices("cpu:2"), options).run()`), as `evo run` does.

The layers: `population` (the data: genomes, trials, lineage, the search folder) at the
bottom; `evo` (this package: runner, proposers, strategies, engine, loop) and `analysis` (the
read-only views) beside each other on top of it; the `evo` command line over both.

A search shared by several hosts is made with `create_search(..., storage="postgresql://...",
remote=GIT_URL)`; each host joins it once (`join_search`), opens it with
`Search.open(name, worker=True)` and runs the same `SearchLoop` (which then coordinates
through `SharedHosts`).
"""

from population._exports import lazy_exports

# Each public name loads with its module on first use (PEP 562): `evo.cli` lives in this package,
# so every `evo` command imports this file, and `evo status` needs none of the loop, proposers or
# runner (~0.3 s of CPU on every call). `from evo import X` and `evo.X` work as before.
_LAZY = {
    "evo.compare": ("CompareConfig", "Comparison"),
    "evo.devices": ("Slot", "default_slots", "parse_devices"),
    "evo.engine": ("BackoffSpec", "Engine", "LimitSpec", "NoiseSpec", "PromotionSpec", "Ticket", "Told"),
    "evo.events": ("EventKind",),
    "evo.hosts": ("OneHost", "SharedHosts"),
    "evo.loop": ("RunOptions", "SearchLoop", "StopKind", "StopReason"),
    "evo.proposers": ("Genome", "OfflineProposer", "Proposal", "ProposalContext", "Proposer", "ProposerError",
                      "SpecError", "from_spec"),
    "evo.pruners": ("make_pruner",),
    "evo.runner": ("TrialResult", "TrialRunner", "run_trial", "trial_environment"),
    "evo.search": ("create_search", "describe_harness", "join_search"),
    "evo.strategies": ("EvolveStrategy", "GreedyStrategy", "Plan", "RandomStrategy", "Strategy", "make_strategy"),
    "population": ("EvoError", "Search", "SearchConfig", "SearchError"),
}
__getattr__, __dir__ = lazy_exports("evo", _LAZY, globals())


try:
    from importlib.metadata import version as _version

    __version__ = _version("evoresearch")
except Exception:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CompareConfig", "Comparison", "Slot", "default_slots", "parse_devices",
    "BackoffSpec", "Engine", "EventKind", "LimitSpec", "NoiseSpec", "PromotionSpec", "RunOptions", "SearchLoop",
    "StopKind", "StopReason", "Ticket", "Told",
    "Genome", "OfflineProposer", "Proposal", "ProposalContext", "Proposer", "ProposerError", "SpecError", "from_spec",
    "make_pruner", "TrialResult", "TrialRunner", "run_trial", "trial_environment",
    "create_search", "describe_harness", "join_search", "OneHost", "SharedHosts",
    "EvolveStrategy", "GreedyStrategy", "Plan", "RandomStrategy", "Strategy", "make_strategy",
    "EvoError", "Search", "SearchConfig", "SearchError",
]
