"""Running one untrusted command: start it through an executor, watch it, stop it, reap it.

An `Executor` decides how a command starts and what it can touch (a local process group, or
a bubblewrap sandbox). `supervise` is the part every executor shares: it streams the output
into the log and a `TrialOutput`, passes progress on, measures the process tree from the
outside (its budget clock, its memory) and kills the whole tree when the budget runs out,
when a limit is crossed, when the caller asks it to stop, when the pruner says so, or
shortly after the genome's result is in. Nothing here believes what the process prints
about its own time or memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evo.runner._output import Progress, TrialOutput
from population.store import TrialStatus

# Seconds a process may take to exit on its own once its result is in. Past that it is
# killed: the interpreter's teardown can hold a GPU for 10-14 s for nothing.
EXIT_GRACE = 2.0
POLL_SECONDS = 0.05
MEASURE_SECONDS = 0.2   # how often the process tree is measured
DISK_SECONDS = 2.0      # how often the writable folders are measured

# Why the engine stopped a process (None in Execution.stopped: it exited by itself).
# All but FINISHED are also the status the trial then gets.
FINISHED = "finished"
PRUNED, INTERRUPTED, TIMEOUT, OOM, LIMIT = (TrialStatus.PRUNED, TrialStatus.INTERRUPTED, TrialStatus.TIMEOUT,
                                            TrialStatus.OOM, TrialStatus.LIMIT)
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Limits:
    """What a trial may use, measured by the engine (None: no limit)."""

    memory_mb: float | None = None           # resident memory of the whole process tree
    processes: int = 512                     # processes alive at once
    output_bytes: int = 20 << 20             # bytes printed
    disk_bytes: int | None = None            # bytes in the writable folders
    disk_paths: tuple[Path, ...] = ()


@dataclass
class Execution:
    """How a process ended, as the engine measured it."""

    returncode: int | None
    wall_seconds: float
    stopped: str | None = None        # FINISHED (released after its result), PRUNED, INTERRUPTED, TIMEOUT, OOM, LIMIT
    start_error: str = ""             # set when the command could not be started at all
    limit: str = ""                   # which limit was crossed (OOM, LIMIT)
    clock_seconds: float = 0.0        # the budget clock when the process ended
    result_clock: float | None = None  # the budget clock when its result came in
    cpu_seconds: float = 0.0          # CPU time of the whole tree
    peak_memory_mb: float = 0.0       # largest resident memory of the whole tree


class Executor:
    """Base class: starts a trial's command in its own process group.

    Subclasses decide the isolation (`name`); every process they start leads a new process
    group, so `kill` reaches everything it spawned. `view` says what a sandbox may see;
    executors without a sandbox ignore it."""

    name = "none"

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str], view=None, pass_fds=(),
              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) -> subprocess.Popen:
        raise NotImplementedError

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class Watch:
    """What `supervise` reacts to besides the process itself.

    timeout:      seconds on the budget clock before the process is killed without a result.
    clock:        "wall", or "cpu": CPU seconds of the process tree divided by `threads`
                  (a busy machine then slows the clock instead of shortening the trial).
    stop:         setting it kills the process (recorded as interrupted).
    on_progress:  called with each Progress; returning True prunes the trial.
    on_start:     called with the process id (also its group id) once it runs.
    result_in:    whether the genome's result is complete (then the device is freed after `grace`).
    on_result:    called once, the moment `result_in` first holds.
    """

    timeout: float
    clock: str = "wall"
    threads: int = 1
    stop: threading.Event | None = None
    on_progress: Callable[[Progress], bool | None] | None = None
    on_start: Callable[[int], None] | None = None
    result_in: Callable[[TrialOutput], bool] = lambda output: output.complete
    on_result: Callable[[], None] | None = None
    grace: float = EXIT_GRACE
    limits: Limits = field(default_factory=Limits)

    def wall_limit(self) -> float:
        """Wall seconds after which a process is stopped whatever its clock says: a CPU clock does
        not advance while a process sleeps or waits, so it needs this backstop."""
        return self.timeout if self.clock == "wall" else max(3 * self.timeout, self.timeout + 60)


def proc_stats() -> dict[int, list[str]]:
    """The fields of /proc/PID/stat after the command name, of every process."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            stats[int(name)] = text[text.rindex(")") + 2:].split()
    return stats


