"""A search on disk: its fixed configuration, population repository, trial store and trial folders.

    runs/NAME/
        search.json        the fixed configuration (also in the study's user_attrs)
        study.db           the Optuna study (unless --storage names another database)
        population.git/    the genomes, one branch evo/NAME/<trial> per trial
        harness/           the fixed harness copied at creation (prepare.py)
        program.md         the research instructions (edit it to steer the search)
        trials/<n>/        run.log, diff.patch, proposal.json, result.json, prompts
        worktrees/<slot>/  one checkout per device
        inductor-cache/    TorchInductor's compile cache, shared by every trial
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evo.proposers import Genome
from population.genomes import GenomeRepo
from population.lineage import Lineage
from population.store import TrialRecord, TrialStore

HARNESS = ("prepare.py",)
PROGRAM = "program.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SearchError(Exception):
    """A problem with how a search was asked for; the message says what to change."""


@dataclass
class SearchConfig:
    """What stays fixed for the life of a search (changing any of it means a new search)."""

    name: str
    profile: str
    budget: float
    mutable: list[str]
    data: str
    seed: int = 0
    seq_len: int = 0
    startup_grace: float = 60.0
    harness_sha256: str = ""
    seed_commit: str = ""
    storage: str = ""
    cache_dir: str | None = None
    project: str = ""
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def describe_harness(prepare_py: Path, profile: str | None, python: str = sys.executable) -> dict:
    """Ask the harness (in a subprocess: the engine never imports torch) for a profile's fixed numbers.

    The answer depends only on the file's content, the profile and the interpreter, and
    costs a torch import (~2.5 s): a search's copy of the harness is answered from the
    project's call rather than asked again."""
    key = (hashlib.sha256(Path(prepare_py).read_bytes()).hexdigest(), profile, python)
    if key not in _described:
        _described[key] = _ask_harness(Path(prepare_py), profile, python)
    return dict(_described[key])


_described: dict[tuple, dict] = {}


def _ask_harness(prepare_py: Path, profile: str | None, python: str) -> dict:
    env = {**os.environ}
    if profile:
        env["EVO_PROFILE"] = profile
    proc = subprocess.run([python, str(prepare_py), "--describe"] + (["--profile", profile] if profile else []),
                          capture_output=True, text=True, env=env, cwd=prepare_py.parent)
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SearchError(f"{prepare_py} --describe failed: {message}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


class Search:
    """Handle on one search folder. Create it once, open it any number of times.

    >>> search = Search.create("demo", profile="tiny", budget=5)   # doctest: +SKIP
    >>> search.lineage().best                                        # doctest: +SKIP
    """

    def __init__(self, folder: Path, config: SearchConfig, store: TrialStore, repo: GenomeRepo):
        self.folder, self.config, self.store, self.repo = folder, config, store, repo

    # -- creating and opening -------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, root: str | Path = "runs", project: str | Path = ".", profile: str | None = None,
               budget: float | None = None, mutable: list[str] | tuple[str, ...] = ("train.py",), data: str | None = None,
               storage: str | None = None, cache_dir: str | None = None, seed: int = 0) -> "Search":
        if not _NAME.match(name):
            raise SearchError(f"bad search name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        project = Path(project).resolve()
        folder = Path(root).resolve() / name
        if (folder / "search.json").exists():
            raise SearchError(f"search {name!r} already exists in {folder.parent}; open it with `evo run {name}` or pick another name")
        for f in HARNESS + ("train.py",):
            if not (project / f).exists():
                raise SearchError(f"{project} has no {f}; run evo from the project folder or pass --project")
        mutable = list(dict.fromkeys(mutable))
        for f in mutable:
            if f in HARNESS:
                raise SearchError(f"{f} is the fixed harness and cannot be mutable; drop it from --mutable")
            if not (project / f).is_file():
                raise SearchError(f"mutable file {f} does not exist in {project}")
        if budget is not None and budget <= 0:
            raise SearchError(f"--budget must be a positive number of seconds, not {budget:g}")
        facts = describe_harness(project / "prepare.py", profile)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "harness").mkdir(exist_ok=True)
        for f in HARNESS:
            shutil.copyfile(project / f, folder / "harness" / f)
        if (project / PROGRAM).exists():
            shutil.copyfile(project / PROGRAM, folder / PROGRAM)
        storage = storage or f"sqlite:///{folder / 'study.db'}"
        config = SearchConfig(name=name, profile=facts["profile"], budget=float(budget or facts["time_budget"]),
                              mutable=mutable, data=data or facts["data"], seed=seed, seq_len=facts["seq_len"],
                              startup_grace=facts["startup_grace"], storage=storage, cache_dir=cache_dir,
                              project=str(project), harness_sha256=_sha256([folder / "harness" / f for f in HARNESS]))
        repo = GenomeRepo.init(folder / "population.git")
        files = {f: (project / f).read_text() for f in mutable}
        config.seed_commit = repo.commit(files, parents=[], message=f"seed genome of search {name}\n\n"
                                         f"Evo-Operator: seed\nHarness-SHA256: {config.harness_sha256}\n")
        repo.set_branch(f"evo/{name}/seed", config.seed_commit)
        store = TrialStore.create(storage, name, asdict(config))
        (folder / "search.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        return cls(folder, config, store, repo)

    @classmethod
    def open(cls, name: str, *, root: str | Path = "runs", pruner=None) -> "Search":
        folder = Path(root).resolve() / name
        path = folder / "search.json"
        if not path.exists():
            known = sorted(p.parent.name for p in Path(root).glob("*/search.json")) if Path(root).exists() else []
            hint = f"; searches in {root}: {', '.join(known)}" if known else f"; create it with `evo init {name}`"
            raise SearchError(f"no search named {name!r} in {Path(root).resolve()}{hint}")
        config = SearchConfig(**json.loads(path.read_text()))
        store = TrialStore.open(config.storage, config.name, pruner=pruner)
        return cls(folder, config, store, GenomeRepo(folder / "population.git"))

    @classmethod
    def exists(cls, name: str, *, root: str | Path = "runs") -> bool:
        return (Path(root) / name / "search.json").exists()

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> "Search":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths ------------------------------------------------------------------

    @property
    def harness(self) -> list[Path]:
        return [self.folder / "harness" / f for f in HARNESS]

    @property
    def program(self) -> str:
        path = self.folder / PROGRAM
        return path.read_text() if path.exists() else ""

    def trial_dir(self, number: int) -> Path:
        return self.folder / "trials" / str(number)

    def branch(self, number: int) -> str:
        return f"evo/{self.config.name}/{number}"

    @contextlib.contextmanager
    def lock(self):
        """Hold the search for one process; raises SearchError if another `evo run` has it."""
        path = self.folder / "lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SearchError(f"search {self.config.name!r} is already running in another process "
                                  f"(pid {path.read_text().strip() or '?'}); stop it first or watch it with `evo status`")
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def is_running(self) -> bool:
        path = self.folder / "lock"
        if not path.exists():
            return False
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    # -- reading ------------------------------------------------------------------

    def trials(self) -> list[TrialRecord]:
        return self.store.trials()

    def lineage(self) -> Lineage:
        return Lineage(self.store.trials())

    def genome(self, number: int, lineage: Lineage | None = None) -> Genome:
        lineage = lineage or self.lineage()
        t = lineage.by_number[number]
        return Genome(trial=number, commit=t.commit, files=self.repo.files(t.commit, self.config.mutable),
                      description=t.description, score=lineage.score_of(number))
