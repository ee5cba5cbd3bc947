"""Which operators and proposers pay off: the share of children that beat their parent.

A child improves on its parent when its genome's mean val_bpb is strictly below its
parent genome's mean (for a crossover: below the better of its two parents). Means are
taken over every evaluation in the search, so a re-evaluated parent is judged by its best
estimate. Only fresh evaluations can improve: a duplicate of a known genome, a failure
or a pruned run counts as a child that did not. The gain is parent minus child, so a
positive gain is an improvement (lower val_bpb).

>>> for row in yield_by(search.trials(), key="operator"):      # doctest: +SKIP
...     print(row.group, row.rate, row.mean_gain)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterable

from analysis.progress import children, is_failure
from population.lineage import MINIMIZE, Lineage, gain
from population.store import TrialRecord


@dataclass(frozen=True)
class Yield:
    """How one group of children (an operator, a proposer) fared against their parents."""

    group: str
    children: int                 # every counted child in the group
    evaluated: int                # with a fresh val_bpb and a scored parent: the ones with a gain
    improved: int                 # beat their parent
    failed: int                   # crash, timeout, divergence, invalid proposal
    mean_gain: float | None       # mean (parent - child) over the evaluated children
    best_gain: float | None       # largest (parent - child)

    @property
    def rate(self) -> float | None:
        """Share of the group's children that improved on their parent."""
        return self.improved / self.children if self.children else None


def gains(trials: Iterable[TrialRecord], *, direction: str = MINIMIZE) -> dict[int, float]:
    """How much better each freshly evaluated child is than its parent (positive: it improved).

    Args:
        trials: the trials of one search.
        direction: whether the metric is minimised (gain = parent - child) or maximised.
    """
    trials = list(trials)
    lineage = Lineage(trials, direction=direction)
    out = {}
    for t in children(trials):
        if not t.finished_ok:
            continue
        parent, own = lineage.parent_score(t), lineage.score_of(t.number)
        if parent is not None and own is not None:
            out[t.number] = gain(parent, own, direction)
    return out


def yield_by(trials: Iterable[TrialRecord], *, key: str | Callable[[TrialRecord], str] = "operator",
             direction: str = MINIMIZE) -> list[Yield]:
    """Yield of children grouped by operator, proposer or any function of the trial.

    Args:
        trials: the trials of one search.
        key: "operator", "proposer", or a function from a trial to its group's name.

    Returns:
        One Yield per group, largest group first.
    """
    trials = list(trials)
    group_of = key if callable(key) else (lambda t: getattr(t, key) or "unknown")
    delta = gains(trials, direction=direction)
    groups: dict[str, list[TrialRecord]] = {}
    for t in children(trials):
        groups.setdefault(group_of(t), []).append(t)
    rows = []
    for name, kids in groups.items():
        values = [delta[t.number] for t in kids if t.number in delta]
        rows.append(Yield(group=name, children=len(kids), evaluated=len(values),
                          improved=sum(1 for v in values if v > 0), failed=sum(1 for t in kids if is_failure(t)),
                          mean_gain=statistics.fmean(values) if values else None,
                          best_gain=max(values) if values else None))
    return sorted(rows, key=lambda r: (-r.children, r.group))


def render_yields(rows: list[Yield], *, title: str = "group") -> str:
    """A plain-text table of yields.

    Args:
        rows: from `yield_by`.
        title: the header of the group column (e.g. "operator").
    """
    def f(v, digits=4):
        return "-" if v is None else f"{v:+.{digits}f}"
    lines = [f"{title:18s} {'children':>8} {'improved':>9} {'rate':>6} {'failed':>7} {'mean gain':>10} {'best gain':>10}"]
    for r in rows:
        rate = f"{100 * r.rate:.0f}%" if r.rate is not None else "-"
        lines.append(f"{r.group[:18]:18s} {r.children:>8} {r.improved:>9} {rate:>6} {r.failed:>7} {f(r.mean_gain):>10} "
                     f"{f(r.best_gain):>10}")
    return "\n".join(lines)
