"""What a search spent on its proposers' APIs, kept in the study's own attributes.

Split out of the store by job: no trial records a proposal that was dropped or lost to its API,
so the search does, here. Every addition is a read-modify-write made under the study's claim,
so two hosts of a shared search never lose one another's spend.
"""

from __future__ import annotations

import threading
from typing import Callable, ContextManager

import optuna

SPEND_ATTR = "evo_spend_usd"
FAULTS_ATTR = "evo_api_faults"   # proposals lost to their API: count, seconds, calls, tokens, cost
_FAULT_SUMS = ("seconds", "calls", "input_tokens", "output_tokens", "cost_usd")


class SpendLedger:
    """The search's LLM spend and the proposals its API failed, one study attribute each."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, claim: Callable[[], ContextManager],
                 lock: threading.RLock):
        self.storage, self.study_id, self.claim, self.lock = storage, study_id, claim, lock

    @property
    def spend_usd(self) -> float:
        """Every proposal's cost so far, dropped proposals included."""
        return float(self._attr(SPEND_ATTR, 0.0))

    def add_spend(self, usd: float) -> float:
        """Add to the search's LLM spend; return the new total."""
        with self.claim(), self.lock:
            total = self.spend_usd + float(usd)
            self.storage.set_study_user_attr(self.study_id, SPEND_ATTR, total)
            return total

    @property
    def api_faults(self) -> dict:
        """The totals `add_api_fault` keeps (empty when no proposal was lost to its API)."""
        return dict(self._attr(FAULTS_ATTR, {}) or {})

    def add_api_fault(self, usage: dict) -> dict:
        """Count one proposal its API failed (an outage, a dropped or refused connection), with the
        seconds its calls ran and what they had used; return the totals."""
        with self.claim(), self.lock:
            faults = self.api_faults
            faults["proposals"] = int(faults.get("proposals", 0)) + 1
            for key in _FAULT_SUMS:
                faults[key] = round(float(faults.get(key, 0)) + float(usage.get(key) or 0), 6)
            self.storage.set_study_user_attr(self.study_id, FAULTS_ATTR, faults)
            return faults

    def _attr(self, key: str, default):
        return self.storage.get_study_user_attrs(self.study_id).get(key, default)
