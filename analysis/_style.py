"""Shared look of the figures: markers per operator, colours per proposer and strategy.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot:
no global figure registry to leak from a long report run, no backend to choose, and a
notebook still displays the returned Figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from population.store import TrialRecord, TrialStatus

OPERATOR_MARKERS = {"seed": "*", "mutate": "o", "crossover": "D", "reeval": "s", "promote": "^", "enqueued": "P"}
OPERATOR_NAMES = {"seed": "seed", "mutate": "mutation", "crossover": "crossover", "reeval": "re-evaluation",
                  "promote": "promotion (larger scale)", "enqueued": "your genome (enqueued)"}
BEST_LINE = "#c0392b"
WIN_FACE = "#f5b041"
FAIL = "#7f1d1d"
# Fixed colours for the engine's own "proposers" so they read the same in every figure.
FIXED_PROPOSERS = {"seed": "#212121", "reeval": "#607d8b", "promote": "#8d6e63", "user": "#e91e63"}
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
STRATEGY_COLOURS = {"greedy": "#d62728", "evolve": "#1f77b4", "random": "#7f7f7f"}
DPI = 150


def new_figure(width: float, height: float, *, nrows: int = 1, ncols: int = 1, **subplot_kw):
    """A Figure with an Agg canvas and its axes.

    Args:
        width: width in inches.
        height: height in inches.
        nrows: rows of axes.
        ncols: columns of axes.
        subplot_kw: passed to `Figure.subplots` (e.g. sharey=True).

    Returns:
        (figure, axes) as `Figure.subplots` returns them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, **subplot_kw)
    return fig, axes


def finish(fig, path: str | Path | None):
    """Save `fig` as a PNG at `path` (when given) and return it.

    Args:
        fig: the figure.
        path: destination file, its folder created if needed; None saves nothing.
    """
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, facecolor="white")
    return fig


def operator_key(t: TrialRecord) -> str:
    """The marker family of a trial (unknown operators draw as mutations).

    Args:
        t: the trial.
    """
    return t.operator if t.operator in OPERATOR_MARKERS else "mutate"


def proposer_colours(proposers: Iterable[str]) -> dict[str, str]:
    """A stable colour for each proposer name, in order of first appearance.

    Args:
        proposers: proposer names as recorded on trials (repeats are fine).
    """
    colours: dict[str, str] = {}
    free = iter(PALETTE * 4)
    for name in proposers:
        if name not in colours:
            colours[name] = FIXED_PROPOSERS.get(name) or next(free)
    return colours


def strategy_colour(label: str, index: int) -> str:
    """The colour of a strategy (or any group label) in comparison figures.

    Args:
        label: the group's label, e.g. "greedy".
        index: its position among the groups, for labels without a fixed colour.
    """
    return STRATEGY_COLOURS.get(label, PALETTE[(index + 3) % len(PALETTE)])


def legend_handles(points, proposers: dict[str, str], *, noise_sd: float | None, failures: int, off_scale: int,
                   wins: int, metric: str = "val_bpb") -> list:
    """Legend entries for the progress figure: operators by marker, proposers by colour, then the marks.

    Args:
        points: the progress points drawn (to list only the operators present).
        proposers: proposer name -> colour.
        noise_sd: the noise floor drawn as a band, if any.
        failures: how many failures are marked on the axis.
        off_scale: how many results are drawn on the top edge.
        wins: how many improvements are highlighted.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = {operator_key(p.trial) for p in points if p.trial.value is not None}
    handles = [Line2D([], [], color=BEST_LINE, linewidth=2, label="best so far")]
    if noise_sd:
        handles.append(Patch(color=BEST_LINE, alpha=0.15, label=f"± noise floor (sd {noise_sd:.4f})"))
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor=WIN_FACE, markeredgecolor=BEST_LINE,
                          markersize=8, label=f"new best ({wins})"))
    for op, marker in OPERATOR_MARKERS.items():
        if op in present:
            handles.append(Line2D([], [], marker=marker, linestyle="", color="#555555", alpha=0.7, markersize=6,
                                  label=OPERATOR_NAMES[op]))
    if any(p.trial.status == TrialStatus.DUPLICATE for p in points):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="#555555",
                              markersize=6, label="duplicate genome"))
    for name, colour in proposers.items():
        handles.append(Patch(color=colour, alpha=0.6, label=f"proposer: {name or 'unknown'}"))
    if off_scale:
        handles.append(Line2D([], [], marker="^", linestyle="", color="#555555", alpha=0.6, markersize=6,
                              label=f"above the axis ({off_scale})"))
    if failures:
        handles.append(Line2D([], [], marker="x", linestyle="", color=FAIL, markersize=7, markeredgewidth=1.5,
                              label=f"failed, no {metric} ({failures})"))
    return handles
