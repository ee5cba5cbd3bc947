"""Strategies side by side at equal compute: "does evolution beat greedy here?"

Each group (a strategy, or any label) holds one or more searches run on the same task,
proposer, budget and trial count with different seeds. For each group the table gives
the final best (mean ± sd over its searches, and a bootstrap 95% confidence interval of
the mean), the trials and device-hours each search needed to reach the reference group's
mean final best (the greedy strategy's by default), the keep rate and failure rate of
children (pooled over the group's searches) and the device-hours spent. Under the table,
each group is tested against the reference (a permutation test on final bests, stated in
words: `analysis.stats.verdict`), the noise is given (between seeds, and of single
evaluations where searches re-evaluated), and searches that differ in profile, budget,
data, harness or trial count are named in a warning above everything else: their numbers
do not compare. The figure draws best-so-far against trials and against device-hours, the
mean across seeds as a line and the range across seeds as a band.

>>> runs = load_runs({"greedy": ["cmp-greedy-s0", "cmp-greedy-s1"], "evolve": ["cmp-evolve-s0"]})  # doctest: +SKIP
>>> print(render_table(compare_runs(runs)))                                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from analysis.progress import Progress, children, is_failure, progress
from analysis.stats import Verdict, bootstrap_ci, verdict
from population.lineage import MINIMIZE, Lineage, pooled_sd
from population.objectives import hypervolume
from population.search import Search
from population.store import TrialRecord

# The fixed settings that must agree for final bests to compare (SearchConfig field -> what to call it).
COMPARABLE = {"profile": "profile", "budget": "budget (s per trial)", "data": "data", "harness_sha256": "harness"}


@dataclass
class Run:
    """One search in a comparison."""

    label: str                    # its group, e.g. the strategy
    name: str                     # the search's name
    trials: list[TrialRecord]
    config: dict = field(default_factory=dict)   # its fixed settings (SearchConfig fields)
    metric: str = "val_bpb"
    direction: str = MINIMIZE
    objectives: tuple[str, ...] = ()     # several objectives: their names (the first is `metric`)
    directions: tuple[str, ...] = ()     # and directions

    def __post_init__(self):
        self.progress: Progress = progress(self.trials, direction=self.direction)

    def front(self) -> list[tuple[float, ...]]:
        """The final Pareto front's mean objective vectors (several objectives only)."""
        lineage = Lineage(self.trials, direction=self.direction, directions=self.directions)
        return [i.objectives for i in lineage.front()] if lineage.multi else []


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
                cfg = search.config
                config = {key: getattr(cfg, key) for key in (*COMPARABLE, "direction")}
                spec = search.objectives
                runs.append(Run(label=label, name=name, trials=search.trials(), config=config, metric=cfg.metric,
                                direction=cfg.direction, objectives=tuple(spec.names) if spec.multi else (),
                                directions=spec.directions if spec.multi else ()))
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
    hours_to_target: tuple[float | None, ...] = ()   # device-hours to reach the target per search (None: never)

    @property
    def ci(self) -> tuple[float, float] | None:
        """Bootstrap 95% confidence interval of the mean final best across seeds (None: fewer than two)."""
        return bootstrap_ci(self.finals)

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
    verdicts: tuple[Verdict, ...] = ()    # every other group tested against the reference
    problems: tuple[str, ...] = ()        # why the searches may not compare (see `comparability`)
    noise_sd: float | None = None         # single-evaluation noise, pooled over every search's re-evaluations
    direction: str = MINIMIZE
    metric: str = "val_bpb"
    hypervolume: "Hypervolumes | None" = None   # searches with several objectives: their fronts compared


@dataclass(frozen=True)
class Hypervolumes:
    """Several objectives: each group's final fronts by hypervolume (larger is better) against one
    reference point shared by every search, with the same statistics as the final bests."""

    objectives: tuple[str, ...]
    reference_point: tuple[float, ...]
    rows: tuple[tuple[str, tuple[float, ...]], ...]   # (label, hypervolume of each search's final front)
    verdicts: tuple[Verdict, ...] = ()


