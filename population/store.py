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
import enum
import math
import re
import sqlite3
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState

from population._heartbeat import Heartbeats
from population._trial_cache import TrialCache
from population.errors import StorageError
from population.params import PARAM_SPACE_ATTR, as_params

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC = "val_bpb"  # the objective's name in the study
CONFIG_ATTR = "evo_config"
METRICS_PREFIX = "metrics."    # a trial attribute per metric: metrics.val_bpb, metrics.peak_vram_mb, ...
FAULTS_ATTR = "evo_api_faults"   # proposals lost to their API: count, seconds, tokens, cost (see add_api_fault)
SPEND_ATTR = "evo_spend_usd"
LIMITS_ATTR = "evo_limits"      # a search's limits: {"trials": N} (shared: also "hours": H, from its first trial)
NO_LIMIT = 0                    # a limit given as this lifts the one a search recorded
IMPORTED_ATTR = "evo_imported"  # set by `evo import`: the results.tsv a search was made from (it has no genomes)
BEATING = "evo:heartbeat"       # system attr: the trial's first heartbeat is recorded (see `fail_stale`)
CLAIM_LOCK = 0x65766F           # "evo": first key of the PostgreSQL advisory lock; the study id is the second


class TrialStatus(enum.StrEnum):
    """Every status a trial can have: the one vocabulary of the runner, the store, the loop and the
    views. Members are strings, so records written before it (and `t.status == "ok"`) read the same."""

    RUNNING = "running"
    OK = "ok"                              # the only one with a usable score of its own
    DUPLICATE = "duplicate"                # a genome already evaluated: its score reused, never trained twice
    INTERRUPTED = "interrupted"            # cut short by the search itself (a stop, a crash of the engine): re-run
    INVALID_PROPOSAL = "invalid_proposal"  # the proposer's child could not be made
    # How a run ended, as the runner tells it.
    CRASH = "crash"
    TIMEOUT = "timeout"
    DIVERGED = "diverged"
    NO_METRIC = "no_metric"
    PRUNED = "pruned"
    OOM = "oom"
    LIMIT = "limit"
    INVALID = "invalid"                    # the run broke the rules (changed the harness while it ran)


_STATUS_OF = {s.value: s for s in TrialStatus}
# The statuses the engine writes itself, by their old names (INVALID is an invalid proposal, not
# TrialStatus.INVALID, a run that broke the rules).
OK, DUPLICATE, INTERRUPTED, INVALID = (TrialStatus.OK, TrialStatus.DUPLICATE, TrialStatus.INTERRUPTED,
                                       TrialStatus.INVALID_PROPOSAL)
# How a run can end (`evo.runner.TrialResult.status`).
RUN_STATUSES = (TrialStatus.OK, TrialStatus.CRASH, TrialStatus.TIMEOUT, TrialStatus.DIVERGED, TrialStatus.NO_METRIC,
                TrialStatus.PRUNED, TrialStatus.INTERRUPTED, TrialStatus.OOM, TrialStatus.LIMIT, TrialStatus.INVALID)