class _Tree:
    """The process tree under one root pid, measured through /proc."""

    def __init__(self, root: int, clock: str, threads: int):
        self.root, self.clock, self.threads = root, clock, max(1, threads)
        self.t0 = time.monotonic()
        self.cpu = 0.0
        self.memory_mb = 0.0
        self.peak_mb = 0.0
        self.count = 0

    def measure(self, stats: dict[int, list[str]] | None = None) -> None:
        """Measure the tree now (from `stats`, a `proc_stats()` taken for several trees at once)."""
        stats = proc_stats() if stats is None else stats
        members, frontier = set(), [self.root]
        children: dict[int, list[int]] = {}
        for pid, fields in stats.items():
            children.setdefault(int(fields[1]), []).append(pid)
        while frontier:
            pid = frontier.pop()
            if pid in stats and pid not in members:
                members.add(pid)
                frontier.extend(children.get(pid, ()))
        if not members:
            return
        # utime, stime, cutime, cstime: a reaped child's time moves into its parent's c*time.
        cpu = sum(sum(int(stats[p][i]) for i in (11, 12, 13, 14)) for p in members) / _TICK
        self.cpu = max(self.cpu, cpu)
        self.memory_mb = (sum(int(stats[p][21]) for p in members) * _PAGE + tmpfs_bytes(members)) / 2**20
        self.peak_mb = max(self.peak_mb, self.memory_mb)
        self.count = len(members)

    def seconds(self) -> float:
        """The budget clock: wall seconds, or CPU seconds divided by the trial's threads."""
        if self.clock == "cpu":
            return self.cpu / self.threads
        return time.monotonic() - self.t0


def tmpfs_bytes(pids) -> int:
    """Bytes held in the memory-backed file systems (tmpfs: a sandbox's /tmp, HOME, /dev/shm) that the
    mount namespaces of `pids` have and the engine's does not: files there are memory the trial
    holds, which no process's resident size shows. Read through /proc, opening nothing of the trial's."""
    seen_namespaces, seen_devices, total = {_namespace("self")}, set(), 0
    for point in _tmpfs_mounts("self"):  # the machine's own (its /dev/shm, /run), which a whole-system view shows too
        try:
            seen_devices.add(os.stat(point).st_dev)
        except OSError:
            pass
    for pid in pids:
        namespace = _namespace(pid)
        if namespace in seen_namespaces:
            continue
        seen_namespaces.add(namespace)
        for point in _tmpfs_mounts(pid):
            path = f"/proc/{pid}/root{point}"
            try:
                device, s = os.stat(path).st_dev, os.statvfs(path)
            except OSError:
                continue
            if device not in seen_devices:  # one file system, however often it is mounted
                seen_devices.add(device)
                total += (s.f_blocks - s.f_bfree) * s.f_frsize
    return total


def _namespace(pid) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def _tmpfs_mounts(pid) -> list[str]:
    """Where a process's mount namespace has tmpfs file systems mounted (none when it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split()
        if "-" in fields and fields[fields.index("-") + 1] == "tmpfs":
            points.append(fields[4].encode().decode("unicode_escape"))  # mountinfo writes a space as \040
    return points


def folder_bytes(paths: tuple[Path, ...]) -> int:
    total = 0
    for root in paths:
        for folder, _, files in os.walk(root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(folder, f)).st_size
                except OSError:
                    pass
    return total


def supervise(executor: Executor, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
              output: TrialOutput, watch: Watch, view=None) -> Execution:
    """Run `argv` to its end under `watch`; never raises because of what the process did."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        try:
            proc = executor.start(argv, cwd=cwd, env=env, view=view)
        except OSError as e:
            return Execution(None, time.monotonic() - t0, start_error=f"could not start {argv[-1]}: {e}")
        _call(watch.on_start, proc.pid, log, "start")
        tree = _Tree(proc.pid, watch.clock, watch.threads)
        flags = {"prune": threading.Event(), "flood": threading.Event()}
        reader = threading.Thread(target=_read, args=(proc, output, log, watch, flags), daemon=True)
        reader.start()
        state = _Waiting(proc, output, watch, tree, flags)
        stopped = state.wait()
        executor.kill(proc)  # also reaps grandchildren the child left behind
        returncode = proc.wait()
        reader.join(timeout=5)
        wall = time.monotonic() - t0
        if stopped and stopped != FINISHED:
            log.write(f"[evo] stopped: {stopped}{': ' + state.limit if state.limit else ''} after {wall:.1f}s\n")
    tree.measure()
    return Execution(returncode, wall, stopped, limit=state.limit, clock_seconds=round(tree.seconds(), 3),
                     result_clock=state.result_clock, cpu_seconds=round(tree.cpu, 3),
                     peak_memory_mb=round(tree.peak_mb, 1))


