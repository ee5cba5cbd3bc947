"""The trial store: one Optuna study per search, driven with ask/tell.

Each trial's user_attrs hold what the engine knows about it (commit, parents, operator,
description, status, metrics, proposer, cost); the study's user_attrs hold the search's
fixed configuration. Any Optuna storage URL works: SQLite (the default), a journal file,
or PostgreSQL when several hosts share a search. Writes go through one lock because the
runner's progress thread reports intermediate values while the loop tells results.

When several hosts share one study (`heartbeat` given), three more rules hold:

- every trial this process runs gets an Optuna heartbeat from a thread of the store
  (`start_heartbeats`); a trial whose heartbeats stop for the grace period is *stale*;
- whatever changes which trials exist or how they end (`start`, `finish`, failing stale
  trials, adding spend) happens inside `claim()`, a PostgreSQL advisory lock on the study:
  so a decision made from what the study holds ("is this genome already running?", "is
  the trial limit full?", "has trial 7 been re-run yet?") is still true when it is written;
- a new trial is created with `status: interrupted` among its attributes, so a trial that
  Optuna fails for want of heartbeats already says why; its owner overwrites it on `finish`.
"""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState

from population._claim import StudyClaim
from population._heartbeat import Heartbeats
from population._ledger import SPEND_ATTR, SpendLedger
from population._orphans import BEATING, Orphans
from population._trial_cache import TrialCache
from population.errors import StorageError
from population.params import PARAM_SPACE_ATTR, as_params
# The trial's status and record live in population.trials; they are read here as they always were.
from population.trials import (DUPLICATE, INTERRUPTED, INVALID, METRICS_PREFIX, OK,  # noqa: F401
                               RUN_STATUSES, WHILE_WAITING, TrialRecord, TrialStatus, record_of)

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC = "val_bpb"  # the objective's name in the study
CONFIG_ATTR = "evo_config"
LIMITS_ATTR = "evo_limits"      # a search's limits: {"trials": N} (shared: also "hours": H, from its first trial)
NO_LIMIT = 0                    # a limit given as this lifts the one a search recorded
IMPORTED_ATTR = "evo_imported"  # set by `evo import`: the results.tsv a search was made from (it has no genomes)




class StudyError(StorageError):
    """A study that cannot be opened (missing, empty, corrupt, foreign); the message says which and why."""


class StudyNotFound(StudyError, KeyError):
    """The database holds no study of that name (a KeyError too, as it always was)."""

    def __str__(self) -> str:       # KeyError's own str() quotes its message
        return str(self.args[0]) if self.args else ""


SQLITE_PREFIX = "sqlite:///"


def check_study(url: str, name: str) -> None:
    """Raise StudyError unless `url` holds an Optuna study named `name`; write nothing, create nothing.

    Opening a storage with Optuna creates its tables when they are missing, so a read-only
    command would write a schema into an empty or foreign database: this look comes first."""
    tables, studies = study_names(url)
    if tables is None:
        raise StudyError(f"the study database {_where(url)} is missing")
    if not tables and url.startswith(SQLITE_PREFIX):
        raise StudyError(f"the study database {_where(url)} is empty")
    if not {"studies", "trials", "version_info"} <= set(tables):
        raise StudyError(f"{_where(url)} is not an Optuna database (its tables: {', '.join(sorted(tables)) or 'none'})")
    if name not in studies:
        raise StudyError(f"{_where(url)} holds no study named {name!r}"
                         + (f" (it holds: {', '.join(sorted(studies)[:5])})" if studies else " (it holds none)"))


def study_names(url: str) -> tuple[list[str] | None, list[str]]:
    """(the database's tables, the names of its studies), read without writing anything; the
    tables are None for an SQLite file that does not exist. Raises StudyError when the database
    cannot be read (corrupt, not a database, a server that does not answer)."""
    if url.startswith(SQLITE_PREFIX):
        return _sqlite_contents(Path(url[len(SQLITE_PREFIX):]))
    return _server_contents(url)


