"""How a search runs this time (`RunOptions` and its specs), and why it stopped (`StopReason`)."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field

import optuna

from evo.promotion import DEFAULT_TOP, LADDER_ATTR, Rung, describe
from evo.pruners import make_pruner
from population.errors import OptionError
from population.lineage import Lineage, auto_min_gain
from population.search import Search, SearchError

AUTO = "auto"  # RunOptions.min_gain: a multiple of the measured noise floor

__all__ = ["AUTO", "INTERRUPTED_STOP", "BackoffSpec", "LimitSpec", "NoiseSpec", "PromotionSpec", "RunOptions",
           "StopKind", "StopReason", "fix_ladder"]


class StopKind(enum.Enum):
    """Why a search stopped."""

    TRIALS = "trials"            # reached --trials
    HOURS = "hours"              # reached --hours
    COST = "cost"                # reached --max-cost-usd
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM or a caller's stop
    ERROR = "error"              # something no retry fixes (a rejected key, no parent to breed from)
    EXHAUSTED = "exhausted"      # nothing left to plan


@dataclass(frozen=True)
class StopReason:
    """A stop, as a value: its kind and the sentence a person reads."""

    kind: StopKind
    message: str

    @property
    def halts(self) -> bool:
        """Whether children already prepared must not start either (a trial or cost limit lets them run)."""
        return self.kind in (StopKind.INTERRUPTED, StopKind.ERROR, StopKind.HOURS)

    def __str__(self) -> str:
        return self.message


INTERRUPTED_STOP = StopReason(StopKind.INTERRUPTED, "interrupted")


@dataclass(frozen=True, kw_only=True)
class LimitSpec:
    """When this run stops.

    trials: total finished trials in the search, seed included; it becomes the search's limit, which
        later runs keep when given None (`population.store.NO_LIMIT` lifts it).
    hours: wall-clock limit of this run (counted from `since`).
    since: when `hours` starts counting (epoch seconds; default: when the run starts). A shared
        search's workers count from its first trial.
    max_cost_usd: stop proposing once the LLM spend reaches this.
    """

    trials: int | None = None
    hours: float | None = None
    since: float | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    """How much a score is trusted.

    reeval: extra seeds for a genome that becomes the best.
    noise_runs: extra seeds for the seed genome before any child is planned: they measure the
        noise floor (`Lineage.noise_sd`) that `min_gain="auto"` is a multiple of.
    min_gain: how much better than the best a result must be to count as better (kept, and
        the best from then on): a number in val_bpb, or "auto" for `NOISE_MULTIPLE` times the
        noise floor measured so far (needs noise_runs >= 1). Recorded on every trial.
    """

    reeval: int = 0
    noise_runs: int = 0
    min_gain: float | str = 0.0

    def __post_init__(self):
        if self.min_gain == AUTO:
            if self.noise_runs < 1:
                raise OptionError("min_gain auto needs a measured noise floor: add noise_runs K (e.g. 3), "
                                 "or give min_gain a number")
        elif not isinstance(self.min_gain, (int, float)) or not math.isfinite(self.min_gain) or self.min_gain < 0:
            raise OptionError(f"min_gain must be 'auto' or a number >= 0, not {self.min_gain!r}")
        if self.noise_runs < 0 or self.reeval < 0:
            raise OptionError("noise_runs and reeval count seeds: they must be >= 0")

    def min_gain_now(self, lineage: Lineage) -> float:
        """The min gain a result finishing now must beat the best by (see `population.lineage`)."""
        return auto_min_gain(lineage.noise_sd()) if self.min_gain == AUTO else float(self.min_gain)


@dataclass(frozen=True, kw_only=True)
class PromotionSpec:
    """ladder: larger scales (`evo.promotion.parse_ladder`); the top `top` fraction of the genomes scored
    at each rung is re-run at the next. Fixed for a search once a run used it (`fix_ladder`)."""

    ladder: tuple[Rung, ...] = ()
    top: float = DEFAULT_TOP

    def __post_init__(self):
        if not 0 < self.top < 1:
            raise OptionError(f"promote_top is the fraction of a rung promoted to the next: above 0 and below 1, "
                             f"not {self.top:g}")


@dataclass(frozen=True, kw_only=True)
class BackoffSpec:
    """What the search does while its proposer's API is down (it never stops for an outage).

    api_backoff: (first, longest) seconds to wait before asking the API again; each failed try doubles it.
    reeval_while_waiting: idle devices meanwhile re-evaluate the best genomes until each has this many
        evaluations (0: they wait).
    """

    api_backoff: tuple[float, float] = (15.0, 600.0)
    reeval_while_waiting: int = 3


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How this run of a search runs (not fixed: each `evo run` may change them), as small frozen specs.

    limits, noise, promotion, backoff: see `LimitSpec`, `NoiseSpec`, `PromotionSpec`, `BackoffSpec`.
    prune: stop children whose loss is clearly behind (with `pruner`, or the default rule).
    pruner: the Optuna pruner `prune` uses (default: `evo.pruners.make_pruner()`).
    max_vram_gb: an Optuna constraint on peak memory.
    max_memory_gb: memory (RSS) one trial's processes may use before they are stopped as oom
        (default: 85% of the machine's memory shared among the slots).
    memory: hand proposers the lab notebook (`evo.memory`); False: as before it existed.

    The engine that runs with them owns them: a limit that changes while it runs (a shared search's,
    read from its study) gives it new options (`Engine.set_limits`), never a changed object.
    """

    limits: LimitSpec = field(default_factory=LimitSpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    promotion: PromotionSpec = field(default_factory=PromotionSpec)
    backoff: BackoffSpec = field(default_factory=BackoffSpec)
    prune: bool = False
    pruner: optuna.pruners.BasePruner | None = None
    max_vram_gb: float | None = None
    max_memory_gb: float | None = None
    memory: bool = True

    def with_limits(self, **limits) -> "RunOptions":
        """These options with some of their limits changed (LimitSpec's fields)."""
        return dataclasses.replace(self, limits=dataclasses.replace(self.limits, **limits))

    def pruner_in_use(self) -> optuna.pruners.BasePruner | None:
        """The pruner that decides, or None when this run does not prune."""
        if not self.prune:
            return None
        return self.pruner or make_pruner()


def fix_ladder(search: Search, ladder: tuple[Rung, ...]) -> None:
    """Record a search's promotion ladder the first time a run uses one; refuse another one later
    (rungs that changed would compare scores made at different scales)."""
    if not ladder:
        return
    fixed, given = search.store.attr(LADDER_ATTR), describe(ladder)
    if fixed is None:
        search.store.set_attr(LADDER_ATTR, given)
    elif fixed != given:
        raise SearchError(f"search {search.config.name!r} promotes along `promote` {fixed}; give that ladder or "
                          "none (its promoted trials keep their scale)")
