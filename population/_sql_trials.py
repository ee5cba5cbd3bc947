"""Every trial of a study in an Optuna RDB storage, read with plain SQL: the first read of a long search.

Why not `storage.get_all_trials`: it builds an SQLAlchemy ORM object per row of five tables,
which costs ~2 ms per trial (a 10,000-trial search takes ~20 s to open for `evo status`, and a
resumed loop waits as long). The same rows read as plain tuples cost a tenth of that. The result
is the list `get_all_trials(study_id, deepcopy=False)` returns, trial for trial (FrozenTrial
compares every field; tests/test_population.py checks both reads give equal lists), so nothing
above this module can tell which read it got. Only this module knows Optuna's table layout
(`optuna/storages/_rdb/models.py`, schema v12, unchanged since Optuna 3.2); if a future Optuna
changes it, the query fails and the store falls back to Optuna's own read.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timezone

import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from population.errors import StorageError

_TYPES = {"datetime_start": sqlalchemy.DateTime, "datetime_complete": sqlalchemy.DateTime}
_TRIALS = sqlalchemy.text("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                          "WHERE study_id = :study ORDER BY trial_id").columns(**_TYPES)
# One query per table, each joined to its study's trials: rows of (trial_id, ...).
_ROWS = {
    name: sqlalchemy.text(f"SELECT t.trial_id, {columns} FROM {name} AS x JOIN trials AS t ON x.trial_id = t.trial_id "
                          f"WHERE t.study_id = :study ORDER BY {order}")
    for name, columns, order in (
        ("trial_values", "x.objective, x.value, x.value_type", "x.trial_value_id"),
        ("trial_params", "x.param_name, x.param_value, x.distribution_json", "x.param_id"),
        ("trial_user_attributes", "x.key, x.value_json", "x.trial_user_attribute_id"),
        ("trial_system_attributes", "x.key, x.value_json", "x.trial_system_attribute_id"),
        ("trial_intermediate_values", "x.step, x.intermediate_value, x.intermediate_value_type",
         "x.trial_intermediate_value_id"),
    )
}
_SPECIAL = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}
# Attributes are most of the rows (~20 a trial): where the database can, it joins each trial's into one
# JSON object, so 10,000 trials come back as 10,000 texts for 10,000 `json.loads` rather than 200,000
# rows (SQLite ~0.1 s instead of ~0.8 s). Keys are unique per trial, so the object is the same dict.
_OBJECT_OF = {
    "sqlite": "'{' || group_concat(json_quote(x.key) || ':' || x.value_json, ',') || '}'",
    "postgresql": "'{' || string_agg(to_json(x.key)::text || ':' || x.value_json, ',' ORDER BY x.{id}) || '}'",
}


_ATTRIBUTES = {"trial_user_attributes": "trial_user_attribute_id", "trial_system_attributes": "trial_system_attribute_id"}


def _attribute_objects(dialect: str, table: str, id_column: str) -> sqlalchemy.TextClause:
    """(trial_id, every attribute of the trial as one JSON object) for each trial of the study with any."""
    return sqlalchemy.text(f"SELECT trial_id, {_OBJECT_OF[dialect].replace('{id}', id_column)} FROM "
                           f"(SELECT x.* FROM {table} AS x JOIN trials AS t ON x.trial_id = t.trial_id "
                           f"WHERE t.study_id = :study ORDER BY x.{id_column}) AS x GROUP BY trial_id")


class UnknownLayout(StorageError):
    """The database does not have the tables this module reads: use Optuna's own read."""


def read_all_trials(storage: RDBStorage, study_id: int) -> list[FrozenTrial]:
    """What `storage.get_all_trials(study_id, deepcopy=False)` returns, read in six plain queries."""
    try:
        with storage.engine.connect() as conn:
            trials = conn.execute(_TRIALS, {"study": study_id}).all()
            rows = {name: _by_trial(conn.execute(query, {"study": study_id}).all()) for name, query in _ROWS.items()
                    if not (name in _ATTRIBUTES and conn.dialect.name in _OBJECT_OF)}
            for name, id_column in _ATTRIBUTES.items():
                if name not in rows:
                    rows[name] = {trial_id: [text] for trial_id, text in conn.execute(
                        _attribute_objects(conn.dialect.name, name, id_column), {"study": study_id})}
    except sqlalchemy.exc.SQLAlchemyError as e:
        # A missing table or column (PostgreSQL: a ProgrammingError; SQLite: "no such table/column") is a
        # layout this module does not know; anything else fails as Optuna's own read fails.
        if isinstance(e, sqlalchemy.exc.ProgrammingError) or "no such" in str(e):
            raise UnknownLayout(str(e).splitlines()[0]) from None
        raise StorageInternalError(f"reading the trials failed: {str(e).splitlines()[0]}") from e
    return [_frozen(t, {name: by_trial.get(t.trial_id, ()) for name, by_trial in rows.items()}) for t in trials]


def _by_trial(rows) -> dict[int, list[tuple]]:
    grouped = defaultdict(list)
    for trial_id, *rest in rows:
        grouped[trial_id].append(rest)
    return grouped


def _attrs(rows: list) -> dict:
    """key -> value of (key, value_json) rows, as Optuna's `json.loads` of each would give, in one parse
    (a long search has tens of attributes per trial); or of [one JSON object] the database joined."""
    if not rows:
        return {}
    if isinstance(rows[0], str):
        return json.loads(rows[0])
    return json.loads("{" + ",".join(f"{_quoted(key)}:{text}" for key, text in rows) + "}")


_KEYS: dict[str, str] = {}


def _quoted(key: str) -> str:
    quoted = _KEYS.get(key)
    if quoted is None:
        quoted = _KEYS[key] = json.dumps(key)
    return quoted


def _frozen(trial, rows: dict[str, list[tuple]]) -> FrozenTrial:
    values = None
    if rows["trial_values"]:
        values = [0] * len(rows["trial_values"])
        for objective, value, kind in rows["trial_values"]:
            values[objective] = _SPECIAL.get(kind, value)
    distributions = {name: json_to_distribution(text) for name, _, text in rows["trial_params"]}
    return FrozenTrial(
        number=trial.number, state=TrialState[trial.state], value=None, values=values,
        datetime_start=_local(trial.datetime_start), datetime_complete=_local(trial.datetime_complete),
        params={name: distributions[name].to_external_repr(value) for name, value, _ in rows["trial_params"]},
        distributions=distributions,
        user_attrs=_attrs(rows["trial_user_attributes"]), system_attrs=_attrs(rows["trial_system_attributes"]),
        intermediate_values={step: _SPECIAL.get(kind, value) for step, value, kind in rows["trial_intermediate_values"]},
        trial_id=trial.trial_id)


def _local(utc: datetime | None) -> datetime | None:
    """Optuna stores naive UTC and hands out naive local time."""
    return None if utc is None else utc.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
