"""Several objectives and constraints: what a search optimises, and Pareto dominance over them.

A search optimises one metric (val_bpb, or a command target's `--metric`) unless it was
created with several `--objective NAME[:min|max]`: then each trial is told to Optuna as a
vector (a multi-objective study, `directions=[...]`, so optuna-dashboard draws its front) and
`population.lineage` orders genomes by Pareto dominance, a partial order, instead of by one
number. The first objective is the search's own metric: what a trial's `value` is, what
duplicates, promotion and the progress line show.

`--constraint 'NAME<=BOUND'` (or `>=`) makes a trial whose metric NAME lies beyond BOUND
infeasible: never a parent, never the best (Optuna's constraint convention: a value <= 0 is met).

This module is the arithmetic only (no store, no processes): parsing the specs, reading a
trial's metrics into objective and constraint values, dominance, NSGA-II's non-dominated
ranks and crowding distance, and the hypervolume `evo compare` uses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from population.errors import ConfigError

MINIMIZE, MAXIMIZE = "minimize", "maximize"
_DIRECTION_WORDS = {"min": MINIMIZE, "minimize": MINIMIZE, "max": MAXIMIZE, "maximize": MAXIMIZE}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=)\s*([-+0-9.eE]+|[-+]?inf)\s*$")

# The numbers a harness search may optimise or constrain: each measured outside the genome. val_bpb and
# params (every value of every tensor of the handed-over model, buffers included) and forward_ms (median
# wall time of one evaluation batch through the model processes) by the trusted scorer; peak_memory_mb
# (resident memory of the whole trial), cpu_seconds and training_seconds by the engine. Whatever a
# genome prints about itself (its summary lines) is kept as a metric, never an objective.
HARNESS_METRICS = ("val_bpb", "params", "forward_ms", "peak_memory_mb", "cpu_seconds", "training_seconds")


class ObjectiveError(ConfigError, ValueError):
    """An objective or constraint that cannot be used; the message names it and the fix."""


def _sign(direction: str) -> float:
    return 1.0 if direction == MINIMIZE else -1.0


@dataclass(frozen=True)
class Objective:
    """One number to optimise: a metric's name and whether lower or higher is better."""

    name: str
    direction: str = MINIMIZE

    @classmethod
    def parse(cls, text: str, default: str = MINIMIZE) -> "Objective":
        """`NAME`, `NAME:min` or `NAME:max` (also :minimize / :maximize)."""
        name, _, word = text.strip().partition(":")
        direction = _DIRECTION_WORDS.get(word.strip().lower()) if word else default
        if not _NAME.match(name) or direction is None:
            raise ObjectiveError(f"bad objective {text!r}: write NAME, NAME:min or NAME:max (e.g. params:min)")
        return cls(name, direction)

    def spelled(self) -> str:
        return f"{self.name}:{'min' if self.direction == MINIMIZE else 'max'}"

    def as_dict(self) -> dict:
        return {"name": self.name, "direction": self.direction}


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric: `metric <= bound` or `metric >= bound`."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        match = _CONSTRAINT.match(text)
        if not match:
            raise ObjectiveError(f"bad constraint {text!r}: write NAME<=NUMBER or NAME>=NUMBER "
                                 "(e.g. 'peak_memory_mb<=40000')")
        try:
            bound = float(match.group(3))
        except ValueError:
            raise ObjectiveError(f"bad constraint {text!r}: {match.group(3)!r} is not a number") from None
        return cls(match.group(1), match.group(2), bound)

    @property
    def key(self) -> str:
        """Its name among the trial's Optuna constraints."""
        return f"{self.metric}{self.op}{self.bound:g}"

    def violation(self, metrics: dict) -> float:
        """How far beyond the bound the metric lies (<= 0: met). A metric the trial did not report (or
        reported as NaN) cannot show the bound is met: it counts as violated by 1."""
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or math.isnan(value):
            return 1.0
        return float(value - self.bound if self.op == "<=" else self.bound - value)

    def as_dict(self) -> dict:
        return {"metric": self.metric, "op": self.op, "bound": self.bound}


@dataclass(frozen=True)
class ObjectiveSpec:
    """A search's objectives (the first is its metric) and constraints, as search.json records them."""

    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()

    @classmethod
    def of(cls, config) -> "ObjectiveSpec":
        """The spec of a SearchConfig (a search made before objectives existed: its metric alone)."""
        listed = tuple(Objective(o["name"], o["direction"]) for o in (getattr(config, "objectives", None) or []))
        return cls(listed or (Objective(config.metric, config.direction),),
                   tuple(Constraint(c["metric"], c["op"], float(c["bound"]))
                         for c in (getattr(config, "constraints", None) or [])))

    @property
    def multi(self) -> bool:
        """Whether trials are vectors (a multi-objective study) rather than one number."""
        return len(self.objectives) > 1

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(o.direction for o in self.objectives)

    def values(self, metrics: dict) -> list[float] | None:
        """The trial's objective vector from its metrics (None when one is missing or not finite)."""
        found = [metrics.get(name) for name in self.names]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in found):
            return None
        return [float(v) for v in found]

    def missing(self, metrics: dict) -> str:
        """Why `values` gave None: the objectives the run did not report as finite numbers."""
        gone = [n for n in self.names if not (isinstance(metrics.get(n), (int, float)) and math.isfinite(metrics[n]))]
        return f"the run reported no finite {', '.join(gone)} (objectives of this search)"

    def judge(self, value: float | None, metrics: dict) -> tuple[list[float] | None, dict[str, float], str]:
        """What a finished trial with score `value` (None: it has none) is told: its objective vector (None
        with one objective), its constraints' violations, and why a scored trial still has no vector ("" when
        it has one: the run left out another objective, so it cannot be placed on the front)."""
        if value is None:
            return None, {}, ""
        values = self.values(metrics) if self.multi else None
        return values, self.violations(metrics), self.missing(metrics) if self.multi and values is None else ""

    def violations(self, metrics: dict) -> dict[str, float]:
        """Each constraint's violation (<= 0: met), keyed as Optuna records them."""
        return {c.key: c.violation(metrics) for c in self.constraints}


