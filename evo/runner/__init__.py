"""Run one genome under the fixed budget and classify what happened.

The runner is the only part of the engine that executes mutated code. A `TrialRunner`
copies the fixed harness next to the genome, starts the genome's command through an
`Executor` (the isolation), reads its output with a `TrialOutput`, and asks an
`Evaluator` for the score. It never raises because of what the genome did.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evo.runner._evaluate import Evaluation, Evaluator, SummaryEvaluator
from evo.runner._output import SUMMARY_KEYS, Progress, TrialOutput
from evo.runner._process import (EXIT_GRACE, FINISHED, INTERRUPTED, PRUNED, TIMEOUT, Execution, Executor,
                                 LocalExecutor, Watch, supervise)

STATUSES = ("ok", "crash", "timeout", "diverged", "no_metric", "pruned", "interrupted")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")

__all__ = ["STATUSES", "SUMMARY_KEYS", "EXIT_GRACE", "Evaluation", "Evaluator", "SummaryEvaluator", "Execution",
           "Executor", "LocalExecutor", "Progress", "TrialOutput", "TrialResult", "TrialRunner", "Watch",
           "install_harness", "run_trial", "scrub_environment", "trial_environment"]


@dataclass
class TrialResult:
    """What one run of a genome produced."""

    status: str                      # one of STATUSES
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""                  # one line saying what went wrong, empty when ok
    log_tail: str = ""               # the last lines of the log
    returncode: int | None = None
    wall_seconds: float = 0.0
    provenance: dict = field(default_factory=dict)

    @property
    def val_bpb(self) -> float | None:
        return self.metrics.get("val_bpb")


def scrub_environment(env: dict[str, str]) -> dict[str, str]:
    """A copy of `env` without anything that looks like a credential.

    Removed: every variable whose name contains KEY, TOKEN, SECRET or PASSWORD (in any
    case) and every ANTHROPIC_* variable. A trial runs model-written code; it gets no keys."""
    return {name: value for name, value in env.items()
            if not name.upper().startswith("ANTHROPIC_") and not any(w in name.upper() for w in _SECRET_WORDS)}


def trial_environment(*, profile: str, budget: float, seed: int, device: str, data: str | None = None,
                      cache_dir: str | None = None, inductor_cache: str | None = None, threads: int | None = None,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment train.py runs with: scrubbed, plus the trial's fixed settings."""
    env = scrub_environment(dict(os.environ if base is None else base))
    env.update(EVO_PROFILE=profile, EVO_TIME_BUDGET=f"{budget:g}", EVO_SEED=str(seed), PYTHONUNBUFFERED="1")
    if device.startswith("cuda:"):
        # Pin the child to its GPU; inside, it is simply "cuda".
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        env["EVO_DEVICE"] = "cuda"
    else:
        env["EVO_DEVICE"] = device
    if data:
        env["EVO_DATA"] = data
    if cache_dir:
        env["EVO_CACHE"] = str(cache_dir)
    if inductor_cache:
        # One compile cache for every trial of a search: an unchanged model compiles in
        # seconds instead of a minute (measured on an H100: first step 47 s -> 6.6 s).
        env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache)
        env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
        env["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def install_harness(workdir: Path, harness: list[Path]) -> None:
    """Copy the fixed harness files into the genome's folder, replacing whatever is there."""
    for src in harness:
        shutil.copyfile(src, Path(workdir) / Path(src).name)


class TrialRunner:
    """Runs genomes: an executor for the isolation, an evaluator for the score.

    >>> runner = TrialRunner(harness=search.harness)                         # doctest: +SKIP
    >>> result = runner.run(worktree, log_path=..., env=..., timeout=65)     # doctest: +SKIP

    Args:
        executor: how the genome's process starts (default: a local process group).
        evaluator: what decides its score (default: the summary block it prints).
        harness: fixed files copied into the genome's folder before each run.
        script: the genome's entry point.
        python: the interpreter that runs it.
    """

    def __init__(self, *, executor: Executor | None = None, evaluator: Evaluator | None = None,
                 harness: list[Path] = (), script: str = "train.py", python: str = sys.executable):
        self.executor = executor or LocalExecutor()
        self.evaluator = evaluator or SummaryEvaluator()
        self.harness, self.script, self.python = list(harness), script, python

    def run(self, workdir: str | Path, *, log_path: str | Path, env: dict[str, str], timeout: float,
            on_progress: Callable[[float, float], bool | None] | None = None, stop: threading.Event | None = None,
            on_start: Callable[[int], None] | None = None) -> TrialResult:
        """Run the genome in `workdir` and return a TrialResult; never raises because of the genome.

        env:          the process's whole environment (see trial_environment).
        timeout:      seconds of wall time before the process group is killed (budget + grace).
        on_progress:  called with (fraction of the budget done, smoothed loss) for each progress
                      line; returning True stops the run and records it as ``pruned``.
        stop:         setting this event kills the run and records it as ``interrupted``.
        on_start:     called with the process id (also its process group id) once it runs.
        """
        workdir = Path(workdir)
        install_harness(workdir, self.harness)
        output = TrialOutput()
        watch = Watch(timeout=timeout, stop=stop, on_start=on_start, result_in=self.evaluator.result_in,
                      on_progress=(lambda p: on_progress(p.fraction, p.loss)) if on_progress else None)
        execution = supervise(self.executor, [self.python, self.script], cwd=workdir, env=env,
                              log_path=Path(log_path), output=output, watch=watch)
        if execution.start_error:
            return TrialResult("crash", error=execution.start_error, wall_seconds=execution.wall_seconds)
        evaluation = self.evaluator.evaluate(output, execution)
        status, error = classify(execution, output, evaluation, timeout=timeout)
        metrics = evaluation.metrics if evaluation is not None else dict(output.summary)
        provenance = {"sandbox": self.executor.name, **(evaluation.provenance if evaluation is not None else {})}
        return TrialResult(status, metrics=metrics, error=error, log_tail="\n".join(output.tail),
                           returncode=execution.returncode, wall_seconds=execution.wall_seconds, provenance=provenance)


def classify(execution: Execution, output: TrialOutput, evaluation: Evaluation | None, *,
             timeout: float) -> tuple[str, str]:
    """(status, error) of a run: a score stands first, then how the engine stopped it, then how it ended."""
    if evaluation is not None and evaluation.ok:
        return "ok", ""
    if execution.stopped == PRUNED:
        return "pruned", "stopped early by the pruner"
    if execution.stopped == INTERRUPTED:
        return "interrupted", "stopped by the search (interrupted)"
    if output.diverged or (evaluation is not None and evaluation.status == "diverged"):
        return "diverged", output.last_line(prefer="FAIL") or "loss became NaN or exploded"
    if execution.stopped == TIMEOUT:
        return "timeout", f"no result after {timeout:.0f}s (budget plus start-up grace)"
    if execution.returncode != 0:
        return "crash", output.last_line() or f"exited with code {execution.returncode}"
    if evaluation is not None:
        return evaluation.status, evaluation.error
    return "no_metric", "exited without printing a complete summary block"


def run_trial(workdir: str | Path, *, log_path: str | Path, env: dict[str, str], timeout: float,
              harness: list[Path] = (), on_progress: Callable[[float, float], bool | None] | None = None,
              stop: threading.Event | None = None, on_start: Callable[[int], None] | None = None,
              script: str = "train.py", python: str = sys.executable) -> TrialResult:
    """Run `script` in `workdir` with the default executor and evaluator (see `TrialRunner.run`)."""
    return TrialRunner(harness=list(harness), script=script, python=python).run(
        workdir, log_path=log_path, env=env, timeout=timeout, on_progress=on_progress, stop=stop, on_start=on_start)
