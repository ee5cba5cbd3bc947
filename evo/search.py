"""The engine's side of a search: what a project and its harness are, and how its trials run.

The folder itself (configuration, population, study, trial files) is the data layer's
`population.Search`. This module creates one from a project (checking the files, asking
the harness for its facts, choosing the sandbox), builds the `TrialRunner` its trials run
with, and checks that the harness and the data are still what they were before either is
used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from pathlib import Path

from evo.runner import DataFiles, TrialRunner
from evo.targets import data_cache_root, describe_harness, resolve_sandbox, target_of  # noqa: F401 (re-exported)
from evo.targets._command import command_config, program_template
from evo.targets._harness import HARNESS_GENOME, harness_config
from population.lineage import DIRECTIONS, MINIMIZE
from population.objectives import Constraint, ObjectiveError, check_trusted, parse_objectives
from population.search import LOCAL_STORAGE, Search, SearchConfig, SearchError, check_name
from population.store import SQLITE_PREFIX, StudyError, study_names

__all__ = ["DATA_ATTR", "DataCheck", "NAMED_SOURCES", "PROGRAM", "check_compiles", "check_data", "check_folder",
           "check_harness", "check_storage", "create_search", "data_cache_root", "describe_harness", "harness_sha256",
           "reseed", "resolve_sandbox", "target_of", "trial_runner"]

PROGRAM = "program.md"
DATA_ATTR = "evo_data_sha256"  # study attribute: the data files' hashes, recorded by the first run


def harness_sha256(files: dict[str, bytes]) -> str:
    """One hash over the harness files (name and content), recorded at creation and checked before use."""
    h = hashlib.sha256()
    for name, content in sorted(files.items()):
        h.update(name.encode() + b"\0" + content)
    return h.hexdigest()


def create_search(name: str, *, root: str | Path = "runs", project: str | Path = ".", profile: str | None = None,
                  budget: float | None = None, mutable: list[str] | tuple[str, ...] = (HARNESS_GENOME,),
                  data: str | None = None, storage: str | None = None, cache_dir: str | None = None,
                  seed: int = 0, sandbox: str = "auto", allow_network: bool = False, run: str | None = None,
                  metric: str | None = None, direction: str | None = None, metric_pattern: str | None = None,
                  evaluate: str | None = None, read: list[str] | tuple[str, ...] = (), remote: str | None = None,
                  heartbeat: int = 10, grace: int = 60, program: str | None = None,
                  added: dict[str, bytes] | None = None, evaluate_quick: str | None = None,
                  quick_threshold: float | None = None, eval_limit: float | None = None, result_channel: bool = False,
                  objectives: list[str] | tuple[str, ...] = (), constraints: list[str] | tuple[str, ...] = ()) -> Search:
    """Create search `name` from a project's seed genome and fixed files, and return it open.

    >>> search = create_search("demo", profile="tiny", budget=5)                              # doctest: +SKIP
    >>> search = create_search("fast", project="examples/sort_speed", mutable=["solution.py"],
    ...                        run="python bench.py", metric="ops_per_second", direction="maximize")  # doctest: +SKIP

    Without `run` the project follows evoresearch's harness contract (prepare.py, train.py,
    profiles, the harness's own scorer). With `run`, any project: the mutable files are the
    genome, every other file the fixed harness, and the metric comes from the run's output or
    from `evaluate`.

    Args:
        name: the search's name; its folder is `root/name`.
        root: the folder holding searches.
        project: the folder with the seed genome and the fixed files.
        profile: the harness's task profile (default: the harness's own default).
        budget: seconds of training per trial (harness), or of the whole run (any project; default 300).
        mutable: the files (or globs, with `run`) the search may change; the rest of the project is fixed.
        data: the harness's data source (default: its embedded corpus).
        storage: an Optuna storage URL (default: SQLite in the search folder).
        cache_dir: the harness's data cache (default: its own).
        seed: the base random seed of the trials.
        sandbox: bwrap (every trial in a bubblewrap sandbox), none (plain processes: scores
            can be faked; every record says so), or auto (bwrap when a probe run works here).
        allow_network: whether a trial's sandbox keeps the network (off: trials cannot reach it).
        run: the command that runs a trial of any project (e.g. "uv run train.py").
        metric: the score's name (default val_bpb); direction: minimize (default) or maximize.
        metric_pattern: a regex whose first group is the score, instead of `metric: value` lines.
        evaluate: a command of the project that scores a trial afterwards, apart from its code; it may
            name the program (`{program}`); without `run` it does all the work.
        read: folders outside the project trials may read (e.g. a data cache).
        remote: a git URL (path, file://, ssh://, git://) for a search shared by several hosts;
            `storage` must then be PostgreSQL. A missing local path becomes a bare repository.
        heartbeat, grace: for a shared search, seconds between a running trial's heartbeats, and
            of silence after which another worker re-runs it.
        program: program.md's text, instead of the project's (a peer project's system message).
        added: files of ours added to the fixed harness (the runner of a peer project's evaluator).
        evaluate_quick, quick_threshold: a stage-1 evaluation run first; a program worse than the
            threshold stops there (pruned). eval_limit: seconds one evaluation may take (default 300).
        result_channel: the evaluation command hands its result over on a file descriptor, and what
            it prints counts for nothing (a peer project's runner does).
        objectives: several objectives, each NAME[:min|max] (the first is the metric): a Pareto search
            (see population.objectives); a harness search may use only numbers measured outside the genome.
        constraints: NAME<=BOUND or NAME>=BOUND on a trial's metrics; a trial beyond one is infeasible.

    Raises:
        SearchError: with one line saying what to change; nothing is created then.

    Long because this docstring documents every creation option; the code is short.
    """
    check_name(name)
    project = Path(project).expanduser().resolve()
    if Search.exists(name, root=root):
        raise SearchError(f"search {name!r} already exists in {Path(root).resolve()}; open it with `evo run {name}` "
                          "or pick another name")
    harness_target = run is None and evaluate is None
    goals, bounds = _objective_spec(objectives, constraints, metric="val_bpb" if harness_target else metric,
                                    direction=MINIMIZE if harness_target else direction, trusted=harness_target)
    if goals and not harness_target:
        metric, direction = goals[0].name, goals[0].direction
    direction = direction or MINIMIZE
    _check_flags(project=project, budget=budget, direction=direction, read=read, remote=remote, storage=storage,
                 heartbeat=heartbeat, grace=grace)
    check_storage(storage, name)
    cache_dir = str(check_folder("`cache_dir`", cache_dir)) if cache_dir else None
    sandbox = resolve_sandbox(sandbox)
    if run is None and evaluate is None:
        if metric not in (None, "val_bpb") or direction != MINIMIZE or metric_pattern or evaluate_quick:
            raise SearchError("`metric`, `direction`, `metric_pattern` and `evaluate` describe a project run by a "
                              "command: give its command with `run` (without `run`, the harness scores val_bpb)")
        mutable = list(dict.fromkeys(mutable))
        for f in mutable:
            if not (project / f).is_file():
                raise SearchError(f"mutable file {f} does not exist in {project}")
            check_compiles(project / f)
        fields, harness = harness_config(name, project, profile=profile, budget=budget, mutable=mutable,
                                         data=check_data(data), cache_dir=cache_dir)
    else:
        fields, harness, mutable = command_config(project, run=run, metric=metric or "val_bpb", direction=direction,
                                                  pattern=metric_pattern, evaluate=evaluate, budget=budget,
                                                  mutable=list(mutable), added=added, quick=evaluate_quick,
                                                  threshold=quick_threshold, channel=result_channel)
        if eval_limit is not None:
            fields["eval_limit"] = float(eval_limit)
    config = SearchConfig(name=name, mutable=mutable, seed=seed, storage=storage or LOCAL_STORAGE,
                          harness_sha256=harness_sha256(harness), sandbox=sandbox, allow_network=allow_network,
                          read=[str(Path(os.path.expanduser(r)).resolve()) for r in read], remote=remote or "",
                          heartbeat=heartbeat, grace=grace, project=str(project), **fields,
                          objectives=[o.as_dict() for o in goals] if len(goals) > 1 else [],
                          constraints=[c.as_dict() for c in bounds])
    program = program if program is not None else _program(project, config)
    search = Search.create(root, config, seed_files={f: (project / f).read_text() for f in mutable}, harness=harness,
                           program=program)
    _keep_modes(project, search, harness)
    return search


def check_folder(flag: str, path: str | Path) -> Path:
    """`path` made absolute once it is a folder this process may write in, or one it can create;
    else a SearchError naming the flag, the path and the problem. Leaves nothing behind: a folder
    made to find out is removed again (the command that needs it makes it when it is used)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise SearchError(f"{flag} {path}: the folder is not writable; name one evo may write in")
        return path
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside the file {existing}"
        raise SearchError(f"{flag} {path}: {where}, not a folder; name a folder")
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise SearchError(f"{flag} {path}: cannot create this folder ({e.strerror}); name one evo may write "
                          "in") from None
    for folder in made:  # deepest first
        with contextlib.suppress(OSError):  # something else put a file there meanwhile: it keeps its folder
            folder.rmdir()
    return path


NAMED_SOURCES = ("shakespeare", "climbmix")  # the data sources the harness knows by name; anything else is a folder


def check_data(data: str | None) -> str | None:
    """The data source as the search will record it: a name, or a folder made absolute (trials
    start in other folders); a SearchError when it is neither a known name nor a folder of text."""
    if data is None or data in NAMED_SOURCES:
        return data
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise SearchError(f"`data` {data}: no such folder; pass {' or '.join(NAMED_SOURCES)}, or a folder of .txt "
                          "or .parquet files")
    if not any(p.suffix in (".txt", ".parquet") for p in folder.rglob("*") if p.is_file()):
        raise SearchError(f"`data` {data}: the folder holds no .txt or .parquet files; point it at one that does")
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
        raise SearchError(f"`storage` {storage}: the folder {Path(storage[len(SQLITE_PREFIX):]).parent} does not "
                          "exist; create it or name another database")
    try:
        tables, studies = study_names(storage)
    except StudyError as e:
        raise SearchError(f"`storage`: {e}; check the URL (e.g. postgresql+psycopg://user@host/db)") from None
    if name in studies:
        raise SearchError(f"`storage` {storage.split('@')[-1]} already holds a study named {name!r}: pick another "
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
            raise SearchError(f"{project} has no {f}; pass the project folder holding the fixed seed with `project`")
        check_compiles(project / f)
        files[f] = (project / f).read_text()
    with search.lock():
        return search.replace_seed(files, source=str(project))


def _keep_modes(project: Path, search: Search, harness: dict) -> None:
    """Give the search's harness copy the project's executable bits (`--run ./bench.sh` must still run)."""
    for f in harness:
        if os.access(project / f, os.X_OK) and (search.paths.harness / f).is_file():
            (search.paths.harness / f).chmod((project / f).stat().st_mode & 0o777)


def _objective_spec(objectives, constraints, *, metric, direction, trusted: bool):
    """The parsed --objective and --constraint flags (a SearchError naming the fix where one cannot work)."""
    try:
        goals = parse_objectives(objectives, metric=metric, direction=direction)
        bounds = [Constraint.parse(c) for c in constraints]
        if trusted:
            check_trusted(goals, bounds)
    except ObjectiveError as e:
        raise SearchError(str(e)) from None
    return goals, bounds


def _check_flags(*, project: Path, budget, direction, read, remote, storage, heartbeat, grace) -> None:
    """Raise SearchError for a creation flag that cannot work, before anything is made."""
    if not project.is_dir():
        raise SearchError(f"`project` {project}: no such folder; pass the folder that holds the project's files")
    if budget is not None and budget <= 0:
        raise SearchError(f"`budget` must be a positive number of seconds, not {budget:g}")
    if remote and not storage:
        raise SearchError("a search shared through `remote` needs its study in PostgreSQL too: add "
                          "`storage` postgresql://USER@HOST/DB")
    if remote and grace <= 2 * heartbeat:
        raise SearchError(f"`grace` ({grace} s) must be more than twice `heartbeat` ({heartbeat} s), or a "
                          "busy worker's trials would be taken from it")
    if direction not in DIRECTIONS:
        raise SearchError(f"`direction` must be minimize or maximize, not {direction!r}")
    for folder in read:
        if not Path(os.path.expanduser(folder)).exists():
            raise SearchError(f"`read` {folder}: no such file or folder")


def _program(project: Path, config: SearchConfig) -> str | None:
    """The project's program.md; for a command target without one, a template (written into the
    search folder, never into the project: the user edits it there)."""
    path = project / PROGRAM
    if path.exists():
        return path.read_text()
    if config.target.get("kind") != "command":
        return None
    return program_template(run=config.target["run"], metric=config.metric, direction=config.direction,
                            budget=config.budget, mutable=config.mutable, evaluate=config.target.get("evaluate"))


def trial_runner(search: Search, *, python: str = sys.executable) -> TrialRunner:
    """The runner the search's trials run with: its sandbox, its evaluator, its harness and data.

    Raises SearchError when the search's sandbox cannot run on this machine."""
    return target_of(search.config).runner(search, python=python)


def check_harness(search: Search) -> None:
    """Raise SearchError when the search's copy of the harness is not what `evo init` recorded."""
    files = {str(p.relative_to(search.paths.harness)): p.read_bytes() for p in search.harness}
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


def join_search(name: str, *, root: str | Path = "runs", storage: str, remote: str,
                cache_dir: str | None = None) -> Search:
    """Make this host's folder of shared search `name` (see `population.Search.join`) and check that
    the harness it got from the remote is the one the search was created with."""
    cache_dir = str(check_folder("`cache_dir`", cache_dir)) if cache_dir else None
    search = Search.join(name, root=root, storage=storage, remote=remote, cache_dir=cache_dir)
    got = harness_sha256({str(p.relative_to(search.paths.harness)): p.read_bytes() for p in search.harness})
    if got != search.config.harness_sha256:
        search.close()
        shutil.rmtree(search.folder, ignore_errors=True)  # nothing of it is worth keeping
        raise SearchError(f"the harness on the remote {remote} is not the one search {name!r} was created with "
                          f"(sha256 {got[:12]} != {search.config.harness_sha256[:12]})")
    return search