def _where(url: str) -> str:
    return url[len(SQLITE_PREFIX):] if url.startswith(SQLITE_PREFIX) else redact(url)


def _sqlite_contents(path: Path) -> tuple[list[str] | None, list[str]]:
    if not path.exists():
        return None, []
    if path.is_file() and path.stat().st_size == 0:
        return [], []
    try:  # read-only: a missing file is not created, nothing is written
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            studies = [r[0] for r in db.execute("SELECT study_name FROM studies")] if "studies" in tables else []
    except sqlite3.DatabaseError as e:
        raise StudyError(f"the study database {path} cannot be read: {e}") from None
    return tables, studies


def _server_contents(url: str) -> tuple[list[str], list[str]]:
    try:
        engine = sqlalchemy.create_engine(with_driver(url))
        try:
            tables = sqlalchemy.inspect(engine).get_table_names()
            studies = []
            if "studies" in tables:
                with engine.connect() as connection:
                    studies = [r[0] for r in connection.execute(sqlalchemy.text("SELECT study_name FROM studies"))]
        finally:
            engine.dispose()
    except Exception as e:  # a bad URL, a missing driver, a server that does not answer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StudyError(f"cannot read the study database {_where(url)}: {first}") from None
    return tables, studies


class StoreUnreachable(StorageError, ConnectionError):
    """The database cannot be reached; the message is one line naming it and what to check."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` is the database going away (worth retrying), not a mistake in what was asked."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, (StoreUnreachable, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                              sqlalchemy.exc.TimeoutError, StorageInternalError)):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def redact(url: str) -> str:
    """`url` without its password, for messages and for what other hosts read."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]+):[^@]*@", r"\1@", url)  # a password may hold a /


