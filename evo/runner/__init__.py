"""Run one genome under the fixed budget and classify what happened.

The runner is the only part of the engine that executes mutated code. A `TrialRunner`
copies the fixed harness next to the genome, starts the genome through an `Executor` (a
bubblewrap sandbox, or a plain process where bwrap cannot run), measures it from outside
(its budget clock, its memory, its output, its processes, its disk) and asks an
`Evaluator` for the score: the harness's own scorer in separate processes, or, for a
harness from before trusted evaluation, the summary block the genome printed. It never
raises because of what the genome did.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evo.runner._evaluate import Evaluation, Evaluator, Session, SummaryEvaluator
from evo.runner._harness import (HARNESS_SCRIPT, HARNESS_SUMMARY, DataFiles, HarnessEvaluator, Run, harness_root,
                                 open_regular, private_compile_cache)
from evo.runner._metric import CommandEvaluator, MetricEvaluator
from evo.runner._output import Progress, SummaryBlock, TrialOutput
from evo.runner._process import (EXIT_GRACE, INTERRUPTED, LIMIT, OOM, PRUNED, TIMEOUT, Execution, Executor,
                                 Limits, Watch, supervise)
from evo.runner._sandbox import BwrapExecutor, LocalExecutor, View, allowed_environment, bwrap_works
from evo.runner._scan import suspicious
from population.store import RUN_STATUSES, TrialStatus

STATUSES = RUN_STATUSES  # how a run can end: members of population.store.TrialStatus
SOURCE_READ_LIMIT = 1 << 20  # bytes of a genome file read to flag suspicious code

__all__ = ["STATUSES", "EXIT_GRACE", "HARNESS_SCRIPT", "BwrapExecutor", "CommandEvaluator", "DataFiles", "Evaluation",
           "Evaluator", "MetricEvaluator",
           "Execution", "Executor", "HarnessEvaluator", "Limits", "LocalExecutor", "Progress", "Run", "Session",
           "SummaryBlock", "SummaryEvaluator", "TrialOutput", "TrialResult", "TrialRunner", "View", "Watch", "allowed_environment",
           "bwrap_works", "install_harness", "private_compile_cache", "run_trial", "suspicious", "trial_environment"]


@dataclass
class TrialResult:
    """What one run of a genome produced."""

    status: TrialStatus              # one of STATUSES
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""                  # one line saying what went wrong, empty when ok
    log_tail: str = ""               # the last lines of the log
    returncode: int | None = None
    wall_seconds: float = 0.0
    provenance: dict = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # the evaluator's text feedback, by name (bounded)

    def to_json(self) -> str:
        """The result as JSON for result.json: a metric that is not a finite number becomes null (bare NaN
        is not JSON)."""
        return json.dumps(_finite(dataclasses.asdict(self)), indent=2, allow_nan=False) + "\n"

    @property
    def val_bpb(self) -> float | None:
        return self.metrics.get("val_bpb")

    def value(self, metric: str) -> float | None:
        """The score under `metric`'s name (val_bpb for evoresearch's own harness)."""
        return self.metrics.get(metric)


def _finite(value):
    """`value` with every non-finite float (nan, inf) in it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def trial_environment(*, profile: str, budget: float, seed: int, device: str, data: str | None = None,
                      cache_dir: str | None = None, threads: int | None = None, allowance: float | None = None,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a genome runs with: the allowed part of the engine's (no keys, whatever
    they are called), plus the trial's fixed settings."""
    env = allowed_environment(dict(os.environ if base is None else base))
    env.update(EVO_PROFILE=profile, EVO_TIME_BUDGET=f"{budget:g}", EVO_SEED=str(seed), PYTHONUNBUFFERED="1")
    if device.startswith("cuda:"):
        # Pin the trial to its GPU; inside, it is simply "cuda".
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        env["EVO_DEVICE"] = "cuda"
    else:
        env["EVO_DEVICE"] = device
    if data:
        env["EVO_DATA"] = data
    if cache_dir:
        env["EVO_CACHE"] = str(cache_dir)
    if allowance is not None:
        env["EVO_STARTUP_ALLOWANCE"] = f"{allowance:g}"
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "EVO_THREADS"):
            env[name] = str(threads)
    return env


def install_harness(workdir: Path, harness: list[Path], root: Path | None = None) -> None:
    """Copy the fixed harness files into the genome's folder, at their places relative to the harness
    folder `root` (default: their common folder), replacing whatever is there; modes are kept (a
    project's script stays executable)."""
    root = root or harness_root(harness)
    for src in harness:
        target = Path(workdir) / Path(src).relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)