def hypervolumes(runs: list[Run], *, reference: str) -> Hypervolumes | None:
    """The hypervolume of every search's final front (None unless every search has the same several objectives).

    The reference point is the worst value of each objective over every front, moved a tenth of that
    objective's range further out (so the extremes of a front still add volume): the same for all groups."""
    kinds = {(r.objectives, r.directions) for r in runs}
    if len(kinds) != 1 or not runs or len(runs[0].objectives) < 2:
        return None
    names, directions = runs[0].objectives, runs[0].directions
    fronts = {id(r): r.front() for r in runs}
    points = [p for f in fronts.values() for p in f]
    if not points:
        return None
    ref = []
    for k, d in enumerate(directions):
        column = [p[k] for p in points]
        span = (max(column) - min(column)) or abs(max(column)) or 1.0
        ref.append(max(column) + 0.1 * span if d == MINIMIZE else min(column) - 0.1 * span)
    labels = list(dict.fromkeys(r.label for r in runs))
    rows = tuple((label, tuple(hypervolume(fronts[id(r)], ref, directions) for r in runs if r.label == label))
                 for label in labels)
    ref_label = reference if reference in labels else labels[0]
    ref_values = dict(rows)[ref_label]
    verdicts = tuple(verdict(label, values, ref_label, ref_values, direction="maximize", unit="hypervolume")
                     for label, values in rows if label != ref_label)
    return Hypervolumes(objectives=names, reference_point=tuple(ref), rows=rows, verdicts=verdicts)


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
    rows = tuple(_row(label, by_label[label], target) for label in labels)
    directions = {r.direction for r in runs}
    direction = directions.pop() if len(directions) == 1 else MINIMIZE
    ref_row = next((r for r in rows if r.label == ref), None)
    verdicts = tuple(verdict(r.label, r.finals, ref, ref_row.finals, direction=direction)
                     for r in rows if ref_row is not None and r.label != ref)
    noise = pooled_sd(ind.values for r in runs for ind in Lineage(r.trials).individuals)
    return ComparisonTable(rows=rows, reference=ref, target=target, verdicts=verdicts,
                           problems=tuple(comparability(runs)), noise_sd=noise, direction=direction,
                           metric=runs[0].metric if runs else "val_bpb",
                           hypervolume=hypervolumes(runs, reference=ref) if ref is not None else None)


def _row(label: str, group: list[Run], target: float | None) -> GroupRow:
    kids = [t for r in group for t in children(r.trials)]
    kept = sum(1 for r in group for p in r.progress.points
               if p.improved and p.trial.operator in ("mutate", "crossover"))
    return GroupRow(
        label=label, names=tuple(r.name for r in group),
        finals=tuple(r.progress.final_best for r in group if r.progress.final_best is not None),
        to_target=tuple(r.progress.trials_to_reach(target) if target is not None else None for r in group),
        trials=tuple(len(r.progress.points) for r in group),
        keep_rate=kept / len(kids) if kids else None,
        failure_rate=sum(1 for t in kids if is_failure(t)) / len(kids) if kids else None,
        device_hours=tuple(r.progress.hours for r in group),
        hours_to_target=tuple(r.progress.hours_to_reach(target) if target is not None else None for r in group))


def comparability(runs: list[Run]) -> list[str]:
    """Why these searches' final bests may not compare: one line per fixed setting that differs
    between them (profile, budget, data, harness), and one when they ran different numbers of
    trials (not equal compute). A search that does not record a setting (an imported
    results.tsv has no harness) is left out of that setting's check.

    Args:
        runs: the searches of a comparison.
    """
    problems = []
    for key, what in COMPARABLE.items():
        values: dict[str, list[str]] = {}
        for r in runs:
            value = r.config.get(key)
            if value not in (None, ""):
                shown = value[:10] if key == "harness_sha256" else f"{value:g}" if isinstance(value, float) else str(value)
                values.setdefault(shown, []).append(r.name)
        if len(values) > 1:
            problems.append(f"{what} differs: " + "; ".join(f"{v} in {', '.join(names)}" for v, names in values.items()))
    counts: dict[int, list[str]] = {}
    for r in runs:
        counts.setdefault(len(r.progress.points), []).append(r.name)
    if len(counts) > 1:
        problems.append("trials differ (not equal compute): " + "; ".join(
            f"{n} in {', '.join(names)}" for n, names in sorted(counts.items())))
    return problems


