"""Progress of one search: the best genome known after every finished trial.

Trials are taken in the order their results became known (finish time, then number),
because that is the order the search itself saw them: with several devices a later
trial number can finish first. The x axis of every progress curve is the count of
finished trials (seed included), the unit of `evo run --trials`, or the device-hours
spent so far.

"Best so far" is the best genome's mean val_bpb over the evaluations finished so far,
exactly what the loop ranks by. With re-evaluation (`--reeval K`) a lucky genome can be
re-measured worse, so the curve may step *up*: that is the noise-aware answer, not a bug.

>>> p = progress(search.trials())              # doctest: +SKIP
>>> p.final_best, p.trials_to_reach(2.80)      # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from analysis.text import shorten
from population.lineage import CHILD_OPERATORS, MINIMIZE, Lineage, better, sign
from population.store import DUPLICATE, INTERRUPTED, INVALID, OK, TrialRecord, TrialStatus

# Finished without a val_bpb of their own, and not because the search chose to stop them
# (pruned) or because they copy a known genome (duplicate).
NOT_FAILURES = (OK, DUPLICATE, TrialStatus.PRUNED, INTERRUPTED, TrialStatus.RUNNING)


def is_failure(t: TrialRecord) -> bool:
    """Whether a trial failed: crash, timeout, divergence, no summary, or an invalid proposal.

    Args:
        t: the trial.
    """
    return t.state != "RUNNING" and t.status not in NOT_FAILURES


def device_seconds(t: TrialRecord) -> float:
    """Device time one trial used, in seconds.

    The runner's own wall clock (`wall_seconds`, recorded by the loop) when present; a
    duplicate or an invalid proposal never ran, so 0; otherwise the store's start/finish
    times (which also include the wait for the proposal).

    Args:
        t: the trial.
    """
    if "wall_seconds" in t.attrs:
        return max(0.0, float(t.attrs["wall_seconds"]))
    if t.status in (DUPLICATE, INVALID):
        return 0.0
    if t.started and t.finished:
        return max(0.0, (t.finished - t.started).total_seconds())
    return 0.0


@dataclass(frozen=True)
class Point:
    """One finished trial on a progress curve."""

    index: int              # 1-based position among finished trials: the x of the plots
    trial: TrialRecord
    hours: float            # device-hours spent up to and including this trial
    best: float             # best genome's mean score after this trial (±inf before any result)
    improved: bool          # this trial made a new genome the best (a "keep")


@dataclass
class Progress:
    """The best-so-far curve of one search and the events on it."""

    points: list[Point]
    direction: str = MINIMIZE

    def reached(self, best: float, target: float) -> bool:
        """Whether a best so far is at least as good as `target`."""
        return not better(target, best, self.direction)

    @property
    def improvements(self) -> list[Point]:
        """The points where a new genome became the best (the seed's first result included)."""
        return [p for p in self.points if p.improved]

    @property
    def failures(self) -> list[Point]:
        return [p for p in self.points if is_failure(p.trial)]

    @property
    def final_best(self) -> float | None:
        """The best genome's mean score at the end (None when no trial succeeded)."""
        if not self.points or not math.isfinite(self.points[-1].best):
            return None
        return self.points[-1].best

    @property
    def hours(self) -> float:
        """Device-hours spent by all finished trials."""
        return self.points[-1].hours if self.points else 0.0

    def trials_to_reach(self, target: float) -> int | None:
        """How many finished trials it took until the best so far was as good as `target` (None: never).

        Args:
            target: a score to reach, e.g. another strategy's final best.
        """
        return next((p.index for p in self.points if self.reached(p.best, target)), None)

    def hours_to_reach(self, target: float) -> float | None:
        """Device-hours spent until the best so far was as good as `target` (None: never).

        Args:
            target: a score to reach.
        """
        return next((p.hours for p in self.points if self.reached(p.best, target)), None)


def progress(trials: Iterable[TrialRecord], *, direction: str = MINIMIZE) -> Progress:
    """Replay a search's finished trials and compute the best genome after each one.

    A trial improves the best exactly when the lineage says it was kept (see
    `population.lineage`): the rule the loop itself applies when the result arrives.

    Args:
        trials: the trials of one search (any order; running and interrupted ones are skipped).
        direction: whether the search minimises its metric (val_bpb) or maximises it.
    """
    points: list[Point] = []
    seconds = 0.0
    for index, r in enumerate(Lineage(list(trials), direction=direction).history(), start=1):
        seconds += device_seconds(r.trial)
        points.append(Point(index=index, trial=r.trial, hours=seconds / 3600, best=r.best, improved=r.kept))
    return Progress(points, direction)


def children(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The counted trials a proposer made (mutations and crossovers: not the seed, not re-evaluations).

    Args:
        trials: the trials of one search.
    """
    return [t for t in trials if t.counts and t.operator in CHILD_OPERATORS]


def keep_rate(trials: Iterable[TrialRecord], *, direction: str = MINIMIZE) -> float | None:
    """Share of children that improved the best so far (None without children).

    Args:
        trials: the trials of one search.
    """
    trials = list(trials)
    kids = {t.number for t in children(trials)}
    if not kids:
        return None
    kept = sum(1 for p in progress(trials, direction=direction).points if p.improved and p.trial.number in kids)
    return kept / len(kids)


def failure_rate(trials: Iterable[TrialRecord]) -> float | None:
    """Share of children that failed (see `is_failure`; None without children).

    Args:
        trials: the trials of one search.
    """
    kids = children(trials)
    return sum(1 for t in kids if is_failure(t)) / len(kids) if kids else None


# -- the figure ------------------------------------------------------------------------------

def plot_progress(trials: Iterable[TrialRecord], path: str | Path | None = None, *, title: str = "",
                  noise_sd: float | None = None, max_labels: int = 14, label_chars: int = 46, metric: str = "val_bpb",
                  direction: str = MINIMIZE):
    """Draw the progress figure: every trial as a faint dot, the best-so-far step line, the
    improvements highlighted and labelled, failures marked on the x axis.

    Marker shape says the operator (seed, mutation, crossover, re-evaluation), colour says
    the proposer. Results far above the interesting range are drawn as triangles on the top
    edge so one diverged run cannot flatten the picture.

    Args:
        trials: the trials of one search.
        path: where to save a PNG; None returns the figure without saving.
        title: the figure's title (default: a generic one).
        noise_sd: the noise floor (standard deviation of re-evaluations); drawn as a band
            around the best-so-far line when given.
        max_labels: label at most this many improvements (the largest gains win).
        label_chars: truncate labels to this many characters.
        metric, direction: the score's name and whether it is minimised or maximised. A
            maximised metric is drawn with better values on top, as a minimised one.

    Returns:
        The matplotlib Figure.
    """
    from analysis import _style
    prog = _lower_is_better(progress(trials, direction=direction))
    fig, ax = _style.new_figure(11, 6)
    ax.set_title(title or f"{metric} over the search", loc="left")
    ax.set_xlabel("trials finished (in the order results arrived)")
    better_word = "lower" if direction == MINIMIZE else "higher"
    ax.set_ylabel(f"validation bits per byte (val_bpb, {better_word} is better)" if metric == "val_bpb"
                  else f"{metric} ({better_word} is better)")
    if direction != MINIMIZE:  # drawn in "lower is better" terms: flip the axis back, relabel the ticks
        from matplotlib.ticker import FuncFormatter
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{-v:g}"))
    if not prog.points:
        ax.text(0.5, 0.5, "no finished trials yet", transform=ax.transAxes, ha="center", va="center")
        return _style.finish(fig, path)

    valued = [p for p in prog.points if p.trial.value is not None and math.isfinite(p.trial.value)]
    best, ymax = _y_top(prog, valued)
    ax.set_ylim(best - 0.5 * (ymax - best), ymax)  # provisional: the labels set the bottom
    ax.set_xlim(0.3, len(prog.points) + max(0.7, 0.02 * len(prog.points)))

    proposers = _style.proposer_colours(p.trial.proposer for p in prog.points)
    _scatter_trials(ax, prog, valued, proposers, ymax)

    finite = [p for p in prog.points if math.isfinite(p.best)]
    xs = [p.index for p in finite] + [len(prog.points) + 0.5]
    ys = [p.best for p in finite] + [finite[-1].best] if finite else []
    if finite:
        ax.step(xs, ys, where="post", color=_style.BEST_LINE, linewidth=2.0, zorder=3, label="best so far")
        if noise_sd:
            ax.fill_between(xs, [y - noise_sd for y in ys], [y + noise_sd for y in ys], step="post",
                            color=_style.BEST_LINE, alpha=0.12, linewidth=0, zorder=1)

    wins = prog.improvements
    ax.scatter([p.index for p in wins], [p.trial.value for p in wins], s=70, marker="o", facecolors=_style.WIN_FACE,
               edgecolors=_style.BEST_LINE, linewidths=1.4, zorder=4)
    fails = prog.failures
    if fails:
        # On the x axis itself: a failure has no val_bpb to place it at.
        transform = ax.get_xaxis_transform()
        ax.scatter([p.index for p in fails], [0.0] * len(fails), marker="x", s=36, color=_style.FAIL, linewidths=1.5,
                   transform=transform, zorder=5, clip_on=False)

    handles = _style.legend_handles(prog.points, proposers, noise_sd=noise_sd, failures=len(fails), metric=metric,
                                    off_scale=sum(1 for p in valued if p.trial.value > ymax), wins=len(wins))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False,
              fontsize=9)
    ax.grid(True, alpha=0.25)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _label_improvements(ax, fig, prog, best=best, top=ymax, max_labels=max_labels, label_chars=label_chars)
    if direction != MINIMIZE:
        ax.invert_yaxis()
    return _style.finish(fig, path)


def _lower_is_better(prog: Progress) -> Progress:
    """The same progress with every score negated when the metric is maximised, so the figure's
    layout (the best at the bottom, labels in the free band below it) serves both directions."""
    if prog.direction == MINIMIZE:
        return prog
    s = sign(prog.direction)
    points = [replace(p, best=s * p.best,
                      trial=replace(p.trial, value=s * p.trial.value) if p.trial.value is not None else p.trial)
              for p in prog.points]
    return Progress(points, MINIMIZE)


def _scatter_trials(ax, prog: Progress, valued: list[Point], proposers: dict[str, str], ymax: float) -> None:
    """Every result as a faint marker: shape by operator, colour by proposer, hollow for duplicates."""
    from analysis import _style

    size = 26 if len(prog.points) < 150 else 14
    for op, marker in _style.OPERATOR_MARKERS.items():
        for prop, colour in proposers.items():
            pts = [p for p in valued if _style.operator_key(p.trial) == op and p.trial.proposer == prop]
            inside = [p for p in pts if p.trial.value <= ymax]
            above = [p for p in pts if p.trial.value > ymax]
            hollow = [p for p in inside if p.trial.status == DUPLICATE]
            solid = [p for p in inside if p.trial.status != DUPLICATE]
            ax.scatter([p.index for p in solid], [p.trial.value for p in solid], s=size, marker=marker, color=colour,
                       alpha=0.35, linewidths=0, zorder=2)
            ax.scatter([p.index for p in hollow], [p.trial.value for p in hollow], s=size, marker=marker,
                       facecolors="none", edgecolors=colour, alpha=0.5, linewidths=0.8, zorder=2)
            # Off-scale results sit on the top edge as up-triangles, so they stay countable.
            ax.scatter([p.index for p in above], [ymax] * len(above), s=size + 6, marker="^", color=colour,
                       alpha=0.45, linewidths=0, zorder=2, clip_on=False)


def _y_top(prog: Progress, valued: list[Point]) -> tuple[float, float]:
    """The lowest best and a top for the y axis that shows the bulk of the results.

    The best-so-far line is always in view (it can rise after a re-evaluation). Above it
    the axis reaches the 90th percentile of the results, but no further than three times
    the larger of the search's total gain and the median result's distance from the best,
    so a few diverged runs (val_bpb far above the seed) do not squash the improvements."""
    values = sorted(p.trial.value for p in valued)
    bests = [p.best for p in prog.points if math.isfinite(p.best)]
    if not values or not bests:
        return 0.0, 1.0
    low, line_top = min(bests), max(bests)
    median = values[len(values) // 2]
    q90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    scale = max(line_top - low, median - low, 1e-3)
    top = max(line_top, min(q90, low + 3 * scale))
    return low, top + 0.04 * max(top - low, 1e-3)


ROW_POINTS = 11.0  # height of one label row, in points (8 pt text plus leading)


def _label_improvements(ax, fig, prog: Progress, *, best: float, top: float, max_labels: int,
                        label_chars: int) -> None:
    """Label the improvements with their descriptions in rows below the best-so-far line.

    No result lies below the final best, so the band under it is free for text. The
    first improvement gets the lowest row and the last the highest: a label starts at its
    improvement's x and runs right, and every leader line drops from a point to a row
    below the rows of later (further right) improvements, so leaders never cross text.
    Sets the y limits to make room for the rows."""
    wins = prog.improvements
    gains, previous = {}, None
    for p in wins:
        gains[p.index] = (previous - p.trial.value) if previous is not None else math.inf
        previous = p.best
    fig.canvas.draw()  # settles the layout so the axes' height in points is known
    height_pt = ax.get_window_extent().height * 72 / fig.dpi
    fits = max(0, int(0.42 * height_pt / ROW_POINTS))
    chosen = sorted(sorted(wins, key=lambda p: -gains[p.index])[: min(max_labels, fits)], key=lambda p: p.index)
    span = top - best
    # Solve for the axis span S that leaves len(chosen) rows plus a gap under the best line.
    share = len(chosen) * ROW_POINTS / height_pt
    total = span / max(0.97 - share - 0.03, 0.3)
    row = ROW_POINTS / height_pt * total
    bottom = best - 0.04 * total - len(chosen) * row
    ax.set_ylim(bottom, top)
    x_right = ax.get_xlim()[1]
    x_per_pt = (x_right - ax.get_xlim()[0]) / (ax.get_window_extent().width * 72 / fig.dpi)
    renderer = fig.canvas.get_renderer()
    for rank, p in enumerate(chosen):
        y_text = bottom + (rank + 0.5) * row
        gain = gains[p.index]
        label = f"#{p.trial.number} {shorten(p.trial.description or p.trial.operator, label_chars)}" + (
            f"  (+{gain:.4g} better)" if math.isfinite(gain) else "")
        ann = ax.annotate(label, xy=(p.index, p.trial.value), xytext=(p.index + 2 * x_per_pt, y_text),
                          ha="left", va="center", fontsize=8, color="#222222", zorder=6,
                          arrowprops=dict(arrowstyle="-", color="#999999", linewidth=0.6, shrinkA=0, shrinkB=4,
                                          connectionstyle="angle,angleA=0,angleB=90,rad=0"))
        box = ann.get_window_extent(renderer)
        if box.x1 > ax.get_window_extent(renderer).x1:  # no room on the right: end the text at the point
            ann.set_horizontalalignment("right")
            ann.xyann = (p.index - 2 * x_per_pt, y_text)

