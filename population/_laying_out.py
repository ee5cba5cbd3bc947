"""Laying out a search folder: a new search (`lay_out`), this host's folder of a shared one
(`join_folder`), and what a folder's population repository must be to open.

Split out of `population.search`, whose `Search.create`, `Search.join` and `Search.open` call
these and wrap what they return in a handle.
"""

from __future__ import annotations

import json
from pathlib import Path

from population.folder import SearchFolder
from population.genomes import GenomeRepo
from population.objectives import ObjectiveSpec
from population.search_config import LOCAL_STORAGE, SearchConfig, SearchError, check_name, recorded, shield
from population.store import TrialStore, is_postgres, open_storage, redact

def open_repo(paths: SearchFolder) -> GenomeRepo:
    """The population repository of a search folder; a SearchError when it is missing or broken."""
    if not (paths.population / "HEAD").is_file():
        raise SearchError(f"search {paths.root.name!r} has no population repository ({paths.population} is missing "
                          "or empty): its genomes live only there; restore the folder from a backup")
    try:
        return GenomeRepo(paths.population)
    except Exception as e:
        raise SearchError(f"the population repository {paths.population} cannot be read ({type(e).__name__}: "
                          f"{e}); restore it from a backup") from None


def _check_shared_free(config: SearchConfig) -> None:
    """Before a shared search is created: its database answers and holds no search of that name, its remote answers."""
    if not is_postgres(config.storage):
        raise SearchError(f"a search shared through `remote` needs a PostgreSQL `storage` (postgresql://...), "
                          f"not {redact(config.storage) or 'the local SQLite file'}")
    if in_database(config.storage, config.name):
        raise SearchError(f"search {config.name!r} already exists in that database; join it with "
                          f"`evo worker {config.name} --storage ... --remote ...` or pick another name")
    shield(lambda: GenomeRepo.check_remote(config.remote, create=True))


def _publish_creation(repo: GenomeRepo, config: SearchConfig, harness: dict[str, bytes], program: str | None) -> None:
    """Push the seed genome and the harness, so a host that joins later finds them on the remote."""
    files = {name: content.decode("utf-8") for name, content in harness.items()}
    if program is not None:
        files["program.md"] = program
    fixed = repo.commit(files, parents=[], message=f"harness of search {config.name}\n\n"
                        f"Harness-SHA256: {config.harness_sha256}\n")
    prefix = f"refs/heads/evo/{config.name}"
    repo.set_branch(f"evo/{config.name}/harness", fixed)
    specs = [f"+{fixed}:{prefix}/harness"]
    if config.seed_commit:
        specs += [f"+{config.seed_commit}:{prefix}/seed",
                  f"+{config.seed_commit}:refs/evo/{config.name}/genomes/{config.seed_commit}"]
    shield(lambda: repo.push(config.remote, specs))


def lay_out(paths: SearchFolder, config: SearchConfig, seed_files: dict[str, str] | None,
            harness: dict[str, bytes] | None, program: str | None,
            study_attrs: dict | None) -> tuple[TrialStore, GenomeRepo]:
    """Write a new search's folder, population repository and study (see `Search.create`); search.json last."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.harness.mkdir(exist_ok=True)
    for name, content in (harness or {}).items():
        (paths.harness / name).parent.mkdir(parents=True, exist_ok=True)
        (paths.harness / name).write_bytes(content)
    if program is not None:
        paths.program.write_text(program)
    if config.shared:
        _check_shared_free(config)
    repo = GenomeRepo.init(paths.population)
    if seed_files is not None:
        config.seed_commit = repo.commit(seed_files, parents=[], message=f"seed genome of search {config.name}\n\n"
                                         f"Evo-Operator: seed\nHarness-SHA256: {config.harness_sha256}\n")
        repo.set_branch(f"evo/{config.name}/seed", config.seed_commit)
    if config.shared:
        _publish_creation(repo, config, harness or {}, program)
    fixed = recorded(config)
    url = config.storage_url(paths)
    spec = ObjectiveSpec.of(config)
    store = shield(lambda: TrialStore.create(url, config.name, fixed, direction=config.direction,
                                              metric=config.metric, directions=list(spec.directions),
                                              metrics=spec.names))
    try:
        for key, value in (study_attrs or {}).items():
            store.set_attr(key, value)
        paths.config.write_text(json.dumps(recorded(config), indent=2) + "\n")
    except BaseException:
        if config.storage != LOCAL_STORAGE:  # a shared database keeps no study of a search that was never made
            store.close()
            TrialStore.delete(url, config.name)
        raise
    return store, repo


def join_folder(name: str, *, root: str | Path, storage: str, remote: str,
                cache_dir: str | None) -> tuple[SearchFolder, SearchConfig, GenomeRepo]:
    """Build this host's folder of the shared search `name` from its study and its git remote alone,
    but for its trial branches and search.json (`Search.join` adds those).

    The fixed configuration comes from the study; `storage` and `remote` are how this
    host reaches them (they may differ between hosts: addresses, user names);
    `cache_dir` is this host's data cache. The harness and program.md come from the
    remote as the search was created. search.json is written last, as in `create`."""
    check_name(name)
    paths = SearchFolder(Path(root).resolve() / name)
    if paths.exists():
        raise SearchError(f"{paths.root} already holds search {name!r}; open it instead")
    store = shield(lambda: TrialStore.open(storage, name))
    try:
        fixed = store.config
    finally:
        store.close()
    if not fixed.get("remote"):
        raise SearchError(f"search {name!r} in that database was not created for several hosts (no remote); "
                          "run it where it was made with `evo run`")
    config = SearchConfig.from_dict({**fixed, "storage": storage, "remote": remote, "cache_dir": cache_dir})
    shield(lambda: GenomeRepo.check_remote(remote))
    paths.root.mkdir(parents=True, exist_ok=True)
    repo = GenomeRepo.init(paths.population)
    prefix = f"evo/{name}"
    shield(lambda: repo.fetch(remote, [f"+refs/heads/{prefix}/seed:refs/heads/{prefix}/seed",
                                        f"+refs/heads/{prefix}/harness:refs/heads/{prefix}/harness"]))
    if repo.missing([config.seed_commit]):
        raise SearchError(f"the remote {remote} lacks the seed genome of search {name!r} "
                          f"({config.seed_commit[:12]}): is it the remote the search was created with?")
    paths.harness.mkdir(exist_ok=True)
    for file, text in repo.files(f"refs/heads/{prefix}/harness").items():
        (paths.program if file == "program.md" else paths.harness / file).write_text(text)
    return paths, config, repo


def in_database(storage: str, name: str) -> bool:
    """Whether the database at `storage` holds a search called `name` (SearchError if it does not answer)."""
    opened = shield(lambda: open_storage(storage))
    try:
        return any(s.study_name == name for s in opened.get_all_studies())
    finally:
        if getattr(opened, "engine", None) is not None:
            opened.engine.dispose()
