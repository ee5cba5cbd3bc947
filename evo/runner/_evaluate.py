"""Turning a finished run into a score.

An `Evaluator` opens a `Session` for each run: the session says when the genome's part is
done (so the device can be freed) and what the run scored. `SummaryEvaluator` believes
the summary block the genome printed: its scores are *self-reported*, which is all a
harness from before trusted evaluation offers. `HarnessEvaluator` (see `_harness.py`)
scores the handed-over model in processes the genome never controls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from evo.runner._output import TrialOutput
from evo.runner._process import Execution
from population.store import TrialStatus


@dataclass
class Evaluation:
    """What an evaluator concluded: a score (status ok) or why there is none."""

    status: TrialStatus                      # OK, or a failure such as DIVERGED, INVALID, CRASH, TIMEOUT
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    provenance: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # text feedback of the evaluator, by name

    @property
    def ok(self) -> bool:
        return self.status == TrialStatus.OK


class Session:
    """One run's evaluation. The runner calls `result_in` while the genome runs, `on_result`
    once when it holds, `evaluate` after the genome's process has ended, and `close` always."""

    def result_in(self, output: TrialOutput) -> bool:
        raise NotImplementedError

    def on_result(self) -> None:
        """The genome's result has just come in (the session may secure it before the process ends)."""

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        """The score of a run, or None when the run left nothing to score (its ending then decides the status)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever the session started; called after every run, also a failed one."""


class Evaluator:
    """Base class: makes a `Session` per run.

    name: recorded in each trial's provenance ("self-reported", "harness" or "evaluated").
    metric: the key of the score in `Evaluation.metrics` (what the search optimises).
    self_reported: whether the score is what the genome's own process printed (then its
        training process may see everything the harness holds, validation data included).
    watch: (name, pattern) pairs the run's output is searched for (see TrialOutput).
    """

    name = "base"
    metric = "val_bpb"
    self_reported = True
    watch: tuple = ()

    def session(self, run) -> Session:
        raise NotImplementedError


class SummaryEvaluator(Evaluator):
    """Reads the score from the summary block the genome printed (self-reported)."""

    name = "self-reported"

    def session(self, run) -> Session:
        return _SummarySession(self.metric)


class _SummarySession(Session):
    def __init__(self, metric: str):
        self.metric = metric

    def result_in(self, output: TrialOutput) -> bool:
        return output.complete

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        value = output.summary.get(self.metric)
        if value is None:
            return None
        if not math.isfinite(value):
            return Evaluation(TrialStatus.DIVERGED, dict(output.summary), f"{self.metric} is {value}")
        # A complete block stands even if the run was stopped after it; an incomplete one
        # counts only when the genome exited on its own.
        if output.complete or execution.stopped is None:
            return Evaluation(TrialStatus.OK, dict(output.summary), provenance={"evaluator": "self-reported"})
        return None
