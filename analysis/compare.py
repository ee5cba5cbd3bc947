"""Strategies side by side at equal compute: "does evolution beat greedy here?"

Each group (a strategy, or any label) holds one or more searches run on the same task,
proposer, budget and trial count with different seeds. For each group the table gives
the final best (mean ± sd over its searches), the trials each search needed to reach
the reference group's mean final best (the greedy strategy's by default), the keep rate
and failure rate of children (pooled over the group's searches) and the device-hours
spent; the figure draws best-so-far against trials and against device-hours, the mean
across seeds as a line and the range across seeds as a band.

>>> runs = load_runs({"greedy": ["cmp-greedy-s0", "cmp-greedy-s1"], "evolve": ["cmp-evolve-s0"]})  # doctest: +SKIP
>>> print(render_table(compare_runs(runs)))                                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from analysis.progress import Progress, children, is_failure, progress
from population.lineage import MINIMIZE
from population.search import Search
from population.store import TrialRecord


@dataclass
class Run:
    """One search in a comparison."""

    label: str                    # its group, e.g. the strategy
    name: str                     # the search's name
    trials: list[TrialRecord]
    metric: str = "val_bpb"
    direction: str = MINIMIZE

    def __post_init__(self):
        self.progress: Progress = progress(self.trials, direction=self.direction)


def load_runs(groups: dict[str, list[str]], *, root: str | Path = "runs") -> list[Run]:
    """Read the trials of existing searches (read-only).

    Args:
        groups: label -> names of the searches in that group.
        root: the folder holding the searches.
    """
    runs = []
    for label, names in groups.items():
        for name in names:
            search = Search.open(name, root=root)
            try:
                runs.append(Run(label=label, name=name, trials=search.trials(), metric=search.config.metric,
                                direction=search.config.direction))
            finally:
                search.close()
    return runs


@dataclass(frozen=True)
class GroupRow:
    """One line of the comparison table."""

    label: str
    names: tuple[str, ...]
    finals: tuple[float, ...]                  # final best per search that has one
    to_target: tuple[int | None, ...]          # trials to reach the target per search (None: never)
    trials: tuple[int, ...]                    # finished trials per search
    keep_rate: float | None                    # pooled over the group's children
    failure_rate: float | None
    device_hours: tuple[float, ...]            # per search

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.finals) if self.finals else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.finals) if len(self.finals) > 1 else None

    @property
    def reached(self) -> list[int]:
        return [n for n in self.to_target if n is not None]


@dataclass(frozen=True)
class ComparisonTable:
    """The comparison of several groups against a reference's final best."""

    rows: tuple[GroupRow, ...]
    reference: str | None           # the label whose mean final best is the target
    target: float | None
    metric: str = "val_bpb"


def compare_runs(runs: list[Run], *, reference: str = "greedy") -> ComparisonTable:
    """Compute the comparison table.

    Args:
        runs: the searches, each labelled with its group.
        reference: the label whose mean final best is the target of "trials to reach";
            when no group has it, the first group's is used.
    """
    labels = list(dict.fromkeys(r.label for r in runs))
    by_label = {label: [r for r in runs if r.label == label] for label in labels}
    ref = reference if reference in by_label else (labels[0] if labels else None)
    finals = [r.progress.final_best for r in by_label.get(ref, []) if r.progress.final_best is not None]
    target = statistics.fmean(finals) if finals else None
    rows = []
    for label in labels:
        group = by_label[label]
        kids = [t for r in group for t in children(r.trials)]
        kept = sum(1 for r in group for p in r.progress.points
                   if p.improved and p.trial.operator in ("mutate", "crossover"))
        rows.append(GroupRow(
            label=label, names=tuple(r.name for r in group),
            finals=tuple(r.progress.final_best for r in group if r.progress.final_best is not None),
            to_target=tuple(r.progress.trials_to_reach(target) if target is not None else None for r in group),
            trials=tuple(len(r.progress.points) for r in group),
            keep_rate=kept / len(kids) if kids else None,
            failure_rate=sum(1 for t in kids if is_failure(t)) / len(kids) if kids else None,
            device_hours=tuple(r.progress.hours for r in group)))
    return ComparisonTable(rows=tuple(rows), reference=ref, target=target, metric=runs[0].metric if runs else "val_bpb")


def render_table(table: ComparisonTable) -> str:
    """The comparison as a plain-text table (what `evo compare` prints).

    Args:
        table: from `compare_runs`.
    """
    if not table.rows:
        return "no searches to compare"
    target = (f"{table.target:.4f} (mean final best of {table.reference})" if table.target is not None
              else "none (the reference has no successful trial)")
    header = (f"{'strategy':12s} {'seeds':>5} {'trials':>6} {'final best (mean ± sd)':>24} "
              f"{'trials to target':>17} {'keep rate':>9} {'fail rate':>9} {'device-h':>9}")
    lines = [f"target: {table.metric} {target}", header, "-" * len(header)]
    for r in table.rows:
        best = "-" if r.mean is None else f"{r.mean:.4f} ± {r.sd:.4f}" if r.sd is not None else f"{r.mean:.4f}"
        reach = "-" if table.target is None else (
            f"{statistics.fmean(r.reached):.1f} ({len(r.reached)}/{len(r.to_target)})" if r.reached
            else f"never (0/{len(r.to_target)})")
        trials = f"{statistics.fmean(r.trials):.0f}" if r.trials else "-"
        keep = "-" if r.keep_rate is None else f"{100 * r.keep_rate:.0f}%"
        fail = "-" if r.failure_rate is None else f"{100 * r.failure_rate:.0f}%"
        hours = f"{statistics.fmean(r.device_hours):.3f}" if r.device_hours else "-"
        lines.append(f"{r.label[:12]:12s} {len(r.names):>5} {trials:>6} {best:>24} {reach:>17} {keep:>9} {fail:>9} "
                     f"{hours:>9}")
    lines.append("trials to target: mean over the seeds that reached it (reached/seeds); keep and fail rates: "
                 "share of children, pooled over seeds; device-h: mean per search")
    return "\n".join(lines)