def _read(proc: subprocess.Popen, output: TrialOutput, log, watch: Watch, flags: dict) -> None:
    printed = 0
    for raw in proc.stdout:
        printed += len(raw)
        if printed > watch.limits.output_bytes:
            flags["flood"].set()  # stop writing the log; the watcher kills the process
            for _ in proc.stdout:
                pass
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        log.write(line + "\n")
        log.flush()
        progress = output.feed(line, now=time.monotonic())
        if progress is not None and watch.on_progress is not None and not flags["prune"].is_set():
            if _call(watch.on_progress, progress, log, "progress"):
                flags["prune"].set()


class _Waiting:
    """The watcher's loop: poll until the process exits (None) or must be stopped (the reason)."""

    def __init__(self, proc, output, watch: Watch, tree: _Tree, flags: dict):
        self.proc, self.output, self.watch, self.tree, self.flags = proc, output, watch, tree, flags
        self.limit = ""
        self.result_at: float | None = None
        self.result_clock: float | None = None

    def wait(self) -> str | None:
        measured = disked = 0.0
        while self.proc.poll() is None:
            now = time.monotonic()
            if now - measured >= MEASURE_SECONDS:
                self.tree.measure()
                measured = now
            crossed = self._crossed(now - disked >= DISK_SECONDS)
            if now - disked >= DISK_SECONDS:
                disked = now
            reason = self._decide(now, crossed)
            if reason:
                return reason
            time.sleep(POLL_SECONDS)
        return None

    def _crossed(self, check_disk: bool) -> str | None:
        """OOM or LIMIT with `self.limit` set, or None."""
        limits, tree = self.watch.limits, self.tree
        if limits.memory_mb is not None and tree.memory_mb > limits.memory_mb:
            self.limit = f"used {tree.memory_mb:.0f} MB of memory, over the slot's {limits.memory_mb:.0f} MB"
            return OOM
        if tree.count > limits.processes:
            self.limit = f"ran {tree.count} processes at once, over the limit of {limits.processes}"
            return LIMIT
        if self.flags["flood"].is_set():
            self.limit = f"printed more than {limits.output_bytes >> 20} MB"
            return LIMIT
        if check_disk and limits.disk_bytes is not None and folder_bytes(limits.disk_paths) > limits.disk_bytes:
            self.limit = f"wrote more than {limits.disk_bytes >> 20} MB into its folder"
            return LIMIT
        return None

    def _decide(self, now: float, crossed: str | None) -> str | None:
        watch = self.watch
        stop_asked = watch.stop is not None and watch.stop.is_set()
        if self.result_at is None and watch.result_in(self.output):
            self.result_at, self.result_clock = now, round(self.tree.seconds(), 3)
            if watch.on_result is not None:
                watch.on_result()
        if self.result_at is not None:
            # The result is in and stands, whatever is asked now: free the device after a
            # short grace for a clean exit, or at once on a stop, a limit or the timeout.
            if now - self.result_at > watch.grace or stop_asked or crossed or self.tree.seconds() > watch.timeout:
                return FINISHED
            return None
        if crossed:
            return crossed
        if self.flags["prune"].is_set():
            return PRUNED
        if stop_asked:
            return INTERRUPTED
        if self.tree.seconds() > watch.timeout or now - self.tree.t0 > watch.wall_limit():
            return TIMEOUT
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
