"""The engine's side of a search: what a project and its harness are, and how its trials run.

The folder itself (configuration, population, study, trial files) is the data layer's
`population.Search`. This module creates one from a project (checking the files, asking
the harness for its facts, choosing the sandbox), builds the `TrialRunner` its trials run
with, and checks that the harness and the data are still what they were before either is
used.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from evo.runner import (BwrapExecutor, DataFiles, HarnessEvaluator, LocalExecutor, SummaryEvaluator, TrialRunner,
                        bwrap_works)
from population.search import LOCAL_STORAGE, Search, SearchConfig, SearchError, check_name
from population.store import SQLITE_PREFIX, StudyError, study_names

HARNESS = ("prepare.py",)
PROGRAM = "program.md"
SANDBOXES = ("auto", "bwrap", "none")
DATA_ATTR = "evo_data_sha256"  # study attribute: the data files' hashes, recorded by the first run


def describe_harness(prepare_py: Path, profile: str | None, python: str = sys.executable, *, source: str | None = None,
                     cache_dir: str | None = None) -> dict:
    """Ask the harness (in a subprocess: the engine never imports torch) for a profile's fixed numbers.

    The answer depends only on the file's content, the profile, the data source and cache,
    and the interpreter, and costs a torch import (~2.5 s): a search's copy of the harness
    is answered from the project's call rather than asked again."""
    key = (hashlib.sha256(Path(prepare_py).read_bytes()).hexdigest(), profile, python, source, cache_dir,
           os.environ.get("EVO_CACHE"))
    if key not in _described:
        _described[key] = _ask_harness(Path(prepare_py), profile, python, source, cache_dir)
    return dict(_described[key])


_described: dict[tuple, dict] = {}