class TrialRunner:
    """Runs genomes: an executor for the isolation, an evaluator for the score.

    >>> runner = TrialRunner(harness=search.harness)                         # doctest: +SKIP
    >>> result = runner.run(worktree, log_path=..., env=..., timeout=65)     # doctest: +SKIP

    Args:
        executor: how processes start (default: a local process group, no sandbox).
        evaluator: what decides the score (default: the summary block the genome prints).
        harness: the fixed files, copied into the genome's folder before each run (and, in a
            sandbox, bound read-only over those copies).
        data: the harness's prepared files, so each sandbox sees only its share.
        script: the genome's entry point, run with `python` (the harness's by default).
        command: the whole command instead (e.g. ["bash", "-c", "uv run main.py"]).
        summary: the summary block genomes print (the harness's by default).
        compile_cache: a trusted compile cache every run starts from; each works on a private copy.
        python: the interpreter.
        read: folders besides the harness that every process of a run may read.
        network: whether sandboxes keep the network.
        eval_limit: seconds the scoring of one run may take.
        model_processes: fresh model processes that share a run's scoring (the harness's
            `model_processes`; 1 for a harness from before).
    """

    def __init__(self, *, executor: Executor | None = None, evaluator: Evaluator | None = None,
                 harness: list[Path] = (), data: DataFiles = DataFiles(), script: str = HARNESS_SCRIPT,
                 command: list[str] | None = None, python: str = sys.executable, network: bool = False,
                 eval_limit: float = 300.0, read: tuple[Path, ...] = (), harness_dir: Path | None = None,
                 model_processes: int = 1, summary: SummaryBlock = HARNESS_SUMMARY,
                 compile_cache: Path | None = None):
        self.executor = executor or LocalExecutor()
        self.evaluator = evaluator or SummaryEvaluator()
        self.harness, self.data, self.script, self.python = list(harness), data, script, python
        self.harness_dir = Path(harness_dir) if harness_dir else harness_root(self.harness)
        self.command = list(command) if command else [python, script]
        self.network, self.eval_limit, self.read = network, eval_limit, tuple(Path(p) for p in read)
        self.model_processes, self.summary, self.compile_cache = model_processes, summary, compile_cache

    def run(self, workdir: str | Path, *, log_path: str | Path, env: dict[str, str], timeout: float,
            on_progress: Callable[[float, float], bool | None] | None = None, stop: threading.Event | None = None,
            on_start: Callable[[int], None] | None = None, clock: str = "wall", threads: int = 1,
            limits: Limits | None = None) -> TrialResult:
        """Run the genome in `workdir` and return a TrialResult; never raises because of the genome.

        env:          the trial's environment (see trial_environment).
        timeout:      seconds on the budget clock before the genome is stopped without a result.
        on_progress:  called with (fraction of the budget done, smoothed loss) for each progress
                      line; returning True stops the run and records it as ``pruned``.
        stop:         setting this event kills the run and records it as ``interrupted``.
        on_start:     called with the process id (also its process group id) once it runs.
        clock:        "wall", or "cpu" (CPU seconds of the trial's processes / `threads`).
        limits:       memory, processes, output and disk the trial may use.
        """
        workdir, log_path = Path(workdir), Path(log_path)
        install_harness(workdir, self.harness, self.harness_dir)
        genome = _genome_sources(workdir, self.harness, self.harness_dir)  # before the run: not what it installs (a .venv)
        run = Run(executor=self.executor, python=self.python, workdir=workdir, folder=log_path.parent,
                  env=dict(env), harness=self.harness, data=self.data, device=env.get("EVO_DEVICE", "cpu"),
                  network=self.network, stop=stop, eval_limit=self.eval_limit, read=self.read,
                  harness_dir=self.harness_dir, model_processes=self.model_processes, clock=clock,
                  threads=max(1, threads))
        run.folder.mkdir(parents=True, exist_ok=True)
        compiler_env = run.start_compile_cache(self.compile_cache)
        shutil.rmtree(run.scratch, ignore_errors=True)
        run.scratch.mkdir(parents=True)
        run.env["EVO_SCRATCH"] = str(run.scratch)
        env = {**env, "EVO_OUTPUT": str(run.output), "EVO_SCRATCH": str(run.scratch), "EVO_CLOCK": clock, "EVO_THREADS": str(threads),
               **compiler_env}
        if clock == "cpu":
            # OpenMP threads that spin while waiting for a descheduled sibling burn CPU time without
            # work: on a loaded machine the CPU clock would then run out before the steps are done.
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        limits = limits or Limits()
        limits = Limits(memory_mb=limits.memory_mb, processes=limits.processes, output_bytes=limits.output_bytes,
                        disk_bytes=limits.disk_bytes, disk_paths=(workdir,))
        session = self.evaluator.session(run)
        try:
            output = TrialOutput(summary_keys=self.summary.keys, watch=self.evaluator.watch)
            watch = Watch(timeout=timeout, clock=clock, threads=threads, stop=stop, on_start=on_start,
                          result_in=session.result_in, on_result=session.on_result, limits=limits,
                          on_progress=(lambda p: on_progress(p.fraction, p.loss)) if on_progress else None)
            view = run.training_view(sees_validation=self.evaluator.self_reported)
            env["EVO_STARTED"] = f"{time.time():.6f}"
            execution = supervise(self.executor, self.command, cwd=workdir, env=env, log_path=log_path,
                                  output=output, watch=watch, view=view)
            evaluation = None if execution.start_error else session.evaluate(output, execution)
        finally:
            session.close()
        return self._result(run, output, execution, evaluation, timeout, clock, genome)

    def _result(self, run: Run, output: TrialOutput, execution: Execution, evaluation: Evaluation | None,
                timeout: float, clock: str, genome: list[Path]) -> TrialResult:
        if execution.start_error:
            return TrialResult(TrialStatus.CRASH, error=execution.start_error, wall_seconds=execution.wall_seconds)
        status, error = classify(execution, output, evaluation, timeout=timeout, clock=clock,
                                 self_reported=self.evaluator.self_reported)
        metrics = dict(output.summary)
        if self.evaluator.self_reported:
            metrics.update(evaluation.metrics if evaluation is not None else {})
        else:
            metrics = {(f"reported_{k}" if k in self.summary.measured else k): v for k, v in metrics.items()}
            metrics.update(evaluation.metrics if evaluation is not None else {})
            if execution.result_clock is not None:
                metrics["training_seconds"] = execution.result_clock
            metrics["peak_vram_mb"] = (metrics.get("reported_peak_vram_mb", execution.peak_memory_mb) if run.gpu
                                       else execution.peak_memory_mb)
        metrics.update(peak_memory_mb=execution.peak_memory_mb, cpu_seconds=execution.cpu_seconds)
        provenance = {"sandbox": self.executor.name, "evaluator": self.evaluator.name, "clock": clock,
                      "memory": "reported by the genome" if run.gpu else "measured by the engine",
                      **(evaluation.provenance if evaluation is not None else {})}
        flags = list(dict.fromkeys(flag for path in genome for flag in suspicious(_source_text(run.workdir, path))))
        if flags:
            provenance["suspicious"] = flags
        return TrialResult(status, metrics=metrics, error=error, log_tail="\n".join(output.tail),
                           returncode=execution.returncode, wall_seconds=execution.wall_seconds, provenance=provenance,
                           artifacts=evaluation.artifacts if evaluation is not None else {})


