"""A study's trials as records, reading only what changed since the last read (RDB storages).

Split out of the store by job, as Optuna splits `_cached_storage.py` out of its RDB storage. Optuna
refuses to change a finished trial, so finished trials are read once and their records kept in
number order; each read asks for the unfinished ones, those that finished since the last read,
and any new ones (numbers are dense: probing stops at the first that does not exist), and copies
the kept list with those put in. A worker reads the trials several times per trial, so this keeps
its cost flat as a search grows (a full read of 900 trials from PostgreSQL takes ~0.6 s on 2
cores, a Python pass over 10,000 kept trials ~10 ms).
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from population._sql_trials import UnknownLayout, read_all_trials

Record = TypeVar("Record")
# More trials than this changed or new since the last read (another process wrote them): read every trial
# again at once instead of one query per trial (probing 10,000 new numbers one by one took ~18 s: bench/catch_up.py).
REREAD_AFTER = 50


class TrialCache(Generic[Record]):
    """Every trial of study `study_id` in `storage`, as `record(trial)`, in number order. Not thread-safe:
    the store reads under its lock."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_id: int, record: Callable[[FrozenTrial], Record]):
        self.storage, self.study_id, self.record = storage, study_id, record
        self._rows: list[Record | None] = []   # finished trials' records by number
        self._unfinished: set[int] = set()
        self._known = 0

    def read(self) -> list[Record]:
        """Every trial, in number order; a finished trial's record is the same object from read to read."""
        if self._known == 0:
            live = self._read_all()
        else:
            live = {t.number: t for t in self.storage.get_all_trials(self.study_id, deepcopy=False,
                                                                     states=(TrialState.RUNNING, TrialState.WAITING))}
            changed = [n for n in self._unfinished if n not in live]
            number = self._known
            # Probe new numbers one query each, but only until so many changed that one full read is cheaper.
            while len(changed) <= REREAD_AFTER and (number in live or self._exists(number)):
                if number not in live:
                    changed.append(number)
                number += 1
            if len(changed) > REREAD_AFTER:
                self._known = 0
                return self.read()
            self._rows.extend([None] * (number - self._known))
            for n in changed:
                t = self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, n))
                if t.state.is_finished():
                    self._rows[n] = self.record(t)
                else:
                    live[n] = t
            self._known = number
        self._unfinished = set(live)
        # Every number below _known is finished (a record in _rows) or unfinished (in live).
        rows = self._rows.copy()
        for n, t in live.items():
            rows[n] = self.record(t)
        return rows

    def _read_all(self) -> dict[int, FrozenTrial]:
        """Read every trial (plain SQL where Optuna's layout is known); keep the finished, return the others."""
        try:
            frozen = read_all_trials(self.storage, self.study_id)
        except UnknownLayout:
            frozen = self.storage.get_all_trials(self.study_id, deepcopy=False)
        self._known = max((t.number for t in frozen), default=-1) + 1
        self._rows = [None] * self._known
        live = {}
        for t in frozen:
            if t.state.is_finished():
                self._rows[t.number] = self.record(t)
            else:
                live[t.number] = t
        return live

    def _exists(self, number: int) -> bool:
        try:
            self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
            return True
        except KeyError:
            return False
