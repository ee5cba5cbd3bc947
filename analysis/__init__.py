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

from analysis.compare import ComparisonTable, GroupRow, Run, compare_runs, load_runs, plot_comparison, render_table
from analysis.frame import trials_frame
from analysis.noise import NoiseFloor, noise_floor
from analysis.progress import (Point, Progress, device_seconds, failure_rate, is_failure, keep_rate, plot_progress,
                               progress)
from analysis.report import ReportFiles, SearchFacts, search_facts, write_report
from population.results_tsv import parse_results_tsv, results_tsv
from analysis.tree import TreeView, lineage_graph, lineage_svg, plot_lineage, thin, tree_view
from analysis.walk import Step, best_lineage, render_walk
from analysis.yields import Yield, render_yields, yield_by

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