@dataclass
class TrialRecord:
    """A read-only view of one trial, as analysis and strategies see it."""

    number: int
    state: str                       # Optuna's: COMPLETE, FAIL, PRUNED, RUNNING
    value: float | None              # val_bpb as told to Optuna (None unless COMPLETE); a vector's first entry
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    started: datetime | None = None
    finished: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)  # the genome's hyperparameters (population.params)
    values: tuple[float, ...] | None = None   # a multi-objective study's vector (None in a single-objective one)

    @property
    def status(self) -> TrialStatus | str:
        """The trial's status; one that no member names (a record without one: Optuna's state) reads as a string."""
        if self.state == "RUNNING":
            return TrialStatus.RUNNING
        status = self.attrs.get("status", self.state.lower())
        return _STATUS_OF.get(status, status)

    @property
    def commit(self) -> str:
        return self.attrs.get("commit", "")

    @property
    def tree(self) -> str:
        return self.attrs.get("tree", "")

    @property
    def parents(self) -> list[int]:
        return list(self.attrs.get("parents", []))

    @property
    def operator(self) -> str:
        return self.attrs.get("operator", "")

    @property
    def description(self) -> str:
        return self.attrs.get("description", "")

    @property
    def rationale(self) -> str:
        return self.attrs.get("rationale", "")

    @property
    def proposer(self) -> str:
        return self.attrs.get("proposer", "")

    @property
    def seed(self) -> int:
        return int(self.attrs.get("seed", 0))

    @property
    def metrics(self) -> dict[str, float]:
        """The run's metrics: one `metrics.NAME` attribute each, or (searches before that) one `metrics` dict."""
        found = dict(self.attrs.get("metrics") or {})
        found.update({k[len(METRICS_PREFIX):]: v for k, v in self.attrs.items() if k.startswith(METRICS_PREFIX)})
        return found

    @property
    def error(self) -> str:
        return self.attrs.get("error", "")

    @property
    def host(self) -> str:
        """The host whose worker ran this trial (shared searches only; its logs stay on that host)."""
        return self.attrs.get("host", "")

    @property
    def cost_usd(self) -> float:
        return float(self.attrs.get("usage", {}).get("cost_usd", 0.0))

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())

    @property
    def finished_ok(self) -> bool:
        """A real evaluation with a finite val_bpb (duplicates reuse one; they are not one)."""
        return self.status == OK and self.value is not None and math.isfinite(self.value)

    @property
    def counts(self) -> bool:
        """A finished evaluation: not running, and not cut short by the search itself."""
        # Read from the attribute itself, not `status`: the engine counts every trial of a search several
        # times per trial (10,000 records at a time), and only the attribute can say interrupted.
        return self.state != "RUNNING" and self.attrs.get("status") != INTERRUPTED.value

    @property
    def while_waiting(self) -> bool:
        """A re-evaluation a device made only because the proposer's API was down: kept apart from the
        trial limit (an outage must not use up a search), counted as an evaluation all the same."""
        return bool(self.attrs.get(WHILE_WAITING))

    # The two below are counted over every trial of a search several times per trial: each record works
    # them out once (a record never changes: Optuna refuses to change a finished trial, and a running
    # one is read into a new record each time).
    @cached_property
    def spends_trial(self) -> bool:
        """Counts towards the search's trial limit (--trials): finished, and neither cut short by the search
        nor a re-evaluation made while the API was down."""
        return self.counts and not self.while_waiting

    @cached_property
    def holds_trial(self) -> bool:
        """Spends one of --trials once finished: finished or running, and not a re-evaluation made while the
        API was down (what the engine counts before it plans or admits another child)."""
        return (self.counts or self.state == "RUNNING") and not self.while_waiting


WHILE_WAITING = "while_waiting"   # the trial attribute that marks a re-evaluation made during an API outage


