"""Creating a search from a project: check the files, ask the harness for its facts, lay out the folder.

The folder itself (configuration, population, study, trial files) is the data layer's
`population.Search`; this module is the engine's side of creation, the part that knows
what a project and its harness are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from population.search import LOCAL_STORAGE, Search, SearchConfig, SearchError, check_name

HARNESS = ("prepare.py",)
PROGRAM = "program.md"


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


def harness_sha256(files: dict[str, bytes]) -> str:
    """One hash over the harness files (name and content), recorded at creation and checked before use."""
    h = hashlib.sha256()
    for name, content in sorted(files.items()):
        h.update(name.encode() + b"\0" + content)
    return h.hexdigest()


def create_search(name: str, *, root: str | Path = "runs", project: str | Path = ".", profile: str | None = None,
                  budget: float | None = None, mutable: list[str] | tuple[str, ...] = ("train.py",),
                  data: str | None = None, storage: str | None = None, cache_dir: str | None = None,
                  seed: int = 0, remote: str | None = None, heartbeat: int = 10, grace: int = 60) -> Search:
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
        remote: a git URL (path, file://, ssh://, git://) for a search shared by several hosts;
            `storage` must then be PostgreSQL. A missing local path becomes a bare repository.
        heartbeat, grace: for a shared search, seconds between a running trial's heartbeats, and
            of silence after which another worker re-runs it.

    Raises:
        SearchError: with one line saying what to change; nothing is created then.
    """
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
    if budget is not None and budget <= 0:
        raise SearchError(f"--budget must be a positive number of seconds, not {budget:g}")
    if remote and not storage:
        raise SearchError("a search shared through --remote needs its study in PostgreSQL too: add "
                          "--storage postgresql://USER@HOST/DB")
    if remote and grace <= 2 * heartbeat:
        raise SearchError(f"--grace ({grace} s) must be more than twice --heartbeat ({heartbeat} s), or a "
                          "busy worker's trials would be taken from it")
    facts = describe_harness(project / "prepare.py", profile)
    harness = {f: (project / f).read_bytes() for f in HARNESS}
    config = SearchConfig(name=name, profile=facts["profile"], budget=float(budget or facts["time_budget"]),
                          mutable=mutable, data=data or facts["data"], seed=seed, seq_len=facts["seq_len"],
                          startup_grace=facts["startup_grace"], storage=storage or LOCAL_STORAGE, cache_dir=cache_dir,
                          harness_sha256=harness_sha256(harness), remote=remote or "", heartbeat=heartbeat,
                          grace=grace)
    program = (project / PROGRAM).read_text() if (project / PROGRAM).exists() else None
    return Search.create(root, config, seed_files={f: (project / f).read_text() for f in mutable}, harness=harness,
                         program=program)


def join_search(name: str, *, root: str | Path = "runs", storage: str, remote: str,
                cache_dir: str | None = None) -> Search:
    """Make this host's folder of shared search `name` (see `population.Search.join`) and check that
    the harness it got from the remote is the one the search was created with."""
    search = Search.join(name, root=root, storage=storage, remote=remote, cache_dir=cache_dir)
    got = harness_sha256({p.name: p.read_bytes() for p in search.harness})
    if got != search.config.harness_sha256:
        search.close()
        shutil.rmtree(search.folder, ignore_errors=True)  # nothing of it is worth keeping
        raise SearchError(f"the harness on the remote {remote} is not the one search {name!r} was created with "
                          f"(sha256 {got[:12]} != {search.config.harness_sha256[:12]})")
    return search
