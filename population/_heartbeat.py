"""Heartbeats of the trials one process runs in a shared study, from a thread of their own.

Split out of the store by job, as Optuna splits `_heartbeat.py` out of its storages. A beat the
database does not take is tried again at the next one; once the database answers after a gap,
the trials that another worker failed meanwhile are marked lost, so the caller can stop training
them.
"""

from __future__ import annotations

import threading

import optuna
from optuna.trial import TrialState


class Heartbeats:
    """Beats every trial in `live` (number -> trial id, the store's own dict) every `interval` seconds;
    adds to `lost` (the store's own set) the numbers of those another worker failed meanwhile."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float, live: dict[int, int], lost: set[int]):
        self.storage, self.interval, self.live, self.lost = storage, interval, live, lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)

    def start(self) -> "Heartbeats":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat_forever(self) -> None:
        missed = False
        while not self._stop.is_set():
            # No lock: a beat must never wait for the loop (which may be waiting for the claim). Copying
            # a dict is one step under the GIL.
            live = dict(self.live)
            try:
                for number, trial_id in live.items():
                    self.storage.record_heartbeat(trial_id)
                if missed:
                    for number, trial_id in live.items():
                        if self.storage.get_trial(trial_id).state != TrialState.RUNNING:
                            self.lost.add(number)
                missed = False
            except Exception:  # the database is away: beat again at the next interval
                missed = True
            self._stop.wait(self.interval)
