"""Scores of any project: the metric read from a run's output, or from a trusted evaluation command.

`MetricEvaluator` reads the last line that gives the metric (`val_bpb: 0.9979` by default,
or a pattern) from what the run printed: *self-reported*, as an autoresearch fork's score is.
`CommandEvaluator` ignores what the run printed and runs the project's own evaluation
command afterwards, in a sandbox of its own that sees the trial's folder read-only, and reads
the metric from what that prints: *evaluated*. The run cannot change the evaluation command
(it is part of the fixed harness) or what it prints.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from evo.runner._evaluate import Evaluation, Evaluator, Session
from evo.runner._output import TrialOutput, metric_pattern
from evo.runner._process import Execution
from population.store import TrialStatus

OUTPUT_LIMIT = 2 << 20  # bytes of an evaluation command's output kept
RESULT_PREFIX = "EVO_RESULT "  # an evaluation command's structured result: metrics, validity, artifacts
RESULT_CHANNEL = "EVO_RESULT_FD"  # names the descriptor an evaluation command with a channel writes its result to
METRIC_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
TAIL_LINES = 20  # lines of the evaluation's own output kept as an artifact
ARTIFACT_LIMIT = 4000  # characters of one artifact kept
ARTIFACTS_LIMIT = 12000  # characters of all of a trial's artifacts kept


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

    def __init__(self, metric: str, pattern: str | None = None, *, also: list[str] | tuple[str, ...] = ()):
        """also: other metrics to read from `name: value` lines (a search's further objectives, constrained
        metrics), kept with the score."""
        self.metric = metric
        self.also = tuple(n for n in dict.fromkeys(also) if n != metric)
        self.watch = ((metric, metric_pattern(metric, pattern)), *((n, metric_pattern(n)) for n in self.also))

    def session(self, run) -> Session:
        return _MetricSession(self.metric, self.also)


class _MetricSession(Session):
    def __init__(self, metric: str, also: tuple[str, ...] = ()):
        self.metric, self.also = metric, also

    def result_in(self, output: TrialOutput) -> bool:
        return self.metric in output.found_in_summary

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        value = output.found.get(self.metric)
        if value is None:
            return Evaluation(TrialStatus.NO_METRIC, error=f"the output never gave {self.metric} (it ended with: {_seen(output)})")
        if not math.isfinite(value):
            return Evaluation(TrialStatus.DIVERGED, {self.metric: value}, f"{self.metric} is {value}")
        if execution.stopped is None or self.metric in output.found_in_summary:
            others = {n: output.found[n] for n in self.also if n in output.found}
            return Evaluation(TrialStatus.OK, {**output.summary, **others, self.metric: value},
                              provenance={"evaluator": "self-reported"})
        return None


class CommandEvaluator(Evaluator):
    """The metric as the project's evaluation command prints it, run after the trial (evaluated).

    command: a shell command run in the trial's folder (read-only), in a sandbox of its own
        without network; metric and pattern: as for MetricEvaluator, applied to its output.
    quick, threshold, direction: a cheaper stage-1 command run first; a program whose stage-1
        metric is worse than `threshold` (for `direction`) stops there, pruned, without the full one.
    channel: the command writes its result (one `{json}` object, as an EVO_RESULT line holds) to the
        file descriptor $EVO_RESULT_FD, and nothing it prints counts (a peer project's runner, which
        holds that descriptor where the program it evaluates cannot write); no result there fails the trial.
    """

    name = "evaluated"
    self_reported = False

    def __init__(self, command: str, metric: str, pattern: str | None = None, *, quick: str | None = None,
                 threshold: float | None = None, direction: str = "minimize", channel: bool = False):
        self.command, self.metric, self.channel = command, metric, channel
        self.pattern = metric_pattern(metric, pattern)
        self.watch = ((metric, self.pattern),)  # what the run claims is kept on record, never used
        self.quick, self.threshold, self.direction = quick, threshold, direction

    def session(self, run) -> Session:
        return _CommandSession(self, run)

    def hopeless(self, value: float) -> bool:
        """Whether a stage-1 value is worse than the threshold."""
        if self.threshold is None:
            return False
        return value < self.threshold if self.direction == "maximize" else value > self.threshold


class _CommandSession(Session):
    def __init__(self, evaluator: CommandEvaluator, run):
        self.evaluator, self.run = evaluator, run

    def result_in(self, output: TrialOutput) -> bool:
        return False  # the run's own output decides nothing: wait for it to end

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        if execution.stopped is not None or execution.returncode != 0:
            return None  # the run failed or was stopped: its ending decides the status
        ev, metric = self.evaluator, self.evaluator.metric
        provenance = {"evaluator": "evaluated", "evaluate": ev.command}
        if ev.quick:
            provenance["evaluate_quick"] = ev.quick
            quick = self._evaluation(ev.quick, "eval-quick.log")
            quick.provenance = {**provenance, **quick.provenance}
            if not quick.ok:
                quick.error = f"stage 1: {quick.error}"
                return quick
            if ev.hopeless(quick.metrics[metric]):
                quick.status = TrialStatus.PRUNED
                quick.error = (f"stage 1: {metric} {quick.metrics[metric]:.6g} is "
                               f"{'below' if ev.direction == 'maximize' else 'above'} the threshold {ev.threshold:g}")
                return quick
        evaluation = self._evaluation(ev.command, "eval.log")
        evaluation.provenance = {**provenance, **evaluation.provenance}
        if evaluation.ok and metric in output.found:  # what the run claimed, kept on record
            evaluation.metrics[f"reported_{metric}"] = output.found[metric]
        return evaluation

    def _evaluation(self, command: str, log_name: str) -> Evaluation:
        run, env, fds, received = self.run, self.run.env, (), bytearray()
        if self.evaluator.channel:  # opened here, before anything of the command runs
            ours, theirs = os.pipe()
            env, fds = {**env, RESULT_CHANNEL: str(theirs)}, (theirs,)
        try:
            proc = run.executor.start(["bash", "-c", command], cwd=run.workdir, env=env, view=run.evaluation_view(),
                                      pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        channel = threading.Thread(target=_receive, args=(ours, received), daemon=True) if fds else None
        if channel is not None:
            channel.start()
        lines: list[str] = []
        reader = threading.Thread(target=_collect, args=(proc, lines), daemon=True)
        reader.start()
        stopped = _wait(proc, run)
        run.executor.kill(proc)
        proc.wait()
        reader.join(timeout=5)
        if channel is not None:
            channel.join(timeout=5)
        (run.folder / log_name).write_text("\n".join(lines) + "\n", errors="replace")
        if stopped:
            return Evaluation(stopped[0], error=stopped[1])
        return judge(lines, proc.returncode, self.evaluator.metric, self.evaluator.pattern,
                     channel=bytes(received).decode("utf-8", errors="replace") if channel is not None else None)


def judge(lines: list[str], returncode: int, metric: str, pattern: re.Pattern, *,
          channel: str | None = None) -> Evaluation:
    """What an evaluation command's output and exit code say: a score, or why there is none.

    Every `name: number` line is a metric; an `EVO_RESULT {json}` line gives metrics, validity
    and text artifacts at once (see `parse_result`). A non-zero exit or a program declared not
    valid fails the trial with the evaluator's reason, whatever numbers it printed.
    channel: what the command wrote to its result channel (None: it had none). With one, that is
    the whole result: the output is only an artifact, its numbers and result lines count for nothing."""
    if channel is not None:
        text = lines
        last = next((l for l in reversed(channel.splitlines()) if l.strip()), "")
        result = parse_result(last) if last else None
        if result is None:
            return Evaluation(TrialStatus.CRASH, {}, f"the evaluation handed over no result (exit code {returncode})",
                              artifacts=bounded({"evaluator output": "\n".join(text[-TAIL_LINES:])[-ARTIFACT_LIMIT:]}))
        metrics: dict[str, float] = {}
    else:
        result = next((parse_result(l[len(RESULT_PREFIX):]) for l in reversed(lines) if l.startswith(RESULT_PREFIX)),
                      None)
        text = [l for l in lines if not l.startswith(RESULT_PREFIX)]
        metrics = {m.group(1): float(m.group(2)) for m in map(METRIC_LINE.match, text) if m}
        values = [m.group(1) if m.groups() else m.group(0) for m in map(pattern.search, text) if m]
        if values:
            try:
                metrics[metric] = float(values[-1])
            except ValueError:
                metrics[metric] = math.nan
    artifacts, valid, reason = {}, True, ""
    if result is not None:
        metrics.update(result.metrics)
        artifacts.update(result.artifacts)
        valid, reason = result.valid, result.reason
    tail = "\n".join(text[-TAIL_LINES:]).strip()
    if tail:
        artifacts.setdefault("evaluator output", tail[-ARTIFACT_LIMIT:])
    artifacts = bounded(artifacts)
    last = next((l.strip() for l in reversed(text) if l.strip()), "")
    how = {"program": result.program} if result is not None and result.program else {}
    if returncode != 0:
        why = reason or last or f"exit code {returncode}"
        return Evaluation(TrialStatus.CRASH, metrics, f"the evaluation command failed: {why[:200]}", artifacts=artifacts,
                          provenance=how)
    if not valid:
        return Evaluation(TrialStatus.INVALID, metrics, f"the evaluator found the program not valid: "
                          f"{(reason or last or 'no reason given')[:200]}", artifacts=artifacts, provenance=how)
    if metric not in metrics:
        return Evaluation(TrialStatus.NO_METRIC, metrics, f"the evaluation command never printed {metric}", artifacts=artifacts,
                          provenance=how)
    if not math.isfinite(metrics[metric]):
        return Evaluation(TrialStatus.INVALID, metrics, f"the evaluation command gave {metric} = {metrics[metric]}",
                          artifacts=artifacts, provenance=how)
    return Evaluation(TrialStatus.OK, metrics, artifacts=artifacts, provenance=how)


@dataclass
class EvaluatorResult:
    """One `EVO_RESULT {json}` line, read."""

    metrics: dict[str, float] = field(default_factory=dict)
    valid: bool = True
    reason: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    program: str = ""  # how the program ran beside its evaluator, where the evaluator's runner says so


VALIDITY_KEYS = ("valid", "correct", "validity")


def parse_result(text: str) -> EvaluatorResult:
    """Read `{"metrics": {...}, "valid": bool, "error": str, "artifacts": {...}}` (any key may be missing;
    a flat object of metrics reads too). `valid`, `correct` or `validity` false or 0, among the keys or
    the metrics, marks the program not valid; `error` says why."""
    try:
        data = json.loads(text)
    except ValueError:
        return EvaluatorResult(valid=False, reason=f"its result line is not JSON: {text.strip()[:120]!r}")
    if not isinstance(data, dict):
        return EvaluatorResult(valid=False, reason="its result line is not a JSON object")
    raw = data.get("metrics") if isinstance(data.get("metrics"), dict) else data
    metrics = {str(k): float(v) for k, v in raw.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and str(k) not in VALIDITY_KEYS}
    flags = [src[k] for src in (data, raw) for k in VALIDITY_KEYS if k in src]
    valid = all(bool(f) for f in flags if isinstance(f, (bool, int, float)))
    error = data.get("error") or raw.get("error") or ""
    raw_artifacts = data.get("artifacts") if isinstance(data.get("artifacts"), dict) else {}
    artifacts = {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in raw_artifacts.items()}
    program = data.get("program") if isinstance(data.get("program"), str) else ""
    return EvaluatorResult(metrics, valid, str(error), artifacts, program[:200])


def bounded(artifacts: dict[str, str]) -> dict[str, str]:
    """Artifacts cut to ARTIFACT_LIMIT characters each (their ends kept: an error ends there) and
    ARTIFACTS_LIMIT together."""
    kept, total = {}, 0
    for name, text in artifacts.items():
        text = text if len(text) <= ARTIFACT_LIMIT else "..." + text[-ARTIFACT_LIMIT:]
        if total + len(text) > ARTIFACTS_LIMIT:
            break
        kept[name], total = text, total + len(text)
    return kept


def _receive(fd: int, into: bytearray) -> None:
    """What an evaluation command writes to its result channel, up to OUTPUT_LIMIT bytes."""
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 16):
            if len(into) < OUTPUT_LIMIT:
                into += chunk


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
            return TrialStatus.INTERRUPTED, "stopped by the search while evaluating (interrupted)"
        if time.monotonic() > deadline:
            return TrialStatus.TIMEOUT, f"the evaluation command took longer than {run.eval_limit:g}s"
        time.sleep(0.05)
    return None

