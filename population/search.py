"""A search on disk: its fixed configuration, population repository, trial store and folder.

`Search` is the handle every layer shares: the engine writes through it, analysis reads
through it. It knows nothing about how genomes are run: creating a search from a
project (asking the harness for its facts, checking the files) is the engine's job
(`evo.create_search`), which hands this module a finished `SearchConfig` to lay out.

A search folder is relocatable: its own study database is named by the folder, not by
an absolute path, so a moved or copied folder opens its own study (a copy is a new,
independent search, never a second writer of the original's database).

A *shared* search (one with a `remote`) lives in a PostgreSQL study and a bare git
remote; every host that works on it has a folder of its own (a clone of the population,
its worktrees and logs), built by `Search.join` from those two alone: the fixed
configuration comes from the study, the harness and the genomes from the remote. On the
remote, the refs of search NAME are

    refs/heads/evo/NAME/seed       the seed genome
    refs/heads/evo/NAME/harness    prepare.py and program.md as the search was created
    refs/evo/NAME/genomes/<commit> every genome, pushed before its first trial starts
    refs/heads/evo/NAME/<n>        trial n's genome (pushed by its host when convenient; any
                                   host can rebuild them from the study)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from population._laying_out import in_database, join_folder, lay_out, open_repo
from population.folder import SearchFolder
from population.genomes import Genome, GenomeRepo
from population.lineage import Lineage
from population.objectives import ObjectiveSpec
from population.search_config import (LOCAL_STORAGE, SearchConfig,  # noqa: F401 (re-exported)
                                      SearchError, check_name, recorded, shield)
from population.store import CONFIG_ATTR, SQLITE_PREFIX, StudyError, TrialRecord, TrialStore, check_study, redact


class Search:
    """Handle on one search folder. Create it once (see `evo.create_search`), open it any number of times.

    >>> search = Search.open("demo")      # doctest: +SKIP
    >>> search.lineage().best              # doctest: +SKIP
    """

    def __init__(self, paths: SearchFolder, config: SearchConfig, store: TrialStore, repo: GenomeRepo):
        self.paths, self.config, self.store, self.repo = paths, config, store, repo
        self._lineage: Lineage | None = None   # the last one made, which the next is built on

    @property
    def folder(self) -> Path:
        return self.paths.root

    @property
    def objectives(self) -> ObjectiveSpec:
        """What the search optimises (its metric alone, or several objectives) and its constraints."""
        return ObjectiveSpec.of(self.config)

    # -- creating and opening -------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, config: SearchConfig, *, seed_files: dict[str, str] | None,
               harness: dict[str, bytes] | None = None, program: str | None = None,
               study_attrs: dict | None = None) -> "Search":
        """Lay out a new search folder under `root` from a finished configuration.

        Args:
            root: the folder holding searches; the new one is `root/config.name`.
            config: the fixed settings (its seed_commit is filled in here).
            seed_files: the seed genome's mutable files, or None for a search without genomes
                (an imported results.tsv).
            harness: file name -> content of the fixed harness, copied into `harness/`.
            program: the research instructions, written to `program.md` when given.
            study_attrs: extra study-level attributes to record before the folder exists.

        search.json is written last, so a folder without it is not a search (a creation that
        failed half-way can simply be created again)."""
        check_name(config.name)
        paths = SearchFolder(Path(root).resolve() / config.name)
        if paths.exists():
            raise SearchError(f"search {config.name!r} already exists in {paths.root.parent}; open it with "
                              f"`evo run {config.name}` or pick another name")
        made = not paths.root.exists()
        try:
            return cls(paths, config, *lay_out(paths, config, seed_files, harness, program, study_attrs))
        except BaseException:
            if made:  # a half-made folder is no search (a full disk, a storage that refused): leave none behind
                shutil.rmtree(paths.root, ignore_errors=True)
            raise

    @classmethod
    def open(cls, name: str, *, root: str | Path = "runs", worker: bool = False, storage: str | None = None) -> "Search":
        """Open search `name` in `root`. `worker`: this process will run trials of a shared search,
        so its store beats for them (a view needs no heartbeats). `storage`: the study's URL as the
        user gave it again, with the password search.json does not keep (it must name the same study)."""
        paths = SearchFolder(Path(root).resolve() / name)
        if not paths.exists():
            known = sorted(p.parent.name for p in Path(root).glob("*/search.json")) if Path(root).exists() else []
            hint = f"; searches in {root}: {', '.join(known)}" if known else f"; create it with `evo init {name}`"
            raise SearchError(f"no search named {name!r} in {Path(root).resolve()}{hint}")
        try:
            config = SearchConfig.from_dict(json.loads(paths.config.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise SearchError(f"cannot read {paths.config}: {e}; restore it from a backup (the study also holds the "
                              "configuration, in its evo_config attribute)") from None
        if storage:
            if redact(storage) != redact(config.storage):
                raise SearchError(f"search {name!r} keeps its study in {redact(config.storage) or 'its own study.db'}, "
                                  f"not {redact(storage)}; give that URL or none")
            config.storage = storage  # in memory only: it may carry the password
        url = config.storage_url(paths)
        beats = dict(heartbeat=config.heartbeat, grace=config.grace) if config.shared and worker else {}
        try:
            if url.startswith(SQLITE_PREFIX):
                check_study(url, config.name)  # before Optuna, which would write a schema into an empty file
            store = shield(lambda: TrialStore.open(url, config.name, **beats))
        except StudyError as e:
            raise SearchError(f"cannot open search {name!r}: {e}; restore the database from a backup") from None
        except SearchError:
            raise
        except Exception as e:  # SQLAlchemy's and Optuna's errors run to dozens of lines: keep the first
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SearchError(f"cannot open the study of search {name!r} ({type(e).__name__}: {first})") from None
        return cls(paths, config, store, open_repo(paths))

    @classmethod
    def join(cls, name: str, *, root: str | Path = "runs", storage: str, remote: str,
             cache_dir: str | None = None) -> "Search":
        """Build this host's folder of the shared search `name` from its study and its git remote alone.

        The fixed configuration comes from the study; `storage` and `remote` are how this
        host reaches them (they may differ between hosts: addresses, user names);
        `cache_dir` is this host's data cache. The harness and program.md come from the
        remote as the search was created. search.json is written last, as in `create`."""
        paths, config, repo = join_folder(name, root=root, storage=storage, remote=remote, cache_dir=cache_dir)
        search = cls(paths, config, shield(lambda: TrialStore.open(storage, name)), repo)
        search.sync()
        search._write_config_file()
        return search

    in_database = staticmethod(in_database)

    @classmethod
    def exists(cls, name: str, *, root: str | Path = "runs") -> bool:
        return SearchFolder(Path(root) / name).exists()

    def close(self) -> None:
        self.repo.close()
        self.store.close()

    def __enter__(self) -> "Search":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths ------------------------------------------------------------------

    @property
    def harness(self) -> list[Path]:
        """The fixed harness files copied at creation (every file under harness/, in any folder)."""
        root = self.paths.harness
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    @property
    def program(self) -> str:
        return self.paths.program.read_text() if self.paths.program.exists() else ""

    def branch(self, number: int) -> str:
        return f"evo/{self.config.name}/{number}"

    # -- the remote of a shared search --------------------------------------------

    def genome_ref(self, commit: str) -> str:
        return f"refs/evo/{self.config.name}/genomes/{commit}"

    def publish(self, commits: list[str], *, trials: dict[int, str] | None = None) -> None:
        """Push genomes (and trial branches number -> commit) to the remote in one push. RemoteError if it fails."""
        specs = [f"{c}:{self.genome_ref(c)}" for c in dict.fromkeys(commits)]
        specs += [f"{c}:refs/heads/{self.branch(n)}" for n, c in (trials or {}).items()]
        self.repo.push(self.config.remote, specs)

    def publish_branches(self) -> None:
        """Push every trial branch this host knows (those of workers that died included)."""
        prefix = f"refs/heads/evo/{self.config.name}/"
        self.repo.push(self.config.remote, [f"{prefix}*:{prefix}*"])

    def sync(self, trials: list[TrialRecord] | None = None) -> None:
        """Fetch the genomes other hosts pushed and give every trial its local branch. RemoteError if the
        remote cannot be reached; a search on one host has nothing to fetch."""
        trials = self.trials() if trials is None else trials
        if self.config.shared:
            refs = f"refs/evo/{self.config.name}/genomes/"
            if self.repo.missing(t.commit for t in trials):
                self.repo.fetch(self.config.remote, [f"+{refs}*:{refs}*"])
        have = self.repo.branches(f"evo/{self.config.name}/")
        wanted = {self.branch(t.number): t.commit for t in trials if t.commit and self.branch(t.number) not in have}
        missing = self.repo.missing(wanted.values())
        self.repo.set_branches({b: c for b, c in wanted.items() if c not in missing})

    @contextlib.contextmanager
    def lock(self):
        """Hold the search for one process; raises SearchError if another `evo run` has it."""
        path = self.paths.lock
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

    # -- changing what was fixed, while nothing depends on it -----------------------

    def replace_seed(self, files: dict[str, str], *, source: str = "") -> str:
        """Make `files` the seed genome and return its commit: for a seed that never ran
        successfully (nothing descends from it yet). The failed trials stay on record.

        Raises SearchError when a trial already finished successfully (its genomes descend
        from the old seed), or when `files` are not the search's mutable files or are the seed's
        as they are (`source` names where they came from, for that message)."""
        done = [t.number for t in self.trials() if t.finished_ok]
        if done:
            raise SearchError(f"search {self.config.name!r} already has successful trials (#{done[0]}"
                              f"{' and more' if len(done) > 1 else ''}) descended from its seed; start a new search "
                              "to start from another seed")
        if sorted(files) != sorted(self.config.mutable):
            raise SearchError(f"a seed consists of the search's mutable files ({', '.join(self.config.mutable)}), "
                              f"not {', '.join(sorted(files))}")
        old = self.config.seed_commit
        if old and files == self.repo.files(old, self.config.mutable):
            raise SearchError(f"{', '.join(files)}{' in ' + source if source else ''} are the seed's files as they "
                              "are; fix them first")
        commit = self.repo.commit(files, parents=[], message=f"seed genome of search {self.config.name} (replaces "
                                  f"{old[:10] or 'none'})\n\nEvo-Operator: seed\nHarness-SHA256: "
                                  f"{self.config.harness_sha256}\n")
        self.repo.set_branch(f"evo/{self.config.name}/seed", commit)
        self.config.seed_commit = commit
        self._save_config()
        return commit

    def use_cache_dir(self, cache_dir: str | None) -> None:
        """Read the harness's data from `cache_dir` from now on (None: $EVO_CACHE or the default). A
        setting of this host's folder only: the study's copy of the configuration, which other hosts
        share, keeps the one the search was created with; the data files' hashes still hold either way."""
        self.config.cache_dir = cache_dir
        self._write_config_file()

    def _save_config(self) -> None:
        """Write the configuration to search.json (atomically) and to the study."""
        self.store.set_attr(CONFIG_ATTR, recorded(self.config))
        self._write_config_file()

    def _write_config_file(self) -> None:
        tmp = self.paths.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(recorded(self.config), indent=2) + "\n")
        os.replace(tmp, self.paths.config)

    def delete(self) -> None:
        """Delete the search for good: its folder, and its study when that lives in a shared database.

        Raises SearchError while a process runs it, and for a search shared by several hosts
        (its study and remote are theirs too)."""
        if self.config.shared:
            raise SearchError(f"search {self.config.name!r} is shared by several hosts through {self.config.remote}: "
                              f"delete this host's folder ({self.paths.root}) by hand, and the study with Optuna's "
                              "delete_study when no host needs it")
        if self.is_running():
            raise SearchError(f"search {self.config.name!r} is running in another process; stop it first")
        url = self.config.storage_url(self.paths)
        self.close()
        if self.config.storage != LOCAL_STORAGE and url != self.paths.local_storage:
            TrialStore.delete(url, self.config.name)
        shutil.rmtree(self.paths.root)

    def is_running(self) -> bool:
        path = self.paths.lock
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

    def lineage(self, trials: list[TrialRecord] | None = None) -> Lineage:
        """The lineage of the search's trials (read now unless given), built on the last one made where
        only new results came in since: a search of thousands of trials replays only what changed."""
        lineage = Lineage(self.store.trials() if trials is None else trials, direction=self.config.direction,
                          previous=self._lineage, directions=self.objectives.directions)
        self._lineage = lineage
        return lineage

    def genome(self, number: int, lineage: Lineage | None = None) -> Genome:
        lineage = lineage or self.lineage()
        t = lineage.by_number[number]
        return Genome(trial=number, commit=t.commit, files=self.repo.files(t.commit, self.config.mutable),
                      description=t.description, score=lineage.score_of(number))
