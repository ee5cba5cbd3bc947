"""The trial store: one Optuna study per search, driven with ask/tell.

Each trial's user_attrs hold what the engine knows about it (commit, parents, operator,
description, status, metrics, proposer, cost); the study's user_attrs hold the search's
fixed configuration. Any Optuna storage URL works: SQLite (the default), a journal file,
or PostgreSQL when several hosts share a search. Writes go through one lock because the
runner's progress thread reports intermediate values while the loop tells results.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC = "val_bpb"  # the objective's name in the study
CONFIG_ATTR = "evo_config"
SPEND_ATTR = "evo_spend_usd"
IMPORTED_ATTR = "evo_imported"  # set by `evo import`: the results.tsv a search was made from (it has no genomes)
# Statuses of a finished trial. ok is the only one with a usable val_bpb of its own.
OK, DUPLICATE, INTERRUPTED, INVALID = "ok", "duplicate", "interrupted", "invalid_proposal"


@dataclass
class TrialRecord:
    """A read-only view of one trial, as analysis and strategies see it."""

    number: int
    state: str                       # Optuna's: COMPLETE, FAIL, PRUNED, RUNNING
    value: float | None              # val_bpb as told to Optuna (None unless COMPLETE)
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    started: datetime | None = None
    finished: datetime | None = None

    @property
    def status(self) -> str:
        return "running" if self.state == "RUNNING" else self.attrs.get("status", self.state.lower())

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
        return dict(self.attrs.get("metrics", {}))

    @property
    def error(self) -> str:
        return self.attrs.get("error", "")

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
        """Counts towards the search's trial limit: finished, and not cut short by the search itself."""
        return self.state != "RUNNING" and self.status != INTERRUPTED


class StudyError(Exception):
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
    return url[len(SQLITE_PREFIX):] if url.startswith(SQLITE_PREFIX) else url.split("@")[-1]


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
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
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


class TrialStore:
    """One search's Optuna study.

    >>> store = TrialStore.create("sqlite:///runs/demo/study.db", "demo", {"profile": "tiny"})  # doctest: +SKIP
    >>> n = store.start({"operator": "seed", "commit": "abc123"})                               # doctest: +SKIP
    >>> store.finish(n, status="ok", value=1.92, metrics={"val_bpb": 1.92})                     # doctest: +SKIP

    Only Optuna's public API is used: the storage comes from `optuna.storages.get_storage`,
    and finished trials are written through that storage by their trial id.
    `study` is the Optuna handle itself, for Optuna's own tools (visualization, dashboard).
    """

    def __init__(self, storage: str | optuna.storages.BaseStorage, name: str):
        self.storage = optuna.storages.get_storage(storage)
        self.study = optuna.load_study(study_name=name, storage=self.storage)
        self.name = name
        self._study_id = self.storage.get_study_id_from_name(name)
        self._lock = threading.RLock()
        self._live: dict[int, optuna.Trial] = {}
        self._reported: dict[int, set[int]] = {}

    @classmethod
    def create(cls, storage: str, name: str, config: dict, *, direction: str = "minimize",
               metric: str = METRIC) -> "TrialStore":
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
        study.set_user_attr(CONFIG_ATTR, config)
        study.set_user_attr(SPEND_ATTR, 0.0)
        store = cls(storage, name)
        store.name_metric(metric)
        return store

    @staticmethod
    def delete(storage: str, name: str) -> None:
        """Delete the study `name` (a search that was never made, or one `evo rm` removes)."""
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass

    def name_metric(self, metric: str = METRIC) -> None:
        """Name the objective, so optuna-dashboard and `trials_dataframe` say val_bpb, not "Objective 0"."""
        if self.study.metric_names != [metric]:
            with warnings.catch_warnings():  # experimental in Optuna: its warning is not the user's business
                warnings.simplefilter("ignore")
                self.study.set_metric_names([metric])

    @classmethod
    def open(cls, storage: str, name: str) -> "TrialStore":
        return cls(storage, name)

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

    # -- the study's own attributes -------------------------------------------

    def attr(self, key: str, default: Any = None) -> Any:
        """A study-level attribute (the search's configuration, spend, import record, ...)."""
        return self.storage.get_study_user_attrs(self._study_id).get(key, default)

    def set_attr(self, key: str, value: Any) -> None:
        with self._lock:
            self.storage.set_study_user_attr(self._study_id, key, value)

    # -- writing --------------------------------------------------------------

    def start(self, attrs: dict[str, Any]) -> int:
        """Ask Optuna for a new trial, record `attrs` on it, and return its number."""
        with self._lock:
            trial = self.study.ask()
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            self._live[trial.number] = trial
            return trial.number

    def set_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        with self._lock:
            trial = self._live.get(number)
            if trial is not None:
                for key, value in attrs.items():
                    trial.set_user_attr(key, value)
            else:  # a finished trial, or one another process asked for: write through the storage
                trial_id = self._trial_id(number)
                for key, value in attrs.items():
                    self.storage.set_trial_user_attr(trial_id, key, value)

    def report(self, number: int, step: int, value: float) -> bool:
        """Record an intermediate loss at `step` (percent of the budget); return whether to prune."""
        with self._lock:
            trial = self._live.get(number)
            if trial is None or not math.isfinite(value):
                return False
            steps = self._reported.setdefault(number, set())
            if step in steps:  # Optuna keeps one value per step
                return False
            steps.add(step)
            trial.report(value, step)
            return bool(trial.should_prune())

    def finish(self, number: int, *, status: str, value: float | None = None, metrics: dict | None = None,
               constraints: dict[str, float] | None = None, **attrs: Any) -> None:
        """Tell Optuna how the trial ended. ok/duplicate with a value -> COMPLETE, pruned -> PRUNED, else FAIL."""
        with self._lock:
            trial = self._live.pop(number, None)
            self._reported.pop(number, None)
            record = {"status": status, **attrs}
            if metrics is not None:
                record["metrics"] = metrics
            if trial is not None:
                for key, v in record.items():
                    trial.set_user_attr(key, v)
                for key, v in (constraints or {}).items():
                    trial.set_constraint(key, v)
            else:
                self.set_attrs(number, record)
            if status in (OK, DUPLICATE) and value is not None and math.isfinite(value):
                self.study.tell(number, value, state=TrialState.COMPLETE)
            elif status == "pruned":
                self.study.tell(number, state=TrialState.PRUNED)
            else:
                self.study.tell(number, state=TrialState.FAIL)

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

    def add_spend(self, usd: float) -> float:
        """Add to the search's LLM spend (dropped proposals included); return the new total."""
        with self._lock:
            total = self.spend_usd + float(usd)
            self.set_attr(SPEND_ATTR, total)
            return total

    @property
    def spend_usd(self) -> float:
        return float(self.attr(SPEND_ATTR, 0.0))

    # -- reading --------------------------------------------------------------

    def trials(self) -> list[TrialRecord]:
        with self._lock:
            frozen = self.storage.get_all_trials(self._study_id, deepcopy=False)
        return [_record(t) for t in frozen]

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    constraints = {k.split(":", 1)[1]: v for k, v in t.system_attrs.items() if k.startswith("constraints:")}
    return TrialRecord(number=t.number, state=t.state.name, value=t.value if t.state == TrialState.COMPLETE else None,
                       attrs=dict(t.user_attrs), constraints=constraints,
                       started=t.datetime_start, finished=t.datetime_complete)
