"""The claim on a shared study: whoever holds it may decide from what the study holds and write
the decision, and no other host decides meanwhile.

Split out of the store by job. On a shared study it is a PostgreSQL transaction-scoped advisory
lock (keys: "evo" and the study's id) held by a connection of its own; on a study one process
owns, there is no one to exclude and it is a re-entrant no-op.
"""

from __future__ import annotations

import contextlib
import threading

import optuna

CLAIM_LOCK = 0x65766F   # "evo": first key of the PostgreSQL advisory lock; the study id is the second


class StudyClaim:
    """`with claim():` holds the study's claim; re-entrant within a thread.

    The lock is released when the block ends, when this process dies (its connection closes), or
    when the connection sits idle in the block for longer than max(60 s, `grace`): a host that
    froze or lost power holds it no longer than that."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, *, shared: bool, grace: int | None):
        self.storage, self.study_id, self.shared, self.grace = storage, study_id, shared, grace
        self._depth = threading.local()

    @contextlib.contextmanager
    def __call__(self):
        if not self.shared or getattr(self._depth, "n", 0):
            self._depth.n = getattr(self._depth, "n", 0) + 1
            try:
                yield
            finally:
                self._depth.n -= 1
            return
        hold = max(60, self.grace or 0)  # far above any honest time inside a claim: a stall must not lose it
        with self.storage.engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{2 * hold}s'")  # outwaits a holder that died silently
            conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = '{hold}s'")
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", (CLAIM_LOCK, self.study_id))
            self._depth.n = 1
            try:
                yield
            finally:
                self._depth.n = 0
