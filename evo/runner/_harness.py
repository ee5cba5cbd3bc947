"""Scoring by the harness, in processes the genome never controls.

Training ends when the genome calls `prepare.save_model`, which writes the weights and the
name of the function that rebuilds the model into the genome's output folder. The moment
that file appears, the session moves it out of the genome's reach (into the trial's folder,
which no sandbox sees), so nothing the genome does afterwards changes what is scored.

Then two sandboxed processes, started while the genome trained so their imports cost no
time after it:

- the *model process* (`prepare.py --serve-model`, untrusted) imports the genome, rebuilds
  the model, loads the weights and turns input tokens into logits in a shared buffer;
- the *scorer* (`prepare.py --score`, trusted) never imports the genome, alone holds the
  validation split and its targets, picks the batches, mixes in probes that look like any
  other batch, and prints val_bpb with a verdict.

They talk over a socket pair the engine hands both; the buffer is a memfd (CUDA IPC on a
GPU) that the scorer creates and passes over the socket, so nothing is copied.
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
from evo.runner._output import TrialOutput
from evo.runner._process import Execution, Executor
from evo.runner._sandbox import View

EVAL_LOG_LIMIT = 2 << 20  # bytes of the model process's and the scorer's output kept in eval.log
SCORE_PREFIX = "EVO_SCORE "


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
    def compile_cache(self) -> Path:
        """The run's private copy of the compile cache."""
        return self.workdir / ".evo" / "inductor-cache"

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
                    masked=self.data.sources)

    def model_view(self) -> View:
        self.compile_cache.mkdir(parents=True, exist_ok=True)
        return View(write=(self.compile_cache,), read=(self.workdir, self.handed), place=self._harness_over_genome(),
                    gpu=self.gpu, masked=self.data.sources)

    def scorer_view(self) -> View:
        data = self.data
        return View(read=(self.harness_base, *data.tokenizer, *data.val), gpu=self.gpu, masked=data.sources)

    def _harness_over_genome(self) -> tuple[tuple[Path, Path], ...]:
        """Each harness file bound read-only over its copy in the genome's folder."""
        return tuple((h, self.workdir / h.relative_to(self.harness_base)) for h in self.harness)


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
        run.handed.mkdir(parents=True)  # exists before the model process's sandbox binds it
        self.handed_over = False
        self.refused = ""  # why the handed-over files were not taken (a link, a pipe), or ""
        self.log = open(run.folder / "eval.log", "wb")
        self.lock = threading.Lock()
        self.logged = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**run.env, "EVO_OUTPUT": str(run.handed)}
        try:
            self.model = run.executor.start(
                [run.python, "prepare.py", "--serve-model"], cwd=run.workdir, view=run.model_view(),
                env={**env, "EVO_EVAL_SOCKET": str(theirs.fileno()), "TORCHINDUCTOR_CACHE_DIR": str(run.compile_cache)},
                pass_fds=[theirs.fileno()])
            self.scorer = run.executor.start(
                [run.python, "prepare.py", "--score"], cwd=run.harness_base, view=run.scorer_view(),
                env={**env, "EVO_EVAL_SOCKET": str(ours.fileno())}, pass_fds=[ours.fileno()], stdin=subprocess.PIPE)
        finally:
            ours.close()
            theirs.close()
        self.score_line = ""
        self.drains = [threading.Thread(target=self._drain, args=(p, tag), daemon=True)
                       for p, tag in ((self.model, b"[model] "), (self.scorer, b"[scorer] "))]
        for t in self.drains:
            t.start()

    def _drain(self, proc: subprocess.Popen, tag: bytes) -> None:
        for line in proc.stdout:
            if proc is self.scorer and line.startswith(SCORE_PREFIX.encode()):
                self.score_line = line.decode(errors="replace")[len(SCORE_PREFIX):]
                continue
            with self.lock:
                if self.logged < EVAL_LOG_LIMIT:
                    self.log.write(tag + line)
                    self.logged += len(line)

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
            return Evaluation("invalid", error=self.refused, provenance={"evaluator": "harness"})
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
        provenance = {"evaluator": "harness", "eval_wall_seconds": round(seconds, 3)}
        if stopped:
            return Evaluation(stopped[0], error=stopped[1], provenance=provenance)
        try:
            result = json.loads(self.score_line)
        except ValueError:
            return Evaluation("crash", error=f"scoring failed: {self._last_scorer_line()}", provenance=provenance)
        provenance.update(verdict=result["verdict"], reason=result["reason"], probe_batches=result["probe_batches"],
                          largest_change=result["largest_change"], probe_seed=result["probe_seed"],
                          scored_rows=result["scored_rows"])
        metrics = {"val_bpb": result["val_bpb"], "eval_seconds": result["eval_seconds"]}
        if result["verdict"] != "ok":
            return Evaluation("invalid", metrics, result["reason"], provenance)
        return Evaluation("ok", metrics, provenance=provenance)

    def _wait_for_scorer(self) -> tuple[str, str] | None:
        deadline = time.monotonic() + self.run.eval_limit
        while self.scorer.poll() is None:
            if self.run.stop is not None and self.run.stop.is_set():
                return "interrupted", "stopped by the search while scoring (interrupted)"
            if time.monotonic() > deadline:
                return "timeout", f"scoring took longer than {self.run.eval_limit:g}s"
            time.sleep(0.02)
        for t in self.drains:
            t.join(timeout=5)
        return None

    def _last_scorer_line(self) -> str:
        self.log.flush()
        lines = [l for l in (self.run.folder / "eval.log").read_text(errors="replace").splitlines()
                 if l.startswith("[scorer] ") and l.strip() != "[scorer]"]
        text = lines[-1][len("[scorer] "):] if lines else "the scorer printed nothing"
        return text.strip()[:300]

    def close(self) -> None:
        for proc in (self.model, self.scorer):
            self.run.executor.kill(proc)
            proc.wait()
        for t in self.drains:
            t.join(timeout=5)
        self.log.close()
        shutil.rmtree(self.run.handed, ignore_errors=True)  # weights are large; the score is recorded
