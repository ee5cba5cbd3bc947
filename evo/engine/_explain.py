"""Why a search cannot go on, in one line that says what to run next."""

from __future__ import annotations

from evo.engine._options import StopKind, StopReason
from evo.strategies import NoParentError
from population.lineage import Lineage
from population.search import SearchConfig
from population.store import TrialStatus


def no_parent(cfg: SearchConfig, lineage: Lineage, error: NoParentError | None, again: str = "") -> str:
    """Why no child can be planned, and what to do about it (`again`: the flags a run needs to go on)."""
    name = cfg.name
    seeds = [t for t in lineage.trials if t.operator == "seed" and t.counts]
    if seeds and not any(t.finished_ok for t in lineage.trials):
        t = seeds[-1]
        failed = f"the seed genome failed (trial #{t.number}, {t.status}: {(t.error or 'no error line')[:160]})"
        if t.status == TrialStatus.NO_METRIC and cfg.target:  # the metric's name is fixed: running again cannot help
            return (f"{failed}; the search's metric {cfg.metric!r} is fixed: if the run prints its score under "
                    f"another name, delete the search with `evo rm {name} --yes` and create it again with that "
                    f"`metric` (or `metric_pattern`); if the seed's own files should print it, fix them in the "
                    f"project and run `evo reseed {name}`, then `evo run {name}{again}`")
        return (f"{failed}; fix the cause and run `evo run {name}{again}` again, which retries the seed (if the "
                f"seed itself is at fault, fix it in the project and run `evo reseed {name}` first; `evo show "
                f"{name} {t.number}` has its log; `evo rm {name} --yes` starts over)")
    return f"cannot plan a child: {error}" if error else "no trial succeeded"


def unless_nothing_succeeded(search, reason: StopReason, trials_limit: int | None) -> StopReason:
    """A run that reached a limit (or ran out of plans) while no trial of the search ever succeeded did not
    do what was asked: an error, saying why and what to run next."""
    if reason.kind in (StopKind.INTERRUPTED, StopKind.ERROR):
        return reason
    try:
        lineage = Lineage(search.trials(), direction=search.config.direction)
    except Exception:  # a shared search's database went away at the end: the stop says what it knows
        return reason
    if any(t.finished_ok for t in lineage.trials):
        return reason
    counted = sum(1 for t in lineage.trials if t.counts)
    again = f" --trials {counted + trials_limit}" if reason.kind == StopKind.TRIALS else ""
    return StopReason(StopKind.ERROR, f"{reason} and none succeeded: {no_parent(search.config, lineage, None, again)}")