# -- the figure ------------------------------------------------------------------------------

def _curve(p: Progress, *, hours: bool) -> tuple[list[float], list[float]]:
    """The best-so-far step curve of one search from its first result on."""
    xs, ys = [], []
    for point in p.points:
        if math.isfinite(point.best):
            xs.append(point.hours if hours else float(point.index))
            ys.append(point.best)
    return xs, ys


def _at(xs: list[float], ys: list[float], x: float) -> float:
    """The step curve's value at x (NaN before its first point or after its last)."""
    if not xs or x < xs[0] or x > xs[-1]:
        return math.nan
    lo, hi = 0, len(xs) - 1
    while lo < hi:  # last index with xs[i] <= x
        mid = (lo + hi + 1) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid - 1
    return ys[lo]


def band(runs: list[Run], *, hours: bool) -> tuple[list[float], list[float], list[float], list[float]]:
    """Mean, min and max of the best-so-far across runs on a shared x grid.

    The grid is every x at which some run's best changed, from the first x at which every
    run has a result to the last x every run reached: outside that range the mean would
    be over fewer seeds and jump for no reason but that.

    Args:
        runs: the searches of one group.
        hours: x is device-hours (True) or trials finished (False).

    Returns:
        (x, mean, low, high) lists of equal length; empty when a run has no result.
    """
    curves = [_curve(r.progress, hours=hours) for r in runs]
    if not curves or any(not xs for xs, _ in curves):
        curves = [c for c in curves if c[0]]  # a search with no result at all has no curve to average
        if not curves:
            return [], [], [], []
    start = max(xs[0] for xs, _ in curves)
    end = min(xs[-1] for xs, _ in curves)
    grid = sorted({x for xs, _ in curves for x in xs if start <= x <= end} | {start, end})
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    for x in grid:
        values = [_at(xs, ys, x) for xs, ys in curves]
        for seq, v in zip(out, (x, statistics.fmean(values), min(values), max(values))):
            seq.append(v)
    return out


def plot_comparison(runs: list[Run], path: str | Path | None = None, *, title: str = "",
                    table: ComparisonTable | None = None):
    """Best-so-far against trials (left) and against device-hours (right), one colour per group.

    Args:
        runs: the searches, labelled by group.
        path: where to save a PNG; None returns the figure without saving.
        title: the figure's title.
        table: the comparison table (its target is drawn as a dotted line when given).

    Returns:
        The matplotlib Figure.
    """
    from analysis import _style

    fig, (left, right) = _style.new_figure(13, 5.4, ncols=2, sharey=True)
    metric, direction = (runs[0].metric, runs[0].direction) if runs else ("val_bpb", MINIMIZE)
    fig.suptitle(title or f"best {metric} so far, by strategy", x=0.01, ha="left", fontsize=13)
    labels = list(dict.fromkeys(r.label for r in runs))
    lows, highs = [], []
    for i, label in enumerate(labels):
        group = [r for r in runs if r.label == label]
        colour = _style.strategy_colour(label, i)
        for ax, hours in ((left, False), (right, True)):
            x, mean, lo, hi = band(group, hours=hours)
            if not x:
                continue
            x, mean, lo, hi = x + [x[-1]], mean + [mean[-1]], lo + [lo[-1]], hi + [hi[-1]]
            n = len(group)
            ax.step(x, mean, where="post", color=colour, linewidth=2.2,
                    label=f"{label} (mean of {n} seed{'s' if n != 1 else ''})")
            if n > 1:
                ax.fill_between(x, lo, hi, step="post", color=colour, alpha=0.18, linewidth=0,
                                label=f"{label}: range across seeds")
            lows.extend(lo if direction == MINIMIZE else [hi[0]])   # the best end and the starting end
            highs.append(hi[0] if direction == MINIMIZE else max(hi))
    if table is not None and table.target is not None:
        for ax in (left, right):
            ax.axhline(table.target, color="#424242", linestyle=":", linewidth=1.2,
                       label=f"target: {table.reference}'s mean final best")
    if lows:
        low, high = min(lows), max(highs)
        pad = 0.06 * max(high - low, 1e-3)
        left.set_ylim(low - pad, high + pad)
    left.set_xlabel("trials finished (seed included)")
    right.set_xlabel("device-hours spent")
    left.set_ylabel(f"best {metric} so far ({'lower' if direction == MINIMIZE else 'higher'} is better)")
    left.set_title("at equal trials", loc="left", fontsize=11)
    right.set_title("at equal compute", loc="left", fontsize=11)
    from matplotlib.ticker import MaxNLocator
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (left, right):
        ax.grid(True, alpha=0.25)
        ax.set_xlim(left=0)
    handles, names = left.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(handles)), frameon=False, fontsize=9)
    return _style.finish(fig, path)
