"""Genomes, scores, ancestry and the search's history, derived from the trial records.

A genome (identified by its content hash, the git tree) may be evaluated several times:
its first trial, then re-evaluations on new seeds. Selection ranks genomes by the mean
of their evaluations; ancestry follows the trials' parent numbers (two for crossover).

This module holds the one definition of the words the whole project uses:

- **better**: lower for a minimised metric (val_bpb), higher for a maximised one; nothing
  else in the code compares two scores;
- **best**: the incumbent: the feasible genome that last displaced the best. A genome
  displaces the best when its mean score is better by more than the *min gain* (ties at a
  min gain of 0 go to the earlier trial, so without one the best is simply the feasible
  genome with the better mean);
- **min gain**: how much better a result must be before it counts as better (`evo run
  --min-gain`). The loop records the number it used on every trial as it finishes
  (`MIN_GAIN_ATTR`; 0 for searches made before it existed), so a replay decides exactly as the
  loop did even when `--min-gain auto` moved with the measured noise;
- **parent score**: the score of a child's parent, the better parent's for a crossover;
- **kept**: a fresh, feasible result (not a re-evaluation) better by more than its min gain
  than the best genome known when it finished, which makes it the new best.
  `Lineage.history()` replays the search in the order results arrived and marks every kept
  trial; the loop asks the same question (`would_keep`) the moment a result comes in, so
  `evo status`, the report and the LLM's memory agree;
- **noise floor**: the pooled standard deviation of genomes evaluated more than once
  (`Lineage.noise_sd`); `--min-gain auto` is `NOISE_MULTIPLE` times it.

With several objectives (`population.objectives`) "better" is a partial order, Pareto dominance
of the genomes' mean objective vectors: a genome displaces the best (and a result is kept) when it
*dominates* it, no worse in any objective and better in one (in the first, the search's metric, by
more than the min gain); the **front** is the feasible genomes no other dominates; `ranked` orders
genomes by NSGA-II's non-dominated rank, then crowding distance (the lonelier first: diversity
along the front), then age.

Everything here is computed from the store's records, so it survives any restart.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from population.errors import OptionError
from population.objectives import dominates, nsga_order
from population.store import TrialRecord

# Operators that make a new genome from parents (the seed and re-evaluations do not).
CHILD_OPERATORS = ("mutate", "crossover")
# Operators that score a known genome again: on a new seed (reeval), or at a larger scale
# (promote, see evo.promotion). Neither makes a new best at the search's own scale.
RESCORE_OPERATORS = ("reeval", "promote")
MINIMIZE, MAXIMIZE = "minimize", "maximize"
DIRECTIONS = (MINIMIZE, MAXIMIZE)
# The trial attribute holding the min gain the loop applied when the trial finished.
MIN_GAIN_ATTR = "min_gain"
# The trial attribute holding an adaptive mix's weights when the trial was proposed (member name -> its
# chance to be drawn; see evo.proposers._adaptive).
MIX_WEIGHTS_ATTR = "mix_weights"
# `--min-gain auto` = NOISE_MULTIPLE x the noise floor. A new result is one evaluation and the
# best's mean has n of them, so their difference has sd sigma * sqrt(1 + 1/n): at 2 sigma a child
# with no real gain passes by luck 8% of the time against a best measured once and 4% against
# one measured three times (--reeval 2), while a real gain of 3 sigma passes 76-81% of the time.
# One sigma lets a quarter of the lucky draws through; three lets half the 3-sigma gains go.
NOISE_MULTIPLE = 2.0


def sign(direction: str) -> float:
    """+1 when lower is better, -1 when higher is: `sign * score` sorts the best first."""
    if direction not in DIRECTIONS:
        raise OptionError(f"direction must be minimize or maximize, not {direction!r}")
    return 1.0 if direction == MINIMIZE else -1.0


def better(a: float, b: float, direction: str = MINIMIZE) -> bool:
    """Whether score `a` is strictly better than score `b`."""
    return sign(direction) * a < sign(direction) * b


def best_of(values, direction: str = MINIMIZE) -> float:
    """The best of some scores."""
    return min(values) if direction == MINIMIZE else max(values)


def gain(old: float, new: float, direction: str = MINIMIZE) -> float:
    """How much better `new` is than `old` (positive: an improvement), whatever the direction."""
    return sign(direction) * (old - new)


def is_improvement(value: float | None, best: float | None, *, operator: str, feasible: bool,
                   direction: str = MINIMIZE, min_gain: float = 0.0) -> bool:
    """Whether a result makes a new best: fresh, feasible, finite, better than `best` (None: no best yet)
    by more than `min_gain` (0: strictly better)."""
    if value is None or not math.isfinite(value) or not feasible or operator in RESCORE_OPERATORS:
        return False
    return best is None or gain(best, value, direction) > min_gain


def min_gain_of(t: TrialRecord) -> float:
    """The min gain the loop applied to a trial (0 for a search that had none)."""
    value = t.attrs.get(MIN_GAIN_ATTR)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else 0.0


def pooled_sd(groups: Iterable[list[float]]) -> float | None:
    """The pooled within-group standard deviation, sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1)),
    over the groups with two values or more (None when there is none): every re-evaluated
    genome counts in proportion to its extra evaluations."""
    groups = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof)


def auto_min_gain(sd: float | None) -> float:
    """`--min-gain auto` for a noise floor `sd`: NOISE_MULTIPLE x sd (0 while the floor is unknown)."""
    return NOISE_MULTIPLE * sd if sd else 0.0


@dataclass
class Individual:
    """One distinct genome with at least one successful evaluation."""

    trial: int                       # the trial that first evaluated it
    tree: str
    commit: str
    parents: list[int]
    operator: str
    description: str
    island: int = 0
    values: list[float] = field(default_factory=list)   # every ok evaluation, first one first
    evaluations: list[int] = field(default_factory=list)  # their trial numbers
    feasible: bool = True
    rungs: dict[int, list[float]] = field(default_factory=dict)  # ok scores at promoted scales (rung >= 1)
    vectors: list[tuple[float, ...]] = field(default_factory=list)  # several objectives: each evaluation's vector
    # (highest rung, mean there): worked out once, when a finished lineage first ranks this genome. A
    # lineage never changes an individual once built (it copies one to add an evaluation, and the copy
    # starts without it), and ranking a 10,000-genome search once per planned child is on the path
    # between two trials.
    _standing: tuple[int, float | None] | None = field(default=None, init=False, repr=False, compare=False)

    def standing(self) -> tuple[int, float | None]:
        """(the highest rung where it has a score, its mean score there)."""
        if self._standing is None:
            rung = self.rung
            self._standing = (rung, self.score_at(rung))
        return self._standing

    @property
    def objectives(self) -> tuple[float, ...]:
        """The mean objective vector (several objectives); the mean score alone otherwise."""
        if not self.vectors:
            return (self.score,)
        return tuple(statistics.fmean(column) for column in zip(*self.vectors))

    @property
    def score(self) -> float:
        """The mean score at the search's own scale (rung 0)."""
        # fsum / n is what statistics.fmean computes, without its overhead: rankings call this for every
        # genome of a search each time a child is planned.
        return math.fsum(self.values) / len(self.values)

    @property
    def rung(self) -> int:
        """The highest rung where this genome has a score (0: never promoted, or failed when it was)."""
        return max(self.rungs) if self.rungs else 0

    def score_at(self, rung: int) -> float | None:
        """The mean score at a rung (None where it has none)."""
        if rung == 0:
            return self.score if self.values else None
        values = self.rungs.get(rung)
        return math.fsum(values) / len(values) if values else None

    @property
    def spread(self) -> float | None:
        """Sample standard deviation across evaluations (None with a single one)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Result:
    """One counted trial in the order results arrived, with the best genome's score after it."""

    trial: TrialRecord
    best: float            # best genome's mean score after this trial (±inf before any result)
    kept: bool             # this trial made a new genome the best
    gain: float | None = None   # for a kept trial: how much better than the best before it (None: the first)


