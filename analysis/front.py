"""The Pareto front of a search with several objectives: every genome by its first two objectives,
the front as a staircase, and how the front moved as the search went on.

>>> plot_front(search.lineage(), search.objectives.names, "front.png")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from population.lineage import Lineage

# How many earlier fronts to draw (at evenly spaced points of the search), each fainter than the next.
EARLIER_FRONTS = 3


def fronts_over_time(lineage: Lineage, steps: int = EARLIER_FRONTS) -> list[tuple[int, list[tuple[float, ...]]]]:
    """The front as it stood after evenly spaced shares of the trials: (trials so far, front vectors)."""
    numbers = [t.number for t in lineage.trials]
    out = []
    for k in range(1, steps + 1):
        cut = numbers[max(0, len(numbers) * k // (steps + 1) - 1)] if numbers else -1
        earlier = Lineage([t for t in lineage.trials if t.number <= cut], direction=lineage.direction,
                          directions=lineage.directions)
        out.append((cut + 1, [i.objectives for i in earlier.front()]))
    return out


def plot_front(lineage: Lineage, names: list[str], path: str | Path | None = None, *, title: str = ""):
    """Every feasible genome by its first two objectives' means (grey; infeasible ones as crosses), the
    front in colour joined as a staircase, and earlier fronts fainter (its move over time).

    Returns:
        The matplotlib Figure.
    """
    from analysis import _style

    fig, ax = _style.new_figure(7.5, 5.4)
    fig.suptitle(title or f"Pareto front: {names[0]} against {names[1]}", x=0.01, ha="left", fontsize=13)
    feasible = [i for i in lineage.individuals if i.feasible]
    infeasible = [i for i in lineage.individuals if not i.feasible]
    ax.scatter([i.objectives[1] for i in feasible], [i.objectives[0] for i in feasible], s=18, color="#9e9e9e",
               label="genomes", zorder=2)
    if infeasible:
        ax.scatter([i.objectives[1] for i in infeasible], [i.objectives[0] for i in infeasible], s=18, marker="x",
                   color="#bdbdbd", label="infeasible (a constraint broken)", zorder=2)
    for n, (trials, front) in enumerate(fronts_over_time(lineage)):
        if front:
            ordered = sorted(front, key=lambda v: v[1])
            ax.step([v[1] for v in ordered], [v[0] for v in ordered], where="post", color="#1565c0",
                    alpha=0.15 + 0.15 * n, linewidth=1.2, label=f"front after {trials} trials")
    front = sorted(lineage.front(), key=lambda i: i.objectives[1])
    ax.step([i.objectives[1] for i in front], [i.objectives[0] for i in front], where="post", color="#c62828",
            linewidth=2, label=f"front now ({len(front)} genomes)", zorder=3)
    ax.scatter([i.objectives[1] for i in front], [i.objectives[0] for i in front], s=40, color="#c62828", zorder=4)
    for i in front:
        ax.annotate(f"#{i.trial}", (i.objectives[1], i.objectives[0]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    directions = lineage.directions
    ax.set_xlabel(f"{names[1]} ({'lower' if directions[1] == 'minimize' else 'higher'} is better)")
    ax.set_ylabel(f"{names[0]} ({'lower' if directions[0] == 'minimize' else 'higher'} is better)")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8, frameon=False)
    return _style.finish(fig, path)
