"""A trial as the layers above the store read it: one status vocabulary and a read-only record.

Split out of the store: strategies, schedulers, analysis and the engine read trials; only the
store writes them. `population.store` re-exports every name here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import optuna
from optuna.trial import TrialState

METRICS_PREFIX = "metrics."    # a trial attribute per metric: metrics.val_bpb, metrics.peak_vram_mb, ...


class TrialStatus(enum.StrEnum):
    """Every status a trial can have: the one vocabulary of the runner, the store, the loop and the
    views. Members are strings, so records written before it (and `t.status == "ok"`) read the same."""

    RUNNING = "running"
    OK = "ok"                              # the only one with a usable score of its own
    DUPLICATE = "duplicate"                # a genome already evaluated: its score reused, never trained twice
    INTERRUPTED = "interrupted"            # cut short by the search itself (a stop, a crash of the engine): re-run
    INVALID_PROPOSAL = "invalid_proposal"  # the proposer's child could not be made
    # How a run ended, as the runner tells it.
    CRASH = "crash"
    TIMEOUT = "timeout"
    DIVERGED = "diverged"
    NO_METRIC = "no_metric"
    PRUNED = "pruned"
    OOM = "oom"
    LIMIT = "limit"
    INVALID = "invalid"                    # the run broke the rules (changed the harness while it ran)


_STATUS_OF = {s.value: s for s in TrialStatus}
# The statuses the engine writes itself, by their old names (INVALID is an invalid proposal, not
# TrialStatus.INVALID, a run that broke the rules).
OK, DUPLICATE, INTERRUPTED, INVALID = (TrialStatus.OK, TrialStatus.DUPLICATE, TrialStatus.INTERRUPTED,
                                       TrialStatus.INVALID_PROPOSAL)
# How a run can end (`evo.runner.TrialResult.status`).
RUN_STATUSES = (TrialStatus.OK, TrialStatus.CRASH, TrialStatus.TIMEOUT, TrialStatus.DIVERGED, TrialStatus.NO_METRIC,
                TrialStatus.PRUNED, TrialStatus.INTERRUPTED, TrialStatus.OOM, TrialStatus.LIMIT, TrialStatus.INVALID)


@dataclass
class TrialRecord:
    """A read-only view of one trial, as analysis and strategies see it."""

    number: int
    state: str                       # Optuna's: COMPLETE, FAIL, PRUNED, RUNNING
    value: float | None              # val_bpb as told to Optuna (None unless COMPLETE); a vector's first entry
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    started: datetime | None = None
    finished: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)  # the genome's hyperparameters (population.params)
    values: tuple[float, ...] | None = None   # a multi-objective study's vector (None in a single-objective one)

    @property
    def status(self) -> TrialStatus | str:
        """The trial's status; one that no member names (a record without one: Optuna's state) reads as a string."""
        if self.state == "RUNNING":
            return TrialStatus.RUNNING
        status = self.attrs.get("status", self.state.lower())
        return _STATUS_OF.get(status, status)

    @property
    def commit(self) -> str:
        return self.attrs.get("commit", "")

    @property
    def tree(self) -> str:
        return self.attrs.get("tree", "")

    @property
    def parents(self) -> list[int]:
        return list(self.attrs.get("parents", []))

    @property
    def operator(self) -> str:
        return self.attrs.get("operator", "")

    @property
    def description(self) -> str:
        return self.attrs.get("description", "")

    @property
    def rationale(self) -> str:
        return self.attrs.get("rationale", "")

    @property
    def proposer(self) -> str:
        return self.attrs.get("proposer", "")

    @property
    def seed(self) -> int:
        return int(self.attrs.get("seed", 0))

    @property
    def metrics(self) -> dict[str, float]:
        """The run's metrics: one `metrics.NAME` attribute each, or (searches before that) one `metrics` dict.
        A copy: the caller may change it."""
        return dict(self._metrics)

    @cached_property
    def _metrics(self) -> dict[str, float]:
        # Found once per record: views read every trial's metrics, and a trial has tens of attributes to scan.
        found = dict(self.attrs.get("metrics") or {})
        found.update({k[len(METRICS_PREFIX):]: v for k, v in self.attrs.items() if k.startswith(METRICS_PREFIX)})
        return found

    @property
    def error(self) -> str:
        return self.attrs.get("error", "")

    @property
    def host(self) -> str:
        """The host whose worker ran this trial (shared searches only; its logs stay on that host)."""
        return self.attrs.get("host", "")

    @property
    def cost_usd(self) -> float:
        return float(self.attrs.get("usage", {}).get("cost_usd", 0.0))

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())

    @property
    def finished_ok(self) -> bool:
        """A real evaluation with a finite val_bpb (duplicates reuse one; they are not one)."""
        return self.status == OK and self.value is not None and math.isfinite(self.value)

    @property
    def counts(self) -> bool:
        """A finished evaluation: not running, and not cut short by the search itself."""
        # Read from the attribute itself, not `status`: the engine counts every trial of a search several
        # times per trial (10,000 records at a time), and only the attribute can say interrupted.
        return self.state != "RUNNING" and self.attrs.get("status") != INTERRUPTED.value

    @property
    def while_waiting(self) -> bool:
        """A re-evaluation a device made only because the proposer's API was down: kept apart from the
        trial limit (an outage must not use up a search), counted as an evaluation all the same."""
        return bool(self.attrs.get(WHILE_WAITING))

    # The two below are counted over every trial of a search several times per trial: each record works
    # them out once (a record never changes: Optuna refuses to change a finished trial, and a running
    # one is read into a new record each time).
    @cached_property
    def spends_trial(self) -> bool:
        """Counts towards the search's trial limit (--trials): finished, and neither cut short by the search
        nor a re-evaluation made while the API was down."""
        return self.counts and not self.while_waiting

    @cached_property
    def holds_trial(self) -> bool:
        """Spends one of --trials once finished: finished or running, and not a re-evaluation made while the
        API was down (what the engine counts before it plans or admits another child)."""
        return (self.counts or self.state == "RUNNING") and not self.while_waiting


WHILE_WAITING = "while_waiting"   # the trial attribute that marks a re-evaluation made during an API outage


def record_of(t: optuna.trial.FrozenTrial) -> TrialRecord:
    """The record of an Optuna trial: a multi-objective trial's value is its vector's first entry."""
    constraints = {k.split(":", 1)[1]: v for k, v in t.system_attrs.items() if k.startswith("constraints:")}
    complete = t.state == TrialState.COMPLETE
    several = complete and t.values is not None and len(t.values) > 1
    return TrialRecord(number=t.number, state=t.state.name,
                       value=(t.values[0] if several else t.value) if complete else None,
                       attrs=dict(t.user_attrs), constraints=constraints,
                       started=t.datetime_start, finished=t.datetime_complete, params=dict(t.params),
                       values=tuple(t.values) if several else None)
