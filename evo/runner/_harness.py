"""Scoring by the harness, in processes the genome never controls.

Training ends when the genome calls `prepare.save_model`, which writes the weights and the
name of the function that rebuilds the model into the genome's output folder. The moment
that file appears, the session moves it out of the genome's reach (into the trial's folder,
which no sandbox sees), so nothing the genome does afterwards changes what is scored.

Then sandboxed processes, started while the genome trained so their imports cost no time
after it:

- *model processes* (`prepare.py --serve-model`, untrusted, as many as the harness asks
  for): each imports the genome, rebuilds the model and turns input tokens into logits in a
  buffer of its own. Each has its own sandbox and its own compile cache, so no two share
  memory, a folder or a cache: an answer that depends on what its process saw before (a memo
  of earlier batches, a calibration on the first) disagrees with the same rows answered by
  another process;
- the *scorer* (`prepare.py --score`, trusted) never imports the genome, alone holds the
  validation split and its targets, spreads the batches and the probes over the model
  processes (never a probe to the process that answered its original) and prints val_bpb
  with a verdict.

Each model process talks to the scorer over a socket pair the engine hands both; the buffer
is a memfd (CUDA IPC on a GPU) that the scorer creates and passes over the socket.

All genome code works within one budget: the start-up of a model process, before it
imports the genome, is measured on the trial's own clock as the reference start-up every
genome pays, and a genome that hands its model over later than the budget plus a multiple
of that (training in the start-up allowance) is `invalid`; the model processes together may
use only a share of the budget's compute to score (training there is stopped and `invalid`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from evo.runner._evaluate import Evaluation, Evaluator, Session
from evo.runner._output import SummaryBlock, TrialOutput
from evo.runner._process import MEASURE_SECONDS, Execution, Executor, _Tree, proc_stats
from evo.runner._sandbox import View
from population.store import TrialStatus

# The harness contract as the runner sees it: the genome's entry point, and the summary block it
# prints; with the harness's scorer the engine measures the score, the training time and the memory.
HARNESS_SCRIPT = "train.py"
HARNESS_SUMMARY = SummaryBlock(keys=("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                                     "total_tokens_M", "num_steps", "num_params_M", "depth"),
                               measured=("val_bpb", "training_seconds", "peak_vram_mb"))
EVAL_LOG_LIMIT = 2 << 20  # bytes of the model process's and the scorer's output kept in eval.log
SCORE_PREFIX = "EVO_SCORE "
STARTED_LINE = "EVO_MODEL_STARTED"  # a model process's line once its harness start-up is done
# The start-up a genome may spend before its budget counts: a multiple of the measured reference
# start-up (python, numpy, torch and a first optimizer in a sandbox) plus a moment for the
# tokenizer, the data, the model and a first step, never more than the profile's allowance. On a
# GPU the profile's allowance also covers a cold compile and stands as it is.
STARTUP_FACTOR = 1.5
STARTUP_SLACK = 1.0
# Compute the model processes together may use to rebuild the model and answer every batch, on
# the trial's clock: a share of the training budget (an honest forward pass over the scored
# tokens costs a few percent of it) and a floor for the rebuild of each process.
SCORING_SHARE = 0.25
SCORING_FLOOR = 2.0


def harness_root(harness: list[Path]) -> Path:
    """The folder of some harness files when none is given: their common folder (a search's
    runner is given its harness folder, which may hold nothing but subfolders)."""
    return Path(os.path.commonpath([str(Path(h).parent) for h in harness])) if harness else Path(".")


@dataclass(frozen=True)
class DataFiles:
    """The harness's prepared files, by who may read them.

    tokenizer: every process; train: the genome while it trains; val: the scorer alone.
    root: the whole data cache, for a harness that does not say which file is which (it
        scores itself, so its training process must see the validation split anyway).
    sources: what the files were made from (raw text, an installed package that ships it, the
        data cache): masked in every sandbox, wherever a system, interpreter or --read folder
        would show it; the files above are shown on top, each to its part."""

    tokenizer: tuple[Path, ...] = ()
    train: tuple[Path, ...] = ()
    val: tuple[Path, ...] = ()
    root: Path | None = None
    sources: tuple[Path, ...] = ()

    @classmethod
    def from_describe(cls, facts: dict, cache_root: Path | None) -> "DataFiles":
        files = facts.get("data_files")
        sources = tuple(Path(p) for p in facts.get("data_sources", ()))
        if not files:
            return cls(root=cache_root, sources=tuple(p for p in sources if p != cache_root))
        if cache_root is not None and cache_root not in sources:
            sources += (cache_root,)
        return cls(**{k: tuple(Path(p) for p in files.get(k, ())) for k in ("tokenizer", "train", "val")},
                   sources=sources)


@dataclass
class Run:
    """What an evaluation session needs to know about one run of one genome."""

    executor: Executor
    python: str
    workdir: Path           # the genome's checkout (writable in its training sandbox)
    folder: Path            # the trial's folder in the search: never visible to a sandbox
    env: dict[str, str]     # the allowed environment plus the trial's settings
    harness: list[Path]     # the search's copy of the fixed harness
    data: DataFiles
    device: str = "cpu"
    network: bool = False
    stop: threading.Event | None = None
    eval_limit: float = 300.0
    read: tuple[Path, ...] = ()  # folders besides the harness every process of the run may read
    model_processes: int = 1     # fresh model processes that share the scoring (the harness's `model_processes`)
    clock: str = "wall"          # the trial's budget clock ("wall" or "cpu") and its threads
    threads: int = 1
    harness_dir: Path | None = None  # the folder the harness files are relative to (default: their common one)

    @property
    def harness_base(self) -> Path:
        return self.harness_dir or harness_root(self.harness)

    @property
    def output(self) -> Path:
        """Where the genome writes its model (prepare.save_model, $EVO_OUTPUT)."""
        return self.workdir / ".evo" / "output"

    @property
    def handed(self) -> Path:
        """Where the handed-over model is kept for scoring, out of the genome's reach."""
        return self.folder / "model"

    @property
    def scratch(self) -> Path:
        """A writable folder for the run and its evaluation ($EVO_SCRATCH), emptied before each run;
        never part of the genome (only the mutable files are)."""
        return self.workdir / ".evo" / "scratch"

    @property
    def compile_cache(self) -> Path:
        """The run's private copy of the compile cache."""
        return private_compile_cache(self.workdir)

    def start_compile_cache(self, trusted: Path | None) -> dict[str, str]:
        """Give the run its own copy of the trusted compile cache (what a trial writes there is never
        seen by another trial: a shared cache would be a channel between them); return the environment
        that points torch's compiler at it."""
        shutil.rmtree(self.compile_cache, ignore_errors=True)
        if trusted is not None and trusted.is_dir() and any(trusted.iterdir()):
            shutil.copytree(trusted, self.compile_cache, symlinks=True)
        else:
            self.compile_cache.mkdir(parents=True, exist_ok=True)
        return {"TORCHINDUCTOR_CACHE_DIR": str(self.compile_cache), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    def training_view(self, *, sees_validation: bool) -> View:
        data = self.data
        read = [self.workdir / ".git", *data.tokenizer, *data.train]
        if sees_validation:
            read += [*data.val]
        if data.root is not None:
            read.append(data.root)
        return View(write=(self.workdir,), read=(*read, *self.read), place=self._harness_over_genome(),
                    network=self.network, gpu=self.gpu, masked=data.sources)

    def evaluation_view(self) -> View:
        """A trusted evaluation command's view: the trial's folder, read-only, and the extra folders."""
        return View(read=(self.workdir, *self.read), place=self._harness_over_genome(), gpu=self.gpu,
                    scratch=(self.scratch,), masked=self.data.sources)

    def model_cache(self, index: int) -> Path:
        """Model process `index`'s own compile cache, in the trial's folder (no sandbox of the run sees
        another's): a shared cache would let one process leave notes for the next."""
        return self.folder / f"model-{index}-cache"

    def model_view(self, index: int = 0) -> View:
        cache = self.model_cache(index)
        shutil.rmtree(cache, ignore_errors=True)
        if self.compile_cache.is_dir():  # the trusted cache the run started from, before the genome wrote to it
            shutil.copytree(self.compile_cache, cache, symlinks=True)
        cache.mkdir(parents=True, exist_ok=True)
        return View(write=(cache,), read=(self.workdir, self.handed), place=self._harness_over_genome(), gpu=self.gpu,
                    masked=self.data.sources)

    def scorer_view(self) -> View:
        data = self.data
        # The handed-over weights too: the scorer counts the values they hold (the model's size).
        return View(read=(self.harness_base, *data.tokenizer, *data.val, self.handed), gpu=self.gpu,
                    masked=data.sources)

    def _harness_over_genome(self) -> tuple[tuple[Path, Path], ...]:
        """Each harness file bound read-only over its copy in the genome's folder."""
        return tuple((h, self.workdir / h.relative_to(self.harness_base)) for h in self.harness)


def private_compile_cache(workdir: Path) -> Path:
    """Where a run in `workdir` keeps its private copy of the compile cache."""
    return Path(workdir) / ".evo" / "inductor-cache"


def open_regular(root: Path, relative: Path):
    """The regular file `root`/`relative`, opened for reading without following a link anywhere below
    `root` and without blocking on a pipe or a device (what a trial leaves is never trusted).
    OSError otherwise, its strerror saying what was found there."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts[:-1]:
            fd, parent = _open_below(part, os.O_DIRECTORY, fd), fd
            os.close(parent)
        source = _open_below(relative.name, os.O_NONBLOCK, fd)
    finally:
        os.close(fd)
    kind = os.fstat(source).st_mode
    if not stat.S_ISREG(kind):
        os.close(source)
        raise OSError(errno.EINVAL, "a named pipe" if stat.S_ISFIFO(kind) else "a special file")
    return os.fdopen(source, "rb")


def _open_below(name: str, flags: int, dir_fd: int) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(f"/proc/self/fd/{dir_fd}/{name}"):
            raise OSError(errno.ELOOP, "a symbolic link") from None
        raise


def copy_regular(root: Path, relative: Path, target: Path) -> None:
    """Copy the regular file `root`/`relative` to `target` (see `open_regular`)."""
    with open_regular(root, relative) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


class HarnessEvaluator(Evaluator):
    """Scores the model the genome handed over with the harness's scorer (see the module docstring)."""

    name = "harness"
    self_reported = False

    def session(self, run: Run) -> Session:
        return _HarnessSession(run)


class _HarnessSession(Session):
    def __init__(self, run: Run):
        self.run = run
        shutil.rmtree(run.output, ignore_errors=True)
        shutil.rmtree(run.handed, ignore_errors=True)
        run.handed.mkdir(parents=True)  # exists before the model processes' sandboxes bind it
        self.handed_over = False
        self.refused = ""  # why the handed-over files were not taken (a link, a pipe), or ""
        self.log = open(run.folder / "eval.log", "wb")
        self.lock = threading.Lock()
        self.logged = 0
        env = {**run.env, "EVO_OUTPUT": str(run.handed)}
        # The model processes answer at the same time: each gets its share of the trial's threads.
        share = str(max(1, run.threads // max(1, run.model_processes)))
        model_env = {**env, "OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share, "OMP_WAIT_POLICY": "PASSIVE"}
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(max(1, run.model_processes))]
        self.models: list[subprocess.Popen] = []
        self.trees: list[tuple[_Tree, float]] = []  # each model process's tree and when it was started
        self.started: dict[int, tuple[float, float]] = {}  # pid -> (its start-up on the trial's clock, its CPU then)
        try:
            for i, (_, theirs) in enumerate(pairs):
                # -P: the genome's folder is not on the import path until the harness puts it there,
                # so the start-up measured before that runs harness code only.
                t0 = time.monotonic()
                proc = run.executor.start(
                    [run.python, "-P", "prepare.py", "--serve-model"], cwd=run.workdir, view=run.model_view(i),
                    env={**model_env, "EVO_EVAL_SOCKET": str(theirs.fileno()), "TORCHINDUCTOR_CACHE_DIR": str(run.model_cache(i)),
                         **({"EVO_REFERENCE_STARTUP": "1"} if i == 0 else {})}, pass_fds=[theirs.fileno()])
                self.models.append(proc)
                self.trees.append((_Tree(proc.pid, run.clock, run.threads), t0))
            fds = [ours.fileno() for ours, _ in pairs]
            self.scorer = run.executor.start(
                [run.python, "prepare.py", "--score"], cwd=run.harness_base, view=run.scorer_view(),
                env={**env, "EVO_EVAL_SOCKET": str(fds[0]), "EVO_EVAL_SOCKETS": ",".join(map(str, fds))},
                pass_fds=fds, stdin=subprocess.PIPE)
        finally:
            for ours, theirs in pairs:
                ours.close()
                theirs.close()
        self.score_line = ""
        self.drains = [threading.Thread(target=self._drain, args=(p, f"[model {i}] ".encode() if len(self.models) > 1
                                                                  else b"[model] "), daemon=True)
                       for i, p in enumerate(self.models)]
        self.drains.append(threading.Thread(target=self._drain, args=(self.scorer, b"[scorer] "), daemon=True))
        for t in self.drains:
            t.start()

    def _drain(self, proc: subprocess.Popen, tag: bytes) -> None:
        for line in proc.stdout:
            if proc is self.scorer and line.startswith(SCORE_PREFIX.encode()):
                self.score_line = line.decode(errors="replace")[len(SCORE_PREFIX):]
                continue
            if proc is not self.scorer and line.strip() == STARTED_LINE.encode() and proc.pid not in self.started:
                self.started[proc.pid] = self._startup_of(self.models.index(proc))
                continue
            with self.lock:
                if self.logged < EVAL_LOG_LIMIT:
                    self.log.write(tag + line)
                    self.logged += len(line)

    def _startup_of(self, index: int) -> tuple[float, float]:
        """Model process `index`'s start-up so far, counted as the trial's clock counts (CPU time of its
        sandbox over the trial's threads, or wall time since it was started), and its CPU seconds."""
        tree, t0 = self.trees[index]
        tree.measure()
        return (tree.cpu / tree.threads if self.run.clock == "cpu" else time.monotonic() - t0), tree.cpu

    def result_in(self, output: TrialOutput) -> bool:
        return os.path.lexists(self.run.output / "model.json")  # a link counts as handed over (and is refused)

    def on_result(self) -> None:
        """Copy the handed-over files out of the genome's reach at once: later writes do not count.

        A copy, not a move: a moved link still points into the genome's folder, and a moved file
        is still the inode an open descriptor of the genome writes to. Only regular files are
        taken, opened without following a link anywhere below the genome's folder."""
        for name in ("model.json", "model.pt"):  # model.json is written last, so model.pt is complete
            try:
                copy_regular(self.run.workdir, self.run.output.relative_to(self.run.workdir) / name,
                             self.run.handed / name)
            except FileNotFoundError:
                return  # no model after all: scored as nothing handed over
            except OSError as e:
                self.refused = f"handed over {name} as {e.strerror}, not a regular file (save_model writes those)"
                return
        self.handed_over = True

    def evaluate(self, output: TrialOutput, execution: Execution) -> Evaluation | None:
        if self.refused:
            return Evaluation(TrialStatus.INVALID, error=self.refused, provenance={"evaluator": "harness"})
        if not self.handed_over:
            return None
        t0 = time.monotonic()
        try:
            self.scorer.stdin.write(b"go\n")
            self.scorer.stdin.flush()
        except OSError:
            pass  # the scorer died while waiting: its log says why
        stopped = self._wait_for_scorer()
        seconds = time.monotonic() - t0
        provenance = {"evaluator": "harness", "eval_wall_seconds": round(seconds, 3),
                      "model_processes": len(self.models), "scoring_compute": round(self._scoring_compute(), 3)}
        budget = self._budget(execution, output)
        provenance.update({k: v for k, v in budget.items() if k != "over"})
        if stopped:
            return Evaluation(stopped[0], error=stopped[1], provenance=provenance)
        try:
            result = json.loads(self.score_line)
        except ValueError:
            return Evaluation(TrialStatus.CRASH, error=f"scoring failed: {self._last_scorer_line()}", provenance=provenance)
        provenance.update(verdict=result["verdict"], reason=result["reason"], probe_batches=result["probe_batches"],
                          largest_change=result["largest_change"], probe_seed=result["probe_seed"],
                          scored_rows=result["scored_rows"])
        metrics = {"val_bpb": result["val_bpb"], "eval_seconds": result["eval_seconds"],
                   **{k: result[k] for k in ("params", "forward_ms") if k in result}}
        if result["verdict"] != "ok":
            return Evaluation(TrialStatus.INVALID, metrics, result["reason"], provenance)
        if budget.get("over"):
            provenance.update(verdict="invalid", reason=budget["over"])
            return Evaluation(TrialStatus.INVALID, metrics, budget["over"], provenance)
        return Evaluation(TrialStatus.OK, metrics, provenance=provenance)

    def _budget(self, execution: Execution, output: TrialOutput) -> dict:
        """The start-up allowance measured for this trial and, under "over", why the genome worked past
        its budget (empty when it did not): handed over later than the budget plus that allowance, or
        reporting less training than the engine's clock leaves after the allowance."""
        env, clock = self.run.env, execution.result_clock
        budget = float(env.get("EVO_TIME_BUDGET") or 0)
        ceiling = float(env.get("EVO_STARTUP_ALLOWANCE") or 0)
        if clock is None or not budget or not ceiling:
            return {}
        if self.run.gpu or not self.started:  # see STARTUP_FACTOR: a cold compile is a GPU genome's start-up
            allowance, measured = ceiling, None
        else:
            measured = max(clock for clock, _ in self.started.values())
            allowance = min(ceiling, STARTUP_FACTOR * measured + STARTUP_SLACK)
        out = {"startup_allowance": round(allowance, 3)}
        if measured is not None:
            out["reference_startup"] = round(measured, 3)
        unit = " on the CPU clock" if self.run.clock == "cpu" else ""
        reported = output.summary.get("training_seconds")
        if clock > budget + allowance:
            out["over"] = (f"over budget: the model was handed over after {clock:.1f}s{unit}, more than the "
                           f"{budget:g}s budget plus the {allowance:.1f}s start-up allowance measured for this trial")
        elif reported is not None and clock - reported > allowance + 0.05 * budget:
            out["over"] = (f"over budget: the genome reported {reported:.1f}s of training, but the model was handed "
                           f"over after {clock:.1f}s{unit}: {clock - reported:.1f}s outside its budget, more than the "
                           f"{allowance:.1f}s start-up allowance measured for this trial")
        return out

    def _scoring_compute(self) -> float:
        """What the model processes used after their harness start-up, together, on the trial's clock
        (CPU seconds over its threads; CPU seconds on a wall clock, where a host process mostly waits)."""
        total, stats = 0.0, proc_stats()  # one look at /proc for all of them
        for proc, (tree, _) in zip(self.models, self.trees):
            tree.measure(stats)
            total += max(0.0, tree.cpu - self.started.get(proc.pid, (0.0, 0.0))[1])
        return total / (self.run.threads if self.run.clock == "cpu" else 1)

    def _compute_limit(self) -> float:
        budget = float(self.run.env.get("EVO_TIME_BUDGET") or 0) or self.run.eval_limit
        return SCORING_SHARE * budget + SCORING_FLOOR * len(self.models)

    def _wait_for_scorer(self) -> tuple[str, str] | None:
        deadline = time.monotonic() + self.run.eval_limit
        limit, measured = self._compute_limit(), 0.0
        while self.scorer.poll() is None:
            if self.run.stop is not None and self.run.stop.is_set():
                return TrialStatus.INTERRUPTED, "stopped by the search while scoring (interrupted)"
            if time.monotonic() > deadline:
                return TrialStatus.TIMEOUT, f"scoring took longer than {self.run.eval_limit:g}s"
            if self.started and time.monotonic() - measured > MEASURE_SECONDS:  # an older harness says nothing
                measured = time.monotonic()
                used = self._scoring_compute()
                if used > limit:
                    for proc in (*self.models, self.scorer):
                        self.run.executor.kill(proc)
                    unit = "s on the CPU clock" if self.run.clock == "cpu" else " CPU seconds"
                    return TrialStatus.INVALID, (f"over budget: the model processes used {used:.1f}{unit} to rebuild the model "
                                       f"and answer the scorer, more than the {limit:.1f}s scoring may take "
                                       "(training where the budget does not count?)")
            time.sleep(0.02)
        self.drains[-1].join(timeout=5)  # the scorer's, for its score line; the model processes may still be exiting
        return None

    def _last_scorer_line(self) -> str:
        self.log.flush()
        lines = [l for l in (self.run.folder / "eval.log").read_text(errors="replace").splitlines()
                 if l.startswith("[scorer] ") and l.strip() != "[scorer]"]
        text = lines[-1][len("[scorer] "):] if lines else "the scorer printed nothing"
        return text.strip()[:300]

    def close(self) -> None:
        for proc in (*self.models, self.scorer):
            self.run.executor.kill(proc)
            proc.wait()
        for t in self.drains:
            t.join(timeout=5)
        self.log.close()
        shutil.rmtree(self.run.handed, ignore_errors=True)  # weights are large; the score is recorded
        for i in range(len(self.models)):
            shutil.rmtree(self.run.model_cache(i), ignore_errors=True)