def genome_key(t: TrialRecord) -> str:
    """What identifies a trial's genome: its git tree (a record without one stands alone)."""
    return t.tree or f"trial:{t.number}"


def finish_order(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The counted trials (finished, not interrupted) in the order their results became known."""
    return sorted((t for t in trials if t.counts), key=_arrival)


def _arrival(t: TrialRecord) -> tuple[float, int]:
    return (t.finished.timestamp() if t.finished else math.inf, t.number)


def _changes(previous: "Lineage", new: "Lineage") -> list[TrialRecord] | None:
    """The trials of `new` that `previous` did not hold as they are, when every other one is the very
    record `previous` held and each changed one was new or running there (None: build afresh)."""
    if len(new.trials) < len(previous.trials):
        return None
    changed = []
    for t in new.trials:
        old = previous.by_number.get(t.number)
        if old is t:
            continue
        if old is not None and old.state != "RUNNING":
            return None  # a finished record that differs (another read of the store): no telling what changed
        changed.append(t)
    if any(n not in new.by_number for n in previous.by_number):
        return None
    return changed


def strategy_of(trials: Iterable[TrialRecord]) -> str:
    """The strategy a search ran with, from its trials' records ("unknown" without one)."""
    names = [t.attrs.get("strategy") for t in trials if t.attrs.get("strategy")]
    return max(set(names), key=names.count) if names else "unknown"


class _Replay:
    """The search's best, decided one result at a time in the order results arrived.

    Keeps every genome's evaluations and a heap of genomes by mean, so each step costs
    O(log genomes). `Lineage` runs it over the whole history; `would_keep` runs one more
    step on a copy, so the loop and every replay apply the same rule."""

    def __init__(self, direction: str):
        self.direction, self.sign = direction, sign(direction)
        self.values: dict[str, list[float]] = {}
        self.first: dict[str, int] = {}
        self.infeasible: set[str] = set()
        self.heap: list[tuple[float, int, str, int]] = []
        self.incumbent: str | None = None

    def copy(self) -> "_Replay":
        """An independent copy, cheaply (steps never change a list in place)."""
        twin = copy.copy(self)
        twin.values, twin.first, twin.infeasible, twin.heap = (dict(self.values), dict(self.first),
                                                                set(self.infeasible), list(self.heap))
        return twin

    def score(self, key: str) -> float:
        return statistics.fmean(self.values[key])

    @property
    def best(self) -> float | None:
        return self.score(self.incumbent) if self.incumbent is not None else None

    def _top(self) -> str | None:
        """The feasible genome with the better mean (ties: the earlier trial)."""
        while self.heap:
            _, _, key, count = self.heap[0]
            if key not in self.infeasible and count == len(self.values[key]):
                return key
            heapq.heappop(self.heap)  # stale: the genome has been evaluated again since
        return None

    def step(self, key: str, number: int, value: float, *, operator: str, feasible: bool, min_gain: float) -> bool:
        """Take one ok result; return whether it was kept (made its genome the new best)."""
        before, before_key = self.best, self.incumbent
        self.values[key] = self.values.get(key, []) + [value]  # a new list: copies share the old ones
        self.first.setdefault(key, number)
        if not feasible:
            self.infeasible.add(key)
        heapq.heappush(self.heap, (self.sign * self.score(key), self.first[key], key, len(self.values[key])))
        top = self._top()
        if top is None or self.incumbent is None or self.incumbent in self.infeasible:
            self.incumbent = top
        elif top != self.incumbent and ((self.sign * self.score(top) + min_gain, self.first[top])
                                        < (self.sign * self.score(self.incumbent), self.first[self.incumbent])):
            self.incumbent = top
        return (self.incumbent == key != before_key and
                is_improvement(self.score(key), before, operator=operator, feasible=feasible,
                               direction=self.direction, min_gain=min_gain))


class _ParetoReplay(_Replay):
    """The best under several objectives: the incumbent is displaced by a genome whose mean vector
    dominates its own (in the first objective by more than the min gain), so the best never moves to a
    genome that is worse in anything. Each step compares with the incumbent alone: O(objectives)."""

    def __init__(self, directions: tuple[str, ...]):
        super().__init__(directions[0])
        self.directions = directions
        self.vectors: dict[str, list[tuple[float, ...]]] = {}

    def copy(self) -> "_ParetoReplay":
        twin = super().copy()
        twin.vectors = dict(self.vectors)
        return twin

    def mean(self, key: str) -> tuple[float, ...]:
        return tuple(statistics.fmean(column) for column in zip(*self.vectors[key]))

    def step(self, key: str, number: int, value: float, *, operator: str, feasible: bool, min_gain: float,
             vector: tuple[float, ...] | None = None) -> bool:
        before_key = self.incumbent
        self.values[key] = self.values.get(key, []) + [value]
        self.vectors[key] = self.vectors.get(key, []) + [tuple(vector) if vector else (value,)]
        self.first.setdefault(key, number)
        if not feasible:
            self.infeasible.add(key)
        if self.incumbent is not None and self.incumbent in self.infeasible:
            self.incumbent = self._earliest_undominated()
        if key in self.infeasible or operator in RESCORE_OPERATORS:
            return False
        margins = [min_gain] + [0.0] * (len(self.directions) - 1)
        if self.incumbent is None or (key != self.incumbent and
                                      dominates(self.mean(key), self.mean(self.incumbent), self.directions, margins)):
            self.incumbent = key
        return self.incumbent == key != before_key and math.isfinite(value)

    def _earliest_undominated(self) -> str | None:
        """The incumbent after the last one turned out infeasible: the earliest feasible genome on the front."""
        feasible = [k for k in self.vectors if k not in self.infeasible]
        means = {k: self.mean(k) for k in feasible}
        front = [k for k in feasible if not any(dominates(means[o], means[k], self.directions) for o in feasible)]
        return min(front, key=lambda k: self.first[k], default=None)


class Lineage:
    """Derived view over a search's trials: individuals, ranking, ancestry, history.

    direction: whether the search's metric is minimised (val_bpb) or maximised.
    """

    def __init__(self, trials: list[TrialRecord], *, direction: str = MINIMIZE, previous: "Lineage | None" = None,
                 directions: tuple[str, ...] = ()):
        """Args:
            trials: the search's trials (any order).
            direction: whether the metric is minimised or maximised.
            directions: several objectives' directions (the first is `direction`'s): genomes are then
                compared by Pareto dominance of their objective vectors (`TrialRecord.values`).
            previous: an earlier lineage of the same search. Where the new trials only add to it
                (new trials, and running ones that finished since, in the order they finished),
                the new one is built on it in time proportional to what changed, not to the
                history; otherwise, and without it, from scratch. Either way the same lineage.
        """
        self.direction = direction
        self.directions = tuple(directions) if len(directions) > 1 else (direction,)
        self._sign = sign(direction)
        self.trials = sorted(trials, key=lambda t: t.number)
        self.by_number = {t.number: t for t in self.trials}
        same = previous is not None and (previous.direction, previous.directions) == (direction, self.directions)
        changed = _changes(previous, self) if same else None
        if changed is None or not self._extend(previous, changed):
            self._build()

    def _build(self) -> None:
        by_key: dict[str, Individual] = {}
        self._home: dict[int, Individual] = {}
        for t in self.trials:
            if t.finished_ok:
                self._add(t, by_key)
        self.individuals = sorted(by_key.values(), key=lambda i: i.trial)
        self._by_key = by_key

    def _add(self, t: TrialRecord, by_key: dict[str, Individual]) -> None:
        """Count one successful trial (trials are added in number order)."""
        ind = by_key.get(genome_key(t))
        if t.operator == "promote":  # a score at a larger scale: ranked apart (see `rank_key`)
            # An infeasible result at a larger scale (say, over --max-vram-gb) gives the genome no
            # score at that rung; it leaves the genome's own scale, and so the replay's best, alone.
            if ind is not None and t.feasible:
                ind.rungs.setdefault(int(t.attrs.get("rung", 1)), []).append(t.value)
            return
        if ind is None:
            ind = by_key[genome_key(t)] = Individual(trial=t.number, tree=t.tree, commit=t.commit, parents=t.parents,
                                                     operator=t.operator, description=t.description,
                                                     island=int(t.attrs.get("island", 0)))
        ind.values.append(t.value)
        if self.multi:
            ind.vectors.append(tuple(t.values) if t.values else (t.value,))
        ind.evaluations.append(t.number)
        ind.feasible = ind.feasible and t.feasible
        self._home[t.number] = ind

    def _extend(self, previous: "Lineage", changed: list[TrialRecord]) -> bool:
        """Build on `previous` by adding the `changed` trials (False, having changed nothing of
        `previous`, where that would not give what a build from scratch gives)."""
        fresh = [t for t in changed if t.finished_ok]
        by_key = dict(previous._by_key)
        for t in fresh:
            ind = by_key.get(genome_key(t))
            if ind is not None and (ind.trial > t.number or (ind.evaluations and ind.evaluations[-1] > t.number)):
                return False  # it would not come last among its genome's evaluations: rebuild in number order
        self._home = dict(previous._home)
        copied: set[str] = set()
        for t in fresh:
            key = genome_key(t)
            if key in by_key and key not in copied:  # never change an individual `previous` holds
                old = by_key[key]
                by_key[key] = dataclasses.replace(old, values=list(old.values), evaluations=list(old.evaluations),
                                                  rungs={r: list(v) for r, v in old.rungs.items()},
                                                  vectors=list(old.vectors))
                self._home.update((n, by_key[key]) for n in old.evaluations)
            copied.add(key)
            self._add(t, by_key)
        self.individuals = sorted(by_key.values(), key=lambda i: i.trial)
        self._by_key = by_key
        replayed = previous.__dict__.get("_replayed")
        continued = self._replay_on(replayed, changed) if replayed is not None else None
        if continued is not None:
            self.__dict__["_replayed"] = continued
        return True

    # -- ranking ----------------------------------------------------------------

    @property
    def multi(self) -> bool:
        """Whether the search has several objectives (a partial order: see the module docstring)."""
        return len(self.directions) > 1

    @cached_property
    def _nsga(self) -> dict[str, tuple[int, float]]:
        """NSGA-II's (non-dominated rank, crowding distance) of each feasible genome at its own scale."""
        feasible = [i for i in self.individuals if i.feasible]
        order = nsga_order([i.objectives for i in feasible], self.directions)
        return {i.tree or f"trial:{i.trial}": o for i, o in zip(feasible, order)}

    def pareto(self, ind: Individual) -> tuple[int, float]:
        """(non-dominated rank, crowding distance) of an individual: (0, ...) on the front; an infeasible
        one is ranked after every feasible one."""
        return self._nsga.get(ind.tree or f"trial:{ind.trial}", (len(self.individuals), 0.0))

    def front(self) -> list[Individual]:
        """The Pareto front: the feasible genomes no other dominates, in the order of their first objective
        (a single-objective search: the best alone)."""
        if not self.multi:
            return [self.best] if self.best else []
        members = [i for i in self.individuals if i.feasible and self.pareto(i)[0] == 0]
        return sorted(members, key=lambda i: (self._sign * i.score, i.trial))

    def ranked(self, *, feasible_only: bool = True) -> list[Individual]:
        """Feasible individuals from the best down: the best first, the rest by mean score (ties:
        the earlier trial). With `feasible_only=False`, every individual by mean score alone."""
        if not feasible_only and self.multi:
            return sorted(self.individuals, key=lambda i: (not i.feasible, self.pareto(i), self._sign * i.score, i.trial))
        if not feasible_only:
            return sorted(self.individuals, key=lambda i: (self._sign * i.score, i.trial))
        return sorted((i for i in self.individuals if i.feasible), key=self.rank_key)

    def rank_key(self, ind: Individual) -> tuple:
        """Sort key putting the better individual first: the best, then the genomes scored at the
        highest rung (promotion), each rung by mean there (ties: the earlier trial).

        Without a min gain the best already has the better mean; with one, a genome whose mean
        is better only by less than the min gain ranks second: it did not count as better. With several
        objectives, genomes at the same rung rank by non-dominated rank, then the larger crowding distance."""
        if self.multi:
            rank, crowding = self.pareto(ind)
            rung, score = ind.standing()
            return (ind is not self.best, -rung, rank, -crowding, self._sign * score, ind.trial)
        rung, score = ind.standing()
        return (ind is not self.best, -rung, self._sign * score, ind.trial)

    @cached_property
    def best(self) -> Individual | None:
        """The best genome (see the module docstring); None before any feasible result. In a search
        that promotes genomes to larger scales, the best at the highest rung any genome reached."""
        top = max((i.rung for i in self.individuals if i.feasible), default=0)
        if top > 0:
            return min((i for i in self.individuals if i.feasible and i.rung == top),
                       key=lambda i: (self._sign * i.score_at(top), i.trial))
        key = self._replay.incumbent
        return self._by_key[key] if key is not None else None

    def evaluations(self, ind: Individual) -> tuple[int, int]:
        """(counted, running) trials evaluating genome `ind` at its own scale: its first trial and its
        re-evaluations, failed ones included (a genome that crashes is not retried for ever)."""
        mine = [t for t in self._trials_of(ind.tree) if t.number == ind.trial or t.operator == "reeval"]
        return sum(1 for t in mine if t.counts), sum(1 for t in mine if t.state == "RUNNING")

    def promoted(self, tree: str, rung) -> bool:
        """Whether genome `tree` has a trial at promotion rung `rung`, finished (even failed) or running."""
        return any(t.operator == "promote" and t.attrs.get("rung") == rung and (t.counts or t.state == "RUNNING")
                   for t in self._trials_of(tree))

    def _trials_of(self, tree: str) -> list[TrialRecord]:
        """Every trial of genome `tree`, whatever its state."""
        return self._by_tree.get(tree, [])

    @cached_property
    def _by_tree(self) -> dict[str, list[TrialRecord]]:
        found: dict[str, list[TrialRecord]] = {}
        for t in self.trials:
            found.setdefault(t.tree, []).append(t)
        return found

    def noise_sd(self) -> float | None:
        """The noise floor: pooled standard deviation of the genomes evaluated more than once (None: none was)."""
        return pooled_sd(ind.values for ind in self.individuals)

    @property
    def seed(self) -> TrialRecord | None:
        """The seed genome's trial: the one that finished successfully (a seed trial interrupted and
        re-run, or replaced by `evo reseed`, leaves several), else the latest attempt."""
        seeds = [t for t in self.trials if t.operator == "seed"]
        return next((t for t in seeds if t.finished_ok), seeds[-1] if seeds else None)

    def individual(self, number: int) -> Individual | None:
        """The individual a trial evaluated (its own genome, re-evaluations included)."""
        t = self.by_number.get(number)
        if t is None:
            return None
        own = self._home.get(number)
        if own is None and t.tree:  # a duplicate or a failed trial of a genome evaluated elsewhere
            own = self._by_key.get(t.tree)
        return own

    def score_of(self, number: int) -> float | None:
        ind = self.individual(number)
        return ind.score if ind else None

    def parent_score(self, t: TrialRecord) -> float | None:
        """The score a child is judged against: its parent's, the better parent's for a crossover."""
        scores = [s for s in (self.score_of(p) for p in t.parents) if s is not None]
        return best_of(scores, self.direction) if scores else None

    def would_keep(self, value: float | None, *, operator: str, feasible: bool, min_gain: float = 0.0,
                   key: str | None = None, values: list[float] | None = None) -> bool:
        """Whether a result arriving now would make a new best (see the module docstring).

        Args:
            value: the result's score.
            operator: its trial's operator (a re-evaluation is never kept).
            feasible: whether it met the search's constraints.
            min_gain: the gain it must beat the best by (record it on the trial: see MIN_GAIN_ATTR).
            key: its genome (`genome_key`), when it may have been evaluated before; default: a new one.
            values: its objective vector, in a search with several objectives.
        """
        if value is None or not math.isfinite(value) or operator in RESCORE_OPERATORS:
            return False
        replay = self._replay.copy()
        return replay.step(key or "\0new", math.inf, value, operator=operator, feasible=feasible, min_gain=min_gain,
                           **({"vector": values} if self.multi else {}))

    # -- history ----------------------------------------------------------------

    def history(self) -> list[Result]:
        """Replay the counted trials in the order their results arrived; mark each one that was kept.

        Each Result's `best` is the best genome's mean after it (inf, or -inf when maximising,
        before any result)."""
        return list(self._history)

    @property
    def _history(self) -> tuple[Result, ...]:
        return self._replayed[1]

    @property
    def _replay(self) -> _Replay:
        return self._replayed[0]

    @cached_property
    def _replayed(self) -> tuple[_Replay, tuple[Result, ...]]:
        """Run the replay once: its final state and every step it went through."""
        replay, out = (_ParetoReplay(self.directions) if self.multi else _Replay(self.direction)), []
        for t in finish_order(self.trials):
            out.append(self._replay_step(replay, t))
        return replay, tuple(out)

    def _replay_on(self, replayed: tuple[_Replay, tuple[Result, ...]], changed: list[TrialRecord]):
        """The replay continued from an earlier lineage's by the trials that finished since, when they
        all arrived after the last one it took (else None: `_replayed` runs it all again)."""
        replay, history = replayed
        arrived = finish_order(changed)
        if history and arrived and _arrival(arrived[0]) <= _arrival(history[-1].trial):
            return None
        replay = replay.copy()
        return replay, history + tuple(self._replay_step(replay, t) for t in arrived)

    def _replay_step(self, replay: _Replay, t: TrialRecord) -> Result:
        kept, before = False, replay.best
        if t.finished_ok and t.operator != "promote":  # another scale: not comparable with rung 0
            kept = replay.step(genome_key(t), t.number, t.value, operator=t.operator, feasible=t.feasible,
                               min_gain=min_gain_of(t), **({"vector": t.values} if self.multi else {}))
        best = replay.best
        return Result(trial=t, best=self._sign * math.inf if best is None else best, kept=kept,
                      gain=gain(before, best, self.direction) if kept and before is not None else None)

    @cached_property
    def _kept(self) -> frozenset[int]:
        return frozenset(r.trial.number for r in self._history if r.kept)

    def kept(self, number: int) -> bool:
        """Whether trial `number` made a new best when its result arrived."""
        return number in self._kept

    def children(self) -> list[TrialRecord]:
        """The counted trials a proposer made (mutations and crossovers: not the seed, not re-evaluations)."""
        return [t for t in self.trials if t.counts and t.operator in CHILD_OPERATORS]

    # -- ancestry ---------------------------------------------------------------

    def ancestors(self, number: int) -> set[int]:
        """Every trial this one descends from (both parents of a crossover, recursively)."""
        seen: set[int] = set()
        stack = list(self.by_number[number].parents) if number in self.by_number else []
        while stack:
            n = stack.pop()
            if n in seen or n not in self.by_number:
                continue
            seen.add(n)
            stack.extend(self.by_number[n].parents)
        return seen

    def related(self, a: int, b: int) -> bool:
        """Whether one of two trials descends from the other (same line of research)."""
        return a == b or a in self.ancestors(b) or b in self.ancestors(a)

    def path_to(self, number: int) -> list[int]:
        """The chain from the seed to `number`, following each step's first parent."""
        chain = [number]
        while self.by_number.get(chain[-1]) and self.by_number[chain[-1]].parents:
            parent = self.by_number[chain[-1]].parents[0]
            if parent in chain:
                break
            chain.append(parent)
        return chain[::-1]


def apart(lineage: Lineage, a: Individual, b: Individual) -> float:
    """How far apart two genomes lie in objective space, each objective scaled by its range over the
    feasible genomes (0 with one objective): crossover prefers partners from another part of the front."""
    if not lineage.multi:
        return 0.0
    feasible = [i.objectives for i in lineage.individuals if i.feasible] or [a.objectives]
    spans = [(max(c) - min(c)) or 1.0 for c in zip(*feasible)]
    return math.sqrt(sum(((x - y) / s) ** 2 for x, y, s in zip(a.objectives, b.objectives, spans)))
