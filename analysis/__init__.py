"""Read-only views of searches: summaries, figures, reports, comparisons.

Everything here reads the data layer (`population.Search`, `TrialRecord`, git) and
writes only figures and pages. A notebook uses the same functions as `evo report` and
`evo compare`:

    from population import Search
    import analysis

    search = Search.open("demo")
    analysis.trials_frame(search.trials())           # a pandas DataFrame
    trials = search.trials()
    analysis.progress(trials).final_best
    analysis.plot_progress(trials)                   # a matplotlib Figure
    analysis.plot_lineage(trials)
    for step in analysis.best_lineage(search.lineage(), diff=search.repo.diff):
        print(step.trial, step.delta, step.description)
    analysis.yield_by(trials, key="proposer")
    analysis.write_report(search)                     # runs/demo/report/report.html

Modules: progress (best-so-far, keep and failure rates), tree (lineage DAG, thinning,
layout, figure), walk (the best lineage with diffs), yields (per operator / proposer),
noise (noise floor from re-evaluations), report (figures + HTML page), compare
(strategies side by side), summary (the text views of `evo status` and `evo show`), frame (the
trials as a pandas DataFrame).
"""

from population._exports import lazy_exports

# `progress` is also the name of its module: bound here, at import, as before (and it is light).
from analysis.progress import (Point, Progress, device_seconds, failure_rate, is_failure, keep_rate, plot_progress,
                               progress)

# The other names load with their module on first use (PEP 562), so `evo status`, which needs the
# summary alone, starts without pandas and networkx (~0.7 s of CPU on every call).
_LAZY = {
    "analysis.compare": ("ComparisonTable", "GroupRow", "Run", "compare_runs", "load_runs", "plot_comparison",
                         "render_table"),
    "analysis.frame": ("trials_frame",),
    "analysis.noise": ("NoiseFloor", "noise_floor"),
    "analysis.report": ("ReportFiles", "SearchFacts", "search_facts", "write_report"),
    "population.results_tsv": ("parse_results_tsv", "results_tsv"),
    "analysis.tree": ("TreeView", "lineage_graph", "lineage_svg", "plot_lineage", "thin", "tree_view"),
    "analysis.walk": ("Step", "best_lineage", "render_walk"),
    "analysis.yields": ("Yield", "render_yields", "yield_by"),
}
__getattr__, __dir__ = lazy_exports("analysis", _LAZY, globals())


__all__ = [
    "ComparisonTable", "GroupRow", "Run", "compare_runs", "load_runs", "plot_comparison", "render_table",
    "trials_frame", "NoiseFloor", "noise_floor",
    "Point", "Progress", "device_seconds", "failure_rate", "is_failure", "keep_rate", "plot_progress", "progress",
    "ReportFiles", "SearchFacts", "search_facts", "write_report",
    "parse_results_tsv", "results_tsv",
    "TreeView", "lineage_graph", "lineage_svg", "plot_lineage", "thin", "tree_view",
    "Step", "best_lineage", "render_walk",
    "Yield", "render_yields", "yield_by",
]
