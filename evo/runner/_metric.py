"""Scores of any project: the metric read from a run's output, or from a trusted evaluation command.

`MetricEvaluator` reads the last line that gives the metric (`val_bpb: 0.9979` by default,
or a pattern) from what the run printed: *self-reported*, as an autoresearch fork's score is.
`CommandEvaluator` ignores what the run printed and runs the project's own evaluation
command afterwards, in a sandbox of its own that sees the trial's folder read-only, and reads
the metric from what that prints: *evaluated*. The run cannot change the evaluation command
(it is part of the fixed harness) or what it prints.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time

from evo.runner._evaluate import Evaluation, Evaluator, Session
from evo.runner._output import TrialOutput, metric_pattern
from evo.runner._process import Execution

OUTPUT_LIMIT = 2 << 20  # bytes of an evaluation command's output kept


def _seen(output: TrialOutput) -> str:
    lines = [l for l in output.tail if l.strip() and not l.startswith("[evo]")][-3:]
    return "; ".join(l.strip()[:80] for l in lines) or "no output at all"


class MetricEvaluator(Evaluator):
    """The metric as the run printed it (self-reported).

    metric: the metric's name; pattern: a regex whose first group is the number (default: a
    `metric: value` or `metric = value` line). The last match counts; a match in the summary
    block (after a `---` line) frees the device shortly after, as autoresearch's train.py
    prints its result there and then spends seconds tearing down.
    """

    name = "self-reported"
    self_reported = True

    def __init__(self, metric: str, pattern: str | None = None):
        self.metric = metric
        self.watch = ((metric, metric_pattern(metric, pattern)),)

    def session(self, run) -> Session:
        return _MetricSession(self.metric)


class _MetricSession(Session):
    def __init__(self, metric: str):
        self.metric = metric

    def result_in(self, output: TrialOutput) -> bool:
        return self.metric in output.found_in_summary

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        value = output.found.get(self.metric)
        if value is None:
            return Evaluation("no_metric", error=f"the output never gave {self.metric} (it ended with: {_seen(output)})")
        if not math.isfinite(value):
            return Evaluation("diverged", {self.metric: value}, f"{self.metric} is {value}")
        if execution.stopped is None or self.metric in output.found_in_summary:
            return Evaluation("ok", {**output.summary, self.metric: value}, provenance={"evaluator": "self-reported"})
        return None


class CommandEvaluator(Evaluator):
    """The metric as the project's evaluation command prints it, run after the trial (evaluated).

    command: a shell command run in the trial's folder (read-only), in a sandbox of its own
        without network; metric and pattern: as for MetricEvaluator, applied to its output.
    """

    name = "evaluated"
    self_reported = False

    def __init__(self, command: str, metric: str, pattern: str | None = None):
        self.command, self.metric = command, metric
        self.pattern = metric_pattern(metric, pattern)
        self.watch = ((metric, self.pattern),)  # what the run claims is kept on record, never used

    def session(self, run) -> Session:
        return _CommandSession(self, run)


class _CommandSession(Session):
    def __init__(self, evaluator: CommandEvaluator, run):
        self.evaluator, self.run = evaluator, run

    def result_in(self, output: TrialOutput) -> bool:
        return False  # the run's own output decides nothing: wait for it to end

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        if execution.stopped is not None or execution.returncode != 0:
            return None  # the run failed or was stopped: its ending decides the status
        run, metric = self.run, self.evaluator.metric
        provenance = {"evaluator": "evaluated", "evaluate": self.evaluator.command}
        proc = run.executor.start(["bash", "-c", self.evaluator.command], cwd=run.workdir, env=run.env,
                                  view=run.evaluation_view())
        lines: list[str] = []
        reader = threading.Thread(target=_collect, args=(proc, lines), daemon=True)
        reader.start()
        stopped = _wait(proc, run)
        run.executor.kill(proc)
        proc.wait()
        reader.join(timeout=5)
        (run.folder / "eval.log").write_text("\n".join(lines) + "\n", errors="replace")
        if stopped:
            return Evaluation(stopped[0], error=stopped[1], provenance=provenance)
        values = [m.group(1) if m.groups() else m.group(0) for m in map(self.evaluator.pattern.search, lines) if m]
        if proc.returncode != 0 and not values:
            last = next((l.strip() for l in reversed(lines) if l.strip()), f"exit code {proc.returncode}")
            return Evaluation("crash", error=f"the evaluation command failed: {last[:200]}", provenance=provenance)
        if not values:
            return Evaluation("no_metric", error=f"the evaluation command never printed {metric}", provenance=provenance)
        try:
            value = float(values[-1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return Evaluation("invalid", error=f"the evaluation command gave {metric} = {values[-1]}",
                              provenance=provenance)
        return Evaluation("ok", {metric: value, f"reported_{metric}": output.found.get(metric, math.nan)},
                          provenance=provenance)


def _collect(proc: subprocess.Popen, lines: list[str]) -> None:
    kept = 0
    for raw in proc.stdout:
        if kept < OUTPUT_LIMIT:
            lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            kept += len(raw)


def _wait(proc: subprocess.Popen, run) -> tuple[str, str] | None:
    deadline = time.monotonic() + run.eval_limit
    while proc.poll() is None:
        if run.stop is not None and run.stop.is_set():
            return "interrupted", "stopped by the search while evaluating (interrupted)"
        if time.monotonic() > deadline:
            return "timeout", f"the evaluation command took longer than {run.eval_limit:g}s"
        time.sleep(0.05)
    return None