def _genome_sources(workdir: Path, harness: list[Path], root: Path) -> list[Path]:
    """The genome's Python files in a trial's folder: every .py there but the harness's."""
    fixed = {workdir / Path(h).relative_to(root) for h in harness}
    return [p for p in workdir.rglob("*.py") if p not in fixed and ".evo" not in p.parts and ".git" not in p.parts]


def _source_text(workdir: Path, path: Path) -> str:
    """A genome file's text as the trial left it, or "" when it left something else there (a link, a
    named pipe): the engine opens nothing but regular files, and reads at most SOURCE_READ_LIMIT bytes
    (a proposal's files are far smaller)."""
    try:
        with open_regular(workdir, path.relative_to(workdir)) as f:
            return f.read(SOURCE_READ_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return ""


def classify(execution: Execution, output: TrialOutput, evaluation: Evaluation | None, *, timeout: float,
             clock: str = "wall", self_reported: bool = True) -> tuple[str, str]:
    """(status, error) of a run: a score stands first, then what scoring concluded, then how the
    engine stopped the genome, then how it ended."""
    if evaluation is not None and evaluation.ok:
        return TrialStatus.OK, ""
    if evaluation is not None and evaluation.status in (TrialStatus.INVALID, TrialStatus.CRASH, TrialStatus.TIMEOUT,
                                                       TrialStatus.INTERRUPTED):
        return evaluation.status, evaluation.error
    if execution.stopped in (OOM, LIMIT):
        return execution.stopped, execution.limit
    if execution.stopped == PRUNED:
        return TrialStatus.PRUNED, "stopped early by the pruner"
    if execution.stopped == INTERRUPTED:
        return TrialStatus.INTERRUPTED, "stopped by the search (interrupted)"
    if output.diverged or (evaluation is not None and evaluation.status == TrialStatus.DIVERGED):
        return TrialStatus.DIVERGED, output.last_line(prefer="FAIL") or "loss became NaN or exploded"
    if execution.stopped == TIMEOUT:
        what = "budget plus start-up allowance" + (" on the CPU clock" if clock == "cpu" else "")
        return TrialStatus.TIMEOUT, f"no {'result' if self_reported else 'model handed over'} after {timeout:.0f}s ({what})"
    if execution.returncode != 0:
        return TrialStatus.CRASH, output.last_line() or f"exited with code {execution.returncode}"
    if evaluation is not None:
        return evaluation.status, evaluation.error
    if self_reported:
        return TrialStatus.NO_METRIC, "exited without printing a complete summary block"
    return TrialStatus.NO_METRIC, "exited without handing a model over (prepare.save_model)"


def run_trial(workdir: str | Path, *, log_path: str | Path, env: dict[str, str], timeout: float,
              harness: list[Path] = (), on_progress: Callable[[float, float], bool | None] | None = None,
              stop: threading.Event | None = None, on_start: Callable[[int], None] | None = None,
              script: str = HARNESS_SCRIPT, python: str = sys.executable) -> TrialResult:
    """Run `script` in `workdir` with the default executor and evaluator (see `TrialRunner.run`)."""
    return TrialRunner(harness=list(harness), script=script, python=python).run(
        workdir, log_path=log_path, env=env, timeout=timeout, on_progress=on_progress, stop=stop, on_start=on_start)