def parse_objectives(texts: Iterable[str], *, metric: str | None, direction: str | None) -> list[Objective]:
    """`--objective` flags as given, checked against `--metric`/`--direction` (the first objective is the
    search's metric); an ObjectiveError naming the fix where they disagree or repeat."""
    objectives = [Objective.parse(t) for t in texts]
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ObjectiveError(f"objective {next(n for n in names if names.count(n) > 1)!r} is given twice; give each once")
    if objectives and metric and objectives[0].name != metric:
        raise ObjectiveError(f"the first `objective` is the search's metric ({metric}), not {objectives[0].name}: "
                             f"put `objective` {metric} first")
    if objectives and direction and objectives[0].direction != direction:
        raise ObjectiveError(f"`direction` {direction} disagrees with `objective` {objectives[0].spelled()}; "
                             "give the direction once, in the objective")
    return objectives


def check_trusted(objectives: Sequence[Objective], constraints: Sequence[Constraint]) -> None:
    """For a harness search: refuse any objective or constraint the genome could report about itself."""
    for name in [o.name for o in objectives] + [c.metric for c in constraints]:
        if name not in HARNESS_METRICS:
            raise ObjectiveError(f"{name!r} is not measured outside the genome, so a harness search cannot optimise or "
                                 f"constrain it (a number a genome prints about itself can be faked); use one of "
                                 f"{', '.join(HARNESS_METRICS)}")


# -- Pareto arithmetic ---------------------------------------------------------------------------------


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str],
              margins: Sequence[float] | None = None) -> bool:
    """Whether vector `a` Pareto-dominates `b`: no worse in any objective and better in at least one by
    more than that objective's margin (default 0: strictly better)."""
    margins = margins or [0.0] * len(directions)
    strictly = False
    for x, y, d, m in zip(a, b, directions, margins):
        gain = _sign(d) * (y - x)
        if gain < 0:
            return False
        strictly = strictly or gain > m
    return strictly


def nondominated_ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """NSGA-II's non-dominated sorting: rank 0 for the Pareto front, 1 for the front of the rest, ...
    O(n^2) comparisons, which a population of hundreds of genomes affords."""
    n = len(points)
    beaten_by = [0] * n
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j], directions):
                beats[i].append(j)
                beaten_by[j] += 1
            elif dominates(points[j], points[i], directions):
                beats[j].append(i)
                beaten_by[i] += 1
    ranks, current, rank = [0] * n, [i for i in range(n) if beaten_by[i] == 0], 0
    while current:
        following = []
        for i in current:
            ranks[i] = rank
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    following.append(j)
        current, rank = following, rank + 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within its front: the sum over objectives of the
    normalised gap between its two neighbours; the extremes get infinity, so they are always kept."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(order, order[1:], order[2:]):
            distance[here] += (points[after][k] - points[before][k]) / (high - low)
    return distance


def nsga_order(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[tuple[int, float]]:
    """(non-dominated rank, crowding distance within that rank) of each point."""
    ranks = nondominated_ranks(points, directions)
    crowding = [0.0] * len(points)
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for i, d in zip(members, crowding_distances([points[i] for i in members])):
            crowding[i] = d
    return list(zip(ranks, crowding))


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float], directions: Sequence[str]) -> float:
    """The volume of objective space the points dominate up to `reference` (a point worse than all of
    them in every objective): the larger, the better the front. Exact, by slicing along one objective."""
    signs = [_sign(d) for d in directions]
    ref = [s * r for s, r in zip(signs, reference)]
    flipped = [[s * x for s, x in zip(signs, p)] for p in points]
    return _volume([p for p in flipped if all(x < r for x, r in zip(p, ref))], ref)


def _volume(points: list[list[float]], ref: list[float]) -> float:
    """Hypervolume of minimisation points, all better than `ref` in every objective."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    points = sorted(points, key=lambda p: p[0])
    total = 0.0
    for i, p in enumerate(points):
        upper = points[i + 1][0] if i + 1 < len(points) else ref[0]
        if upper > p[0]:
            total += (upper - p[0]) * _volume([q[1:] for q in points[: i + 1]], ref[1:])
    return total
