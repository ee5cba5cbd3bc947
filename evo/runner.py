"""Run one genome under the fixed budget and classify what happened.

The runner is the only part of the engine that executes mutated code. It copies the
fixed harness next to the genome, starts ``python train.py`` in a process group of its
own with a scrubbed environment, streams the output to a log, reports progress, and
kills the whole group when the budget (plus start-up grace) runs out, when the caller
asks it to stop, or as soon as the summary block is complete. It never raises because
of what the child did.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The summary block train.py prints after '---', in order; the last key completes it.
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")
STATUSES = ("ok", "crash", "timeout", "diverged", "no_metric", "pruned", "interrupted")

_PROGRESS = re.compile(r"^step\s+\d+\s*\|\s*([\d.]+)%\s*\|\s*loss\s+(\S+)")
_SUMMARY = re.compile(r"^(\w+):\s+(\S+)\s*$")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# Seconds a child may take to exit on its own once its summary block is complete. Past that
# it is killed: the interpreter's teardown can hold a GPU for 10-14 s for nothing.
EXIT_GRACE = 2.0
TAIL_LINES = 30


@dataclass
class TrialResult:
    """What one run of train.py produced."""

    status: str                      # one of STATUSES
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""                  # one line saying what went wrong, empty when ok
    log_tail: str = ""               # the last lines of the log
    returncode: int | None = None
    wall_seconds: float = 0.0

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


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_trial(workdir: str | Path, *, log_path: str | Path, env: dict[str, str], timeout: float,
              harness: list[Path] = (), on_progress: Callable[[float, float], bool | None] | None = None,
              stop: threading.Event | None = None, on_start: Callable[[int], None] | None = None,
              script: str = "train.py", python: str = sys.executable) -> TrialResult:
    """Run `script` in `workdir` and return a TrialResult; never raises because of the child.

    env:          the child's whole environment (see trial_environment).
    timeout:      seconds of wall time before the process group is killed (budget + grace).
    on_progress:  called with (fraction of the budget done, smoothed loss) for each progress
                  line; returning True stops the child and records it as ``pruned``.
    stop:         setting this event kills the child and records it as ``interrupted``.
    on_start:     called with the child's pid (also its process group id) once it runs.
    """
    workdir, log_path = Path(workdir), Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    install_harness(workdir, list(harness))
    t0 = time.monotonic()
    summary: dict[str, float] = {}
    state = {"in_summary": False, "diverged": False, "prune": False, "complete_at": None}
    tail: list[str] = []

    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        try:
            proc = subprocess.Popen([python, script], cwd=workdir, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            return TrialResult("crash", error=f"could not start {script}: {e}", wall_seconds=time.monotonic() - t0)

        def read_output():
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                del tail[:-TAIL_LINES]
                _parse_line(line)

        def _parse_line(line):
            if line.startswith("FAIL"):
                state["diverged"] = True
            if line.strip() == "---":
                state["in_summary"] = True
                return
            if state["in_summary"]:
                m = _SUMMARY.match(line)
                if m and m.group(1) in SUMMARY_KEYS:
                    try:
                        summary[m.group(1)] = float(m.group(2))
                    except ValueError:
                        summary[m.group(1)] = math.nan
                    if m.group(1) == SUMMARY_KEYS[-1]:
                        state["complete_at"] = time.monotonic()
                return
            m = _PROGRESS.match(line)
            if m:
                try:
                    fraction, loss = float(m.group(1)) / 100.0, float(m.group(2))
                except ValueError:
                    return
                if not math.isfinite(loss):
                    state["diverged"] = True
                elif on_progress is not None and not state["prune"]:
                    try:
                        state["prune"] = bool(on_progress(fraction, loss))
                    except Exception as e:  # a failing callback must not take the trial down with it
                        log.write(f"[evo] progress callback failed: {e!r}\n")

        if on_start is not None:
            try:
                on_start(proc.pid)
            except Exception as e:
                log.write(f"[evo] start callback failed: {e!r}\n")
        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        reason = None
        while proc.poll() is None:
            now = time.monotonic()
            if state["complete_at"] is not None:
                # The result is in and stands, whatever is asked now: free the device after a
                # short grace for a clean exit, or at once on a stop or the timeout.
                if now - state["complete_at"] > EXIT_GRACE or (stop is not None and stop.is_set()) or now - t0 > timeout:
                    reason = "finished"
            elif state["prune"]:
                reason = "pruned"
            elif stop is not None and stop.is_set():
                reason = "interrupted"
            elif now - t0 > timeout:
                reason = "timeout"
            if reason:
                break
            time.sleep(0.05)
        _kill_group(proc)  # also reaps grandchildren the child left behind
        returncode = proc.wait()
        reader.join(timeout=5)
        wall = time.monotonic() - t0
        if reason and reason != "finished":
            log.write(f"[evo] stopped: {reason} after {wall:.1f}s\n")

    result = TrialResult("ok", metrics=summary, log_tail="\n".join(tail), returncode=returncode, wall_seconds=wall)
    val = summary.get("val_bpb")
    complete = state["complete_at"] is not None or (val is not None and reason is None)
    if val is not None and complete and math.isfinite(val):
        result.status = "ok"
    elif reason == "pruned":
        result.status, result.error = "pruned", "stopped early by the pruner"
    elif reason == "interrupted":
        result.status, result.error = "interrupted", "stopped by the search (interrupted)"
    elif state["diverged"] or (val is not None and not math.isfinite(val)):
        result.status, result.error = "diverged", _last_line(tail, prefer="FAIL") or "loss became NaN or exploded"
    elif reason == "timeout":
        result.status, result.error = "timeout", f"no result after {timeout:.0f}s (budget plus start-up grace)"
    elif returncode != 0:
        result.status, result.error = "crash", _last_line(tail) or f"exited with code {returncode}"
    else:
        result.status, result.error = "no_metric", "exited without printing a complete summary block"
    return result


def _last_line(lines: list[str], prefer: str | None = None) -> str:
    if prefer:
        for line in reversed(lines):
            if line.startswith(prefer):
                return line.strip()
    for line in reversed(lines):
        if line.strip() and not line.startswith("[evo]"):
            return line.strip()[:300]
    return ""