class StudyError(StorageError):
    """A study that cannot be opened (missing, empty, corrupt, foreign); the message says which and why."""


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
        self._stale: list[optuna.trial.FrozenTrial] = []
        if isinstance(storage, str):
            storage = open_storage(storage, heartbeat=heartbeat, grace=grace,
                                   on_stale=lambda study, trial: self._stale.append(trial))
        self.storage = storage
        try:
            self.study = optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            raise KeyError(f"no study named {name!r} in that database") from None
        self.name = name
        self.heartbeat, self.grace = heartbeat, grace
        self._study_id = self.storage.get_study_id_from_name(name)
        self._lock = threading.RLock()
        self._live: dict[int, int] = {}                  # trial number -> trial id, for trials this process runs
        self._trials: dict[int, optuna.Trial] = {}       # Optuna's handles, made when a trial first reports
        self._reported: dict[int, set[int]] = {}
        self._lost: set[int] = set()                     # live trials another worker failed as stale
        self._claim = threading.local()
        self._beats: Heartbeats | None = None
        # RDB storages: the store's own read cache (Optuna's caching wrapper is not used, see open_storage).
        self._cache = (TrialCache(self.storage, self._study_id, _record)
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

    # -- the claim ------------------------------------------------------------

    # Lock order: the claim first, then self._lock, which is only ever held for database calls, so the
    # progress thread's reports never wait behind another worker's claim.
    @contextlib.contextmanager
    def claim(self):
        """Hold the study's claim lock while deciding from the study and writing the decision.

        On a shared study this is a PostgreSQL transaction-scoped advisory lock, held by a
        connection of its own: it is released when the block ends, when this process dies
        (its connection closes), or when the connection sits idle in the block for longer
        than max(60 s, the grace period): a host that froze or lost power holds it no
        longer than that. Re-entrant within a thread.
        On a study one process owns, there is no one to exclude: a no-op."""
        if not self.shared or getattr(self._claim, "depth", 0):
            self._claim.depth = getattr(self._claim, "depth", 0) + 1
            try:
                yield
            finally:
                self._claim.depth -= 1
            return
        hold = max(60, self.grace or 0)  # far above any honest time inside a claim: a stall must not lose it
        with self.storage.engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{2 * hold}s'")  # outwaits a holder that died silently
            conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = '{hold}s'")
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", (CLAIM_LOCK, self._study_id))
            self._claim.depth = 1
            try:
                yield
            finally:
                self._claim.depth = 0

    # -- writing --------------------------------------------------------------

    def start(self, attrs: dict[str, Any], params: dict[str, Any] | None = None) -> int:
        """Create a RUNNING trial holding `attrs` in one write, and return its number.

        `params`: the genome's hyperparameters (name -> value), recorded as Optuna params with
        one distribution per name for the whole study (`population.params`).
        On a shared study the trial's first heartbeat is recorded and marked before the
        claim is let go, so every RUNNING trial another worker sees is either beating or
        an orphan of a worker that died in between (see `fail_stale`)."""
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

    def fail_running(self) -> list["TrialRecord"]:
        """Mark every RUNNING trial as interrupted (FAIL) and return them: for resuming after a dead process.

        Call this only while holding the search's lock: then no live process owns them."""
        with self._lock:
            orphans = [t for t in self.trials() if t.state == "RUNNING"]
            for t in orphans:
                self.set_attrs(t.number, {"status": INTERRUPTED,
                                          "error": "the process running it stopped (crash, kill or Ctrl-C)"})
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            return orphans

    def fail_stale(self, *, dead: set[str] = frozenset()) -> list["TrialRecord"]:
        """Fail (as interrupted) the RUNNING trials whose worker is gone; return those this call failed.

        Gone means: no heartbeat for the grace period (Optuna's `fail_stale_trials`, whose
        state change is atomic, so two workers never both fail one trial); or recorded by a
        worker in `dead` (the caller knows it stopped: it holds that worker's folder lock); or
        never marked as beating, which under the claim means its worker died between creating
        it and its first heartbeat. Shared studies only; runs inside the claim."""
        with self.claim(), self._lock:
            for trial_id in self._live.values():  # our own trials are alive, however long the database was away
                self.storage.record_heartbeat(trial_id)
            self._stale.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            failed = {t.number: _record(t) for t in self._stale}
            running = self.storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.RUNNING,))
            for t in running:
                if t.number in self._live:
                    continue
                if t.user_attrs.get("worker") in dead or not t.system_attrs.get(BEATING):
                    self.storage.set_trial_user_attr(t._trial_id, "status", INTERRUPTED)
                    self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                    failed[t.number] = _record(t)
            return [failed[n] for n in sorted(failed)]

    def add_spend(self, usd: float) -> float:
        """Add to the search's LLM spend (dropped proposals included); return the new total."""
        with self.claim(), self._lock:
            total = self.spend_usd + float(usd)
            self.set_attr(SPEND_ATTR, total)
            return total

    @property
    def spend_usd(self) -> float:
        return float(self.attr(SPEND_ATTR, 0.0))

    def add_api_fault(self, usage: dict) -> dict:
        """Count one proposal its API failed (an outage, a dropped or refused connection): no trial records
        it, so the search does, with the seconds its calls ran and what they had used; return the totals."""
        with self.claim(), self._lock:
            faults = dict(self.attr(FAULTS_ATTR, {}) or {})
            faults["proposals"] = int(faults.get("proposals", 0)) + 1
            for key in ("seconds", "calls", "input_tokens", "output_tokens", "cost_usd"):
                faults[key] = round(float(faults.get(key, 0)) + float(usage.get(key) or 0), 6)
            self.set_attr(FAULTS_ATTR, faults)
            return faults

    @property
    def api_faults(self) -> dict:
        """The totals `add_api_fault` keeps (empty when no proposal was lost to its API)."""
        return dict(self.attr(FAULTS_ATTR, {}) or {})

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
            return _record(t)
        known = self._records.get(t.number)
        if known is None or known[0] is not t:
            known = self._records[t.number] = (t, _record(t))
        return known[1]

    def close(self) -> None:
        """Stop the heartbeats and let go of the database connections."""
        self.stop_heartbeats()
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    constraints = {k.split(":", 1)[1]: v for k, v in t.system_attrs.items() if k.startswith("constraints:")}
    complete = t.state == TrialState.COMPLETE
    several = complete and t.values is not None and len(t.values) > 1
    return TrialRecord(number=t.number, state=t.state.name,
                       value=(t.values[0] if several else t.value) if complete else None,
                       attrs=dict(t.user_attrs), constraints=constraints,
                       started=t.datetime_start, finished=t.datetime_complete, params=dict(t.params),
                       values=tuple(t.values) if several else None)
