"""Turning a finished run into a score.

An `Evaluator` says when the genome's part is done (so the device can be freed) and what
the trial scored. `SummaryEvaluator` believes the summary block the genome printed: the
score is *self-reported*. Evaluators that do not believe the genome score it in a
process of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from evo.runner._output import TrialOutput
from evo.runner._process import Execution


@dataclass
class Evaluation:
    """What an evaluator concluded: a score (status ok) or why there is none."""

    status: str                              # "ok", or a failure status such as "diverged" or "invalid"
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    provenance: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Evaluator:
    """Base class: decides when a run's result is in and what it scored.

    metric: the key of the score in `Evaluation.metrics` (what the search optimises).
    """

    name = "base"
    metric = "val_bpb"

    def result_in(self, output: TrialOutput) -> bool:
        """Whether the genome's part is complete (the runner then frees the device after a short grace)."""
        raise NotImplementedError

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        """The score of a run, or None when the run left nothing to score (its ending then decides the status)."""
        raise NotImplementedError


class SummaryEvaluator(Evaluator):
    """Reads the score from the summary block the genome printed (self-reported)."""

    name = "self-reported"

    def result_in(self, output: TrialOutput) -> bool:
        return output.complete

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        value = output.summary.get(self.metric)
        if value is None:
            return None
        if not math.isfinite(value):
            return Evaluation("diverged", dict(output.summary), f"{self.metric} is {value}")
        # A complete block stands even if the run was stopped after it; an incomplete one
        # counts only when the genome exited on its own.
        if output.complete or execution.stopped is None:
            return Evaluation("ok", dict(output.summary), provenance={"evaluator": self.name})
        return None