def with_driver(url: str) -> str:
    """A PostgreSQL URL as users write it (`postgresql://...`) with the psycopg 3 driver named."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url) if is_postgres(url) else url


def open_storage(url: str | optuna.storages.BaseStorage, *, heartbeat: int | None = None, grace: int | None = None,
                 on_stale=None) -> optuna.storages.BaseStorage:
    """The Optuna storage behind `url`, connected (or StoreUnreachable with one line).

    PostgreSQL URLs may be written as users write them (`postgresql://...`): the psycopg 3
    driver is named here. Its connections give up after 5 s and probe an idle peer, so a
    lost database shows up as an error in seconds rather than a hang. Pooled connections
    are not pinged before each use (that would double the round trips): after a restart
    the first call fails, SQLAlchemy drops the pool, and the caller's retry reconnects."""
    if isinstance(url, str) and url.startswith("sqlite"):
        # An RDBStorage of our own, as for PostgreSQL, rather than Optuna's caching wrapper of one:
        # the store keeps its own read cache (`population._trial_cache`) and reads a long search at once.
        return optuna.storages.RDBStorage(url)
    if not isinstance(url, str) or not is_postgres(url):
        return optuna.storages.get_storage(url)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreUnreachable("PostgreSQL storage needs the psycopg driver: pip install 'evoresearch[postgres]'")
    full = with_driver(url)
    engine = {"connect_args": {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                                                      "keepalives_interval": 5, "keepalives_count": 3}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(full, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                              grace_period=grace, heartbeat_stale_trial_callback=on_stale)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        if "password" in reason.lower() and redact(url) == url:
            reason += ("; a search folder keeps no password: give the URL with it again (`storage`) or put it in "
                       "PGPASSWORD or ~/.pgpass")
        raise StoreUnreachable(f"cannot reach the database {redact(url)}: {reason}") from None


class TrialStore:
    """One search's Optuna study.

    >>> store = TrialStore.create("sqlite:///runs/demo/study.db", "demo", {"profile": "tiny"})  # doctest: +SKIP
    >>> n = store.start({"operator": "seed", "commit": "abc123"})                               # doctest: +SKIP
    >>> store.finish(n, status="ok", value=1.92, metrics={"val_bpb": 1.92})                     # doctest: +SKIP

    Optuna's public API is used, but for the first read of a long search (`population._sql_trials`):
    the storage is an `RDBStorage` for SQLite and PostgreSQL (else from `optuna.storages.get_storage`),
    trials are created from a template in one write,
    and finished trials are written through that storage by their trial id.
    `study` is the Optuna handle itself, for Optuna's own tools (visualization, dashboard).

    Args:
        storage: an Optuna URL or storage.
        name: the study's name.
        heartbeat: seconds between heartbeats of this process's running trials; set it when
            several hosts share the study (PostgreSQL only). None: one process owns the study.
        grace: seconds without a heartbeat after which a trial is stale.
    """

    def __init__(self, storage: str | optuna.storages.BaseStorage, name: str, *, heartbeat: int | None = None,
                 grace: int | None = None):
        if isinstance(storage, str):
            storage = open_storage(storage, heartbeat=heartbeat, grace=grace,
                                   on_stale=lambda study, trial: self.orphans.on_stale(study, trial))
        self.storage = storage
        try:
            self.study = optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            raise StudyNotFound(f"no study named {name!r} in that database: check the search's name and `storage`") from None
        self.name = name
        self.heartbeat, self.grace = heartbeat, grace
        self._study_id = self.storage.get_study_id_from_name(name)
        self._lock = threading.RLock()
        self._live: dict[int, int] = {}                  # trial number -> trial id, for trials this process runs
        self._trials: dict[int, optuna.Trial] = {}       # Optuna's handles, made when a trial first reports
        self._reported: dict[int, set[int]] = {}
        self._lost: set[int] = set()                     # live trials another worker failed as stale
        # Lock order: the claim first, then self._lock, which is only ever held for database calls, so the
        # progress thread's reports never wait behind another worker's claim.
        self.claim = StudyClaim(self.storage, self._study_id, shared=self.shared, grace=grace)
        self.ledger = SpendLedger(self.storage, self._study_id, self.claim, self._lock)
        self.orphans = Orphans(self.storage, self.study, self._study_id, self.claim, self._lock, self._live)
        self._beats: Heartbeats | None = None
        # RDB storages: the store's own read cache (Optuna's caching wrapper is not used, see open_storage).
        self._cache = (TrialCache(self.storage, self._study_id, record_of)
                       if isinstance(self.storage, optuna.storages.RDBStorage) else None)
        self._records: dict[int, tuple[optuna.trial.FrozenTrial, TrialRecord]] = {}   # see _record_of

    @classmethod
    def create(cls, storage: str, name: str, config: dict, *, direction: str = "minimize", metric: str = METRIC,
               directions: list[str] | None = None, metrics: list[str] | None = None, **options) -> "TrialStore":
        """Create the study (optuna.exceptions.DuplicatedStudyError if the name is taken), name its
        objective `metric` and open it. With several `directions` (and their `metrics`' names), a
        multi-objective study: each finished trial is told as a vector."""
        opened = open_storage(storage)
        several = directions is not None and len(directions) > 1
        study = (optuna.create_study(storage=opened, study_name=name, directions=directions) if several else
                 optuna.create_study(storage=opened, study_name=name, direction=direction))
        study.set_user_attr(CONFIG_ATTR, config)
        study.set_user_attr(SPEND_ATTR, 0.0)
        if not options:
            store = cls(opened, name)
        else:
            if getattr(opened, "engine", None) is not None:
                opened.engine.dispose()
            store = cls(storage, name, **options)  # the heartbeat settings belong to the storage: open it again
        store.name_metric(metrics if several else metric)
        return store

    @staticmethod
    def delete(storage: str, name: str) -> None:
        """Delete the study `name` (a search that was never made, or one `evo rm` removes)."""
        try:
            optuna.delete_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            pass

    def name_metric(self, metric: str | list[str] = METRIC) -> None:
        """Name the objective, so optuna-dashboard and `trials_dataframe` say val_bpb (or the
        project's metric), not "Objective 0". A multi-objective study keeps the names it was made with."""
        names = [metric] if isinstance(metric, str) else list(metric)
        if len(names) != len(self.study.directions):
            return
        if self.study.metric_names != names:
            with warnings.catch_warnings():  # experimental in Optuna: its warning is not the user's business
                warnings.simplefilter("ignore")
                self.study.set_metric_names(names)

    @classmethod
    def open(cls, storage: str, name: str, **options) -> "TrialStore":
        return cls(storage, name, **options)

    @property
    def shared(self) -> bool:
        """Whether other hosts may write this study at the same time (heartbeats on)."""
        return self.heartbeat is not None

    @property
    def config(self) -> dict:
        """The search's fixed configuration as recorded in the study (what a new host's folder is built from)."""
        return dict(self.attr(CONFIG_ATTR, {}))

    @property
    def pruner(self) -> optuna.pruners.BasePruner:
        """The rule `report` asks whether to stop a trial (Optuna's NopPruner unless set)."""
        return self.study.pruner

    @pruner.setter
    def pruner(self, pruner: optuna.pruners.BasePruner | None) -> None:
        self.study.pruner = pruner or optuna.pruners.NopPruner()

    def ping(self) -> None:
        """One round trip to the database; raises if it cannot be reached."""
        self.storage.get_study_id_from_name(self.name)

    # -- the study's own attributes -------------------------------------------

    def attr(self, key: str, default: Any = None) -> Any:
        """A study-level attribute (the search's configuration, spend, import record, ...)."""
        return self.storage.get_study_user_attrs(self._study_id).get(key, default)

    def set_attr(self, key: str, value: Any) -> None:
        with self._lock:
            self.storage.set_study_user_attr(self._study_id, key, value)

    # -- writing --------------------------------------------------------------

    def start(self, attrs: dict[str, Any], params: dict[str, Any] | None = None) -> int:
        """Create a RUNNING trial holding `attrs` in one write, and return its number.

        `params`: the genome's hyperparameters (name -> value), recorded as Optuna params with
        one distribution per name for the whole study (`population.params`).
        On a shared study the trial's first heartbeat is recorded and marked before the
        claim is let go, so every RUNNING trial another worker sees is either beating or
        an orphan of a worker that died in between (see `population._orphans`)."""
        with self.claim(), self._lock:
            user_attrs = {"status": INTERRUPTED, **attrs} if self.shared else dict(attrs)
            values, distributions = self._as_params(params or {})
            template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=user_attrs, params=values,
                                                 distributions=distributions)
            trial_id = self.storage.create_new_trial(self._study_id, template_trial=template)
            if self.shared:
                self.storage.record_heartbeat(trial_id)
                self.storage.set_trial_system_attr(trial_id, BEATING, True)
            number = self.storage.get_trial_number_from_id(trial_id)
            self._live[number] = trial_id
            return number

    def _as_params(self, values: dict[str, Any]) -> tuple[dict, dict]:
        """Params and distributions for a new trial; a name seen for the first time is added to the study's space."""
        if not values:
            return {}, {}
        space = self.attr(PARAM_SPACE_ATTR, {})
        params, distributions, new = as_params(values, space)
        if new:
            self.storage.set_study_user_attr(self._study_id, PARAM_SPACE_ATTR, {**space, **new})
        return params, distributions

    def set_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        """Write user attributes of a trial (this process's or another's; a finished one only on SQLite)."""
        with self._lock:
            trial_id = self._live.get(number)
            if trial_id is None:
                trial_id = self._trial_id(number)
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(trial_id, key, value)

    def report(self, number: int, step: int, value: float) -> bool:
        """Record an intermediate loss at `step` (percent of the budget); return whether to prune.

        A report the database does not take (it is away, or another worker failed the trial
        as stale) is dropped: a missing point only makes the pruner see less."""
        with self._lock:
            trial_id = self._live.get(number)
            if trial_id is None or not math.isfinite(value):
                return False
            steps = self._reported.setdefault(number, set())
            if step in steps:  # Optuna keeps one value per step
                return False
            steps.add(step)
            try:
                trial = self._handle(number, trial_id)
                trial.report(value, step)
                return bool(trial.should_prune())
            except UpdateFinishedTrialError:
                self._lost.add(number)
                return False
            except Exception as e:
                if is_transient(e):
                    return False
                raise

    def finish(self, number: int, *, status: str, value: float | None = None, metrics: dict | None = None,
               constraints: dict[str, float] | None = None, values: list[float] | None = None, **attrs: Any) -> bool:
        """Tell Optuna how the trial ended. ok/duplicate with a value -> COMPLETE, pruned -> PRUNED, else FAIL.
        A multi-objective study is told `values` (the objective vector, `value` its first entry); without
        them such a trial has no score to tell (FAIL, its status kept).

        Returns False, writing nothing, when the trial is no longer RUNNING because another
        worker failed it as stale (its re-run owns the genome now). The status is written
        last, just before the state, so a finish cut short leaves `status: interrupted`."""
        with self.claim(), self._lock:
            trial_id = self._live.get(number)
            if trial_id is None:
                trial_id = self._trial_id(number)
            record = dict(attrs)
            # One attribute per metric (metrics.val_bpb, ...): numbers Optuna's tools can show and sort.
            record.update({f"{METRICS_PREFIX}{k}": v for k, v in (metrics or {}).items()})
            record["status"] = status
            try:
                for key, v in record.items():
                    self.storage.set_trial_user_attr(trial_id, key, v)
            except UpdateFinishedTrialError:  # failed as stale by another worker (under the claim: not half-way)
                if not self.shared:
                    raise
                self._forget(number)
                return False
            for key, v in (constraints or {}).items():
                self._handle(number, trial_id).set_constraint(key, v)
            several = len(self.study.directions) > 1
            if several and status in (OK, DUPLICATE) and values is not None and all(map(math.isfinite, values)):
                self.study.tell(number, list(values), state=TrialState.COMPLETE)
            elif not several and status in (OK, DUPLICATE) and value is not None and math.isfinite(value):
                self.study.tell(number, value, state=TrialState.COMPLETE)
            elif status == TrialStatus.PRUNED:
                self.study.tell(number, state=TrialState.PRUNED)
            else:
                self.study.tell(number, state=TrialState.FAIL)
            self._forget(number)
            return True

    def _handle(self, number: int, trial_id: int) -> optuna.Trial:
        if number not in self._trials:
            self._trials[number] = optuna.Trial(self.study, trial_id)
        return self._trials[number]

    def _forget(self, number: int) -> None:
        self._live.pop(number, None)
        self._trials.pop(number, None)
        self._reported.pop(number, None)
        self._lost.discard(number)

    # -- heartbeats -----------------------------------------------------------

    def start_heartbeats(self) -> None:
        """Beat every running trial of this process every `heartbeat` seconds, from a thread
        (`population._heartbeat`); trials another worker failed meanwhile become `lost`."""
        if not self.shared or self._beats is not None:
            return
        self._beats = Heartbeats(self.storage, self.heartbeat, self._live, self._lost).start()

    def stop_heartbeats(self) -> None:
        if self._beats is not None:
            self._beats.stop()
            self._beats = None

    def lost(self, number: int) -> bool:
        """Whether another worker failed this process's trial as stale (its result must not be told)."""
        return number in self._lost

    # -- reading --------------------------------------------------------------

    def trials(self) -> list[TrialRecord]:
        """Every trial, in number order. A finished trial's record is made once and handed out again
        (read-only: callers share it), so a long search costs a list per call rather than a record
        per trial."""
        with self._lock:
            if self._cache is not None:
                return self._cache.read()
            return [self._record_of(t) for t in self.storage.get_all_trials(self._study_id, deepcopy=False)]

    def _record_of(self, t: optuna.trial.FrozenTrial) -> TrialRecord:
        """The record of `t`, made again only when its Optuna trial is another object (storages that
        cache finished trials themselves hand out the same one)."""
        if not t.state.is_finished():
            return record_of(t)
        known = self._records.get(t.number)
        if known is None or known[0] is not t:
            known = self._records[t.number] = (t, record_of(t))
        return known[1]

    def close(self) -> None:
        """Stop the heartbeats and let go of the database connections."""
        self.stop_heartbeats()
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
