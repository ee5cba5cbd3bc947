"""Trials left RUNNING by a process that is gone, failed as interrupted so they can be re-run.

Split out of the store by job. Two cases: resuming a search one process owns, where every RUNNING
trial is an orphan (`fail_running`, called under the search folder's lock); and a shared study,
where a trial is an orphan once its worker stops beating or is known to have stopped
(`fail_stale`, under the study's claim).
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, ContextManager

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from population.trials import INTERRUPTED, TrialRecord, record_of

BEATING = "evo:heartbeat"   # system attr: the trial's first heartbeat is recorded (see `fail_stale`)
STOPPED = "the process running it stopped (crash, kill or Ctrl-C)"


class Orphans:
    """Finds and fails the orphaned trials of `study`. `live` (number -> trial id) and `lock` are the
    store's: this process's own trials are never orphans. `stale` is filled by Optuna's heartbeat
    callback (`on_stale`) while `fail_stale` runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, study: optuna.Study, study_id: int,
                 claim: Callable[[], ContextManager], lock: threading.RLock, live: dict[int, int]):
        self.storage, self.study, self.study_id = storage, study, study_id
        self.claim, self.lock, self.live = claim, lock, live
        self.stale: list[FrozenTrial] = []

    def on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.stale.append(trial)

    def fail_running(self) -> list[TrialRecord]:
        """Mark every RUNNING trial as interrupted (FAIL) and return them (as they were): for resuming
        after a dead process. Call this only while holding the search's lock: then no live process owns them."""
        with self.lock:
            orphans = self._running()
            for t in orphans:
                self.storage.set_trial_user_attr(t._trial_id, "status", INTERRUPTED)
                self.storage.set_trial_user_attr(t._trial_id, "error", STOPPED)
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            return [record_of(t) for t in orphans]

    def fail_stale(self, *, dead: set[str] = frozenset()) -> list[TrialRecord]:
        """Fail (as interrupted) the RUNNING trials whose worker is gone; return those this call failed.

        Gone means: no heartbeat for the grace period (Optuna's `fail_stale_trials`, whose
        state change is atomic, so two workers never both fail one trial); or recorded by a
        worker in `dead` (the caller knows it stopped: it holds that worker's folder lock); or
        never marked as beating, which under the claim means its worker died between creating
        it and its first heartbeat. Shared studies only; runs inside the claim."""
        with self.claim(), self.lock:
            for trial_id in self.live.values():  # our own trials are alive, however long the database was away
                self.storage.record_heartbeat(trial_id)
            self.stale.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            failed = {t.number: record_of(t) for t in self.stale}
            for t in self._running():
                if t.number in self.live:
                    continue
                if t.user_attrs.get("worker") in dead or not t.system_attrs.get(BEATING):
                    self.storage.set_trial_user_attr(t._trial_id, "status", INTERRUPTED)
                    self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                    failed[t.number] = record_of(t)
            return [failed[n] for n in sorted(failed)]

    def _running(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.RUNNING,))