def _ask_harness(prepare_py: Path, profile: str | None, python: str, source: str | None, cache_dir: str | None) -> dict:
    env = {**os.environ}
    if profile:
        env["EVO_PROFILE"] = profile
    args = ["--profile", profile] if profile else []
    args += ["--source", source] if source else []
    args += ["--cache-dir", cache_dir] if cache_dir else []
    proc = subprocess.run([python, str(prepare_py), "--describe", *args],
                          capture_output=True, text=True, env=env, cwd=prepare_py.parent)
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SearchError(f"{prepare_py} --describe failed: {message}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def harness_sha256(files: dict[str, bytes]) -> str:
    """One hash over the harness files (name and content), recorded at creation and checked before use."""
    h = hashlib.sha256()
    for name, content in sorted(files.items()):
        h.update(name.encode() + b"\0" + content)
    return h.hexdigest()


def create_search(name: str, *, root: str | Path = "runs", project: str | Path = ".", profile: str | None = None,
                  budget: float | None = None, mutable: list[str] | tuple[str, ...] = ("train.py",),
                  data: str | None = None, storage: str | None = None, cache_dir: str | None = None,
                  seed: int = 0, sandbox: str = "auto", allow_network: bool = False) -> Search:
    """Create search `name` from the project's seed genome and harness, and return it open.

    >>> search = create_search("demo", profile="tiny", budget=5)   # doctest: +SKIP

    Args:
        name: the search's name; its folder is `root/name`.
        root: the folder holding searches.
        project: the folder with train.py, prepare.py and program.md.
        profile: the harness's task profile (default: the harness's own default).
        budget: seconds of counted training per trial (default: the profile's).
        mutable: the files the search may change; the rest of the project is fixed.
        data: the harness's data source (default: its embedded corpus).
        storage: an Optuna storage URL (default: SQLite in the search folder).
        cache_dir: the harness's data cache (default: its own).
        seed: the base random seed of the trials.
        sandbox: bwrap (every trial in a bubblewrap sandbox), none (plain processes: scores
            can be faked; every record says so), or auto (bwrap when a probe run works here).
        allow_network: whether a trial's sandbox keeps the network (off: trials cannot reach it).

    Raises:
        SearchError: with one line saying what to change; nothing is created then.
    """
    project, mutable, data, sandbox = check_creation(name, root=root, project=project, mutable=mutable, budget=budget,
                                                     data=data, storage=storage, sandbox=sandbox)
    facts = describe_harness(project / "prepare.py", profile)
    harness = {f: (project / f).read_bytes() for f in HARNESS}
    config = SearchConfig(name=name, profile=facts["profile"], budget=float(budget or facts["time_budget"]),
                          mutable=mutable, data=data or facts["data"], seed=seed, seq_len=facts["seq_len"],
                          startup_grace=facts.get("startup_allowance", facts["startup_grace"]),
                          storage=storage or LOCAL_STORAGE, cache_dir=cache_dir, harness_sha256=harness_sha256(harness),
                          sandbox=sandbox, allow_network=allow_network,
                          evaluation=facts.get("evaluation", "self-reported"), eval_limit=facts.get("eval_limit", 300.0))
    program = (project / PROGRAM).read_text() if (project / PROGRAM).exists() else None
    return Search.create(root, config, seed_files={f: (project / f).read_text() for f in mutable}, harness=harness,
                         program=program)


def check_creation(name: str, *, root: str | Path, project: str | Path, mutable, budget: float | None,
                   data: str | None, storage: str | None, sandbox: str) -> tuple[Path, list[str], str | None, str]:
    """Everything about a new search that can be checked before anything is created.

    Returns the project folder, the mutable files, the data source and the sandbox, made
    definite (absolute paths, duplicates dropped, auto resolved). Raises SearchError with
    one line saying what to change: a search with a wrong fixed setting is a search for ever."""
    check_name(name)
    project = Path(project).resolve()
    if Search.exists(name, root=root):
        raise SearchError(f"search {name!r} already exists in {Path(root).resolve()}; open it with `evo run {name}` "
                          "or pick another name")
    for f in HARNESS + ("train.py",):
        if not (project / f).exists():
            raise SearchError(f"{project} has no {f}; run evo from the project folder or pass --project")
    mutable = list(dict.fromkeys(mutable))
    for f in mutable:
        if f in HARNESS:
            raise SearchError(f"{f} is the fixed harness and cannot be mutable; drop it from --mutable")
        if not (project / f).is_file():
            raise SearchError(f"mutable file {f} does not exist in {project}")
        check_compiles(project / f)
    if budget is not None and budget <= 0:
        raise SearchError(f"--budget must be a positive number of seconds, not {budget:g}")
    check_storage(storage, name)
    return project, mutable, check_data(data), resolve_sandbox(sandbox)


NAMED_SOURCES = ("shakespeare", "climbmix")  # the data sources the harness knows by name; anything else is a folder


def check_data(data: str | None) -> str | None:
    """The data source as the search will record it: a name, or a folder made absolute (trials
    start in other folders); a SearchError when it is neither a known name nor a folder of text."""
    if data is None or data in NAMED_SOURCES:
        return data
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise SearchError(f"--data {data}: no such folder; pass {' or '.join(NAMED_SOURCES)}, or a folder of .txt "
                          "or .parquet files")
    if not any(p.suffix in (".txt", ".parquet") for p in folder.rglob("*") if p.is_file()):
        raise SearchError(f"--data {data}: the folder holds no .txt or .parquet files; point it at one that does")
    return str(folder.resolve())


def check_compiles(path: Path) -> None:
    """Raise SearchError when a mutable Python file of the seed does not compile (every trial would crash)."""
    if path.suffix != ".py":
        return
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f"line {e.lineno}" if e.lineno else "somewhere"
        raise SearchError(f"{path.name} does not compile ({e.msg} at {where}: {(e.text or '').strip()[:80]!r}); "
                          "fix the seed before creating the search") from None
    except ValueError as e:  # null bytes, a bad encoding declaration
        raise SearchError(f"{path.name} does not compile ({e}); fix the seed before creating the search") from None


def check_storage(storage: str | None, name: str) -> None:
    """Raise SearchError when --storage cannot hold the new search: unreachable, unreadable, or
    holding a study of that name already. Reads only: nothing is created on the way."""
    if not storage:
        return
    if storage.startswith(SQLITE_PREFIX) and not Path(storage[len(SQLITE_PREFIX):]).parent.is_dir():
        raise SearchError(f"--storage {storage}: the folder {Path(storage[len(SQLITE_PREFIX):]).parent} does not "
                          "exist; create it or name another database")
    try:
        tables, studies = study_names(storage)
    except StudyError as e:
        raise SearchError(f"--storage: {e}; check the URL (e.g. postgresql+psycopg://user@host/db)") from None
    if name in studies:
        raise SearchError(f"--storage {storage.split('@')[-1]} already holds a study named {name!r}: pick another "
                          "name, or open that search where its folder is")


def reseed(search: Search, project: str | Path = ".") -> str:
    """Replace the seed genome of `search` with the project's mutable files, for a seed that never
    ran successfully (a bug in train.py found by its first trial); return the new commit.

    Raises SearchError when the files do not compile, the search is running, or trials already
    descend from the old seed."""
    project = Path(project).resolve()
    files = {}
    for f in search.config.mutable:
        if not (project / f).is_file():
            raise SearchError(f"{project} has no {f}; pass the project folder holding the fixed seed with --project")
        check_compiles(project / f)
        files[f] = (project / f).read_text()
    with search.lock():
        return search.replace_seed(files, source=str(project))


def resolve_sandbox(choice: str, python: str = sys.executable) -> str:
    """bwrap or none, from --sandbox auto|bwrap|none; a bwrap that cannot run is a SearchError."""
    if choice not in SANDBOXES:
        raise SearchError(f"--sandbox must be one of {', '.join(SANDBOXES)}, not {choice!r}")
    if choice == "none":
        return "none"
    why = bwrap_works(python)
    if choice == "bwrap" and why:
        raise SearchError(f"--sandbox bwrap: {why}; or create the search with --sandbox none (scores can then be faked)")
    return "none" if why else "bwrap"


def data_cache_root(config: SearchConfig) -> Path:
    """The harness's data cache folder for this search (its --cache-dir, $EVO_CACHE, or the default)."""
    return Path(config.cache_dir or os.environ.get("EVO_CACHE") or Path.home() / ".cache" / "evoresearch")


def trial_runner(search: Search, *, python: str = sys.executable) -> TrialRunner:
    """The runner the search's trials run with: its sandbox, its evaluator, its harness and data.

    Raises SearchError when the search's sandbox cannot run on this machine."""
    cfg = search.config
    sandbox = cfg.sandbox if cfg.sandbox != "auto" else resolve_sandbox("auto", python)
    if sandbox == "bwrap":
        why = bwrap_works(python)
        if why:
            raise SearchError(f"search {cfg.name!r} runs its trials in a bwrap sandbox, but here {why}")
        executor = BwrapExecutor(hidden=(search.folder.parent,), python=python)
    else:
        executor = LocalExecutor()
    facts = describe_harness(search.harness[0], cfg.profile, python, source=cfg.data, cache_dir=cfg.cache_dir)
    evaluator = HarnessEvaluator() if cfg.evaluation == "harness" else SummaryEvaluator()
    return TrialRunner(executor=executor, evaluator=evaluator, harness=search.harness,
                       data=DataFiles.from_describe(facts, data_cache_root(cfg)), python=python,
                       network=cfg.allow_network, eval_limit=cfg.eval_limit)


def check_harness(search: Search) -> None:
    """Raise SearchError when the search's copy of the harness is not what `evo init` recorded."""
    files = {p.name: p.read_bytes() for p in search.harness}
    if search.config.harness_sha256 and harness_sha256(files) != search.config.harness_sha256:
        raise SearchError(f"the harness in {search.paths.harness} has changed since the search was created (its "
                          "SHA-256 no longer matches); every later score would be measured differently: copy the "
                          "project's prepare.py back or start a new search")


class DataCheck:
    """The data files a search's trials read, hashed once and then watched for any change.

    The first run records each file's SHA-256 in the study; every later run checks them
    before any trial, and before each trial a cheap look at size and modification time
    decides whether to hash again (a trial without a sandbox could have written them)."""

    def __init__(self, search: Search, data: DataFiles):
        self.search = search
        # Keyed by role and name, not by path: the same data in a moved cache is the same data.
        self.files = {f"{role}/{Path(p).name}": Path(p) for role, paths in
                      (("tokenizer", data.tokenizer), ("train", data.train), ("val", data.val)) for p in paths}
        self.stamps: dict[Path, tuple[int, int]] = {}

    def verify(self) -> None:
        """Hash every file and compare with the study's record (recording it the first time)."""
        hashes = {key: _sha256_file(p) for key, p in self.files.items() if p.exists()}
        recorded = self.search.store.attr(DATA_ATTR)
        if recorded is None:
            self.search.store.set_attr(DATA_ATTR, hashes)
        else:
            changed = sorted(k for k in recorded if hashes.get(k) != recorded[k])
            if changed:
                raise SearchError(f"the prepared data changed since this search started ({changed[0]} and "
                                  f"{len(changed) - 1} more): scores would not be comparable; restore the cache or "
                                  "start a new search")
        self.stamps = {p: _stamp(p) for p in self.files.values() if p.exists()}

    def quick(self) -> None:
        """Hash again only if a file's size or modification time moved since the last check."""
        if any(_stamp(p) != stamp for p, stamp in self.stamps.items()):
            self.verify()


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