def render_table(table: ComparisonTable) -> str:
    """The comparison as plain text (what `evo compare` prints): warnings, the table, the tests in words, the noise.

    Args:
        table: from `compare_runs`.
    """
    if not table.rows:
        return "no searches to compare"
    lines = [f"WARNING: these searches do not compare: {p}" for p in table.problems]
    target = (f"{table.target:.4f} (mean final best of {table.reference})" if table.target is not None
              else "none (the reference has no successful trial)")
    header = (f"{'strategy':12s} {'seeds':>5} {'trials':>6} {'final best (mean ± sd)':>24} {'95% CI of mean':>18} "
              f"{'trials to target':>17} {'device-h to target':>18} {'keep rate':>9} {'fail rate':>9} {'device-h':>9}")
    lines += [f"target: {table.metric} {target}", header, "-" * len(header)]
    lines += [_table_line(r, table) for r in table.rows]
    lines.append("trials/device-h to target: mean over the seeds that reached it (reached/seeds); 95% CI: bootstrap "
                 "over seeds; keep and fail rates: share of children, pooled over seeds; device-h: mean per search")
    lines.append("")
    lines += [v.sentence for v in table.verdicts]
    lines.append(_noise_line(table))
    if table.hypervolume is not None:
        lines += [""] + _hypervolume_lines(table.hypervolume)
    if table.problems:
        lines.append("(the warning above stands: differences may come from the settings, not the strategies)")
    return "\n".join(lines)


def _hypervolume_lines(hv: Hypervolumes) -> list[str]:
    """The fronts by hypervolume: one line per group (mean ± sd, bootstrap 95% CI), then the tests in words."""
    point = ", ".join(f"{n} {v:.6g}" for n, v in zip(hv.objectives, hv.reference_point))
    lines = [f"fronts by hypervolume over {', '.join(hv.objectives)} (larger is better; reference point {point}):"]
    for label, values in hv.rows:
        mean = statistics.fmean(values) if values else None
        sd = f" ± {statistics.stdev(values):.6g}" if len(values) > 1 else ""
        ci = bootstrap_ci(values)
        shown = "-" if mean is None else f"{mean:.6g}{sd}"
        lines.append(f"  {label[:12]:12s} {len(values):>2} seeds  {shown:>24}  95% CI "
                     + (f"[{ci[0]:.6g}, {ci[1]:.6g}]" if ci else "-"))
    return lines + [v.sentence for v in hv.verdicts]


def _table_line(r: GroupRow, table: ComparisonTable) -> str:
    best = "-" if r.mean is None else f"{r.mean:.4f} ± {r.sd:.4f}" if r.sd is not None else f"{r.mean:.4f}"
    ci = f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]" if r.ci else "-"

    def reach(values, digits: int) -> str:
        got = [v for v in values if v is not None]
        if table.target is None:
            return "-"
        return f"{statistics.fmean(got):.{digits}f} ({len(got)}/{len(values)})" if got else f"never (0/{len(values)})"
    trials = f"{statistics.fmean(r.trials):.0f}" if r.trials else "-"
    keep = "-" if r.keep_rate is None else f"{100 * r.keep_rate:.0f}%"
    fail = "-" if r.failure_rate is None else f"{100 * r.failure_rate:.0f}%"
    hours = f"{statistics.fmean(r.device_hours):.3f}" if r.device_hours else "-"
    return (f"{r.label[:12]:12s} {len(r.names):>5} {trials:>6} {best:>24} {ci:>18} {reach(r.to_target, 1):>17} "
            f"{reach(r.hours_to_target, 3):>18} {keep:>9} {fail:>9} {hours:>9}")


def _noise_line(table: ComparisonTable) -> str:
    between = pooled_sd(list(r.finals) for r in table.rows)
    text = (f"noise: final bests vary by σ = {between:.4f} between seeds of one strategy"
            if between is not None else "noise: one seed per strategy, so the spread between seeds is unknown")
    if table.noise_sd is not None:
        return text + f"; a single evaluation by {table.noise_sd:.4f} (re-evaluations pooled over every search)"
    return text + "; single-evaluation noise unknown (no search re-evaluated a genome: use --noise-runs K)"


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
