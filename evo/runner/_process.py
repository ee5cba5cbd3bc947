"""Running one untrusted command: start it through an executor, watch it, stop it, reap it.

An `Executor` decides how a command starts and what it can touch (today: a local
process group; the sandbox adds its own). `supervise` is the part every executor shares:
it streams the output into the log and a `TrialOutput`, passes progress on, and kills
the whole process group when the budget runs out, when the caller asks it to stop, when
the pruner says so, or shortly after the genome's result is in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evo.runner._output import Progress, TrialOutput

# Seconds a child may take to exit on its own once its result is in. Past that it is
# killed: the interpreter's teardown can hold a GPU for 10-14 s for nothing.
EXIT_GRACE = 2.0
POLL_SECONDS = 0.05

# Why the engine stopped a process (None in Execution.stopped: it exited by itself).
FINISHED, PRUNED, INTERRUPTED, TIMEOUT = "finished", "pruned", "interrupted", "timeout"


@dataclass
class Execution:
    """How a process ended."""

    returncode: int | None
    wall_seconds: float
    stopped: str | None = None        # FINISHED (released after its result), PRUNED, INTERRUPTED, TIMEOUT
    start_error: str = ""             # set when the command could not be started at all


class Executor:
    """Base class: starts a trial's command in its own process group.

    Subclasses decide the isolation (see `name`); every process they start must be the
    leader of a new process group, so `kill` reaches everything it spawned."""

    name = "none"

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        raise NotImplementedError

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class LocalExecutor(Executor):
    """Runs the command as a plain child process in a new session (its own process group)."""

    name = "none"

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)


@dataclass
class Watch:
    """What `supervise` reacts to besides the process itself.

    timeout:      seconds of wall time before the process group is killed.
    stop:         setting it kills the process (recorded as interrupted).
    on_progress:  called with each Progress; returning True prunes the trial.
    on_start:     called with the process id (also its group id) once it runs.
    result_in:    whether the genome's result is complete (then the device is freed after EXIT_GRACE).
    """

    timeout: float
    stop: threading.Event | None = None
    on_progress: Callable[[Progress], bool | None] | None = None
    on_start: Callable[[int], None] | None = None
    result_in: Callable[[TrialOutput], bool] = lambda output: output.complete


def supervise(executor: Executor, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
              output: TrialOutput, watch: Watch) -> Execution:
    """Run `argv` to its end under `watch`; never raises because of what the process did."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        try:
            proc = executor.start(argv, cwd=cwd, env=env)
        except OSError as e:
            return Execution(None, time.monotonic() - t0, start_error=f"could not start {argv[-1]}: {e}")
        _call(watch.on_start, proc.pid, log, "start")
        prune = threading.Event()
        reader = threading.Thread(target=_read, args=(proc, output, log, watch, prune), daemon=True)
        reader.start()
        stopped = _wait(proc, output, watch, prune, t0)
        executor.kill(proc)  # also reaps grandchildren the child left behind
        returncode = proc.wait()
        reader.join(timeout=5)
        wall = time.monotonic() - t0
        if stopped and stopped != FINISHED:
            log.write(f"[evo] stopped: {stopped} after {wall:.1f}s\n")
    return Execution(returncode, wall, stopped)


def _read(proc: subprocess.Popen, output: TrialOutput, log, watch: Watch, prune: threading.Event) -> None:
    for raw in proc.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        log.write(line + "\n")
        log.flush()
        progress = output.feed(line, now=time.monotonic())
        if progress is not None and watch.on_progress is not None and not prune.is_set():
            if _call(watch.on_progress, progress, log, "progress"):
                prune.set()


def _wait(proc: subprocess.Popen, output: TrialOutput, watch: Watch, prune: threading.Event, t0: float) -> str | None:
    """Poll until the process exits (None) or must be stopped (the reason)."""
    while proc.poll() is None:
        now = time.monotonic()
        stop_asked = watch.stop is not None and watch.stop.is_set()
        if watch.result_in(output):
            # The result is in and stands, whatever is asked now: free the device after a
            # short grace for a clean exit, or at once on a stop or the timeout.
            since = now - output.complete_at if output.complete_at is not None else 0.0
            if since > EXIT_GRACE or stop_asked or now - t0 > watch.timeout:
                return FINISHED
        elif prune.is_set():
            return PRUNED
        elif stop_asked:
            return INTERRUPTED
        elif now - t0 > watch.timeout:
            return TIMEOUT
        time.sleep(POLL_SECONDS)
    return None


def _call(callback, value, log, what: str):
    """Call a caller's callback; a failing one must not take the trial down with it."""
    if callback is None:
        return None
    try:
        return callback(value)
    except Exception as e:
        log.write(f"[evo] {what} callback failed: {e!r}\n")
        return None
