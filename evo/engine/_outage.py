"""An API outage: the proposer's API stopped answering. The engine waits before asking it again,
longer each time it is still down, and the search never stops for it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Outage:
    """Since when the API is down, why, and when to ask it again."""

    since: float
    error: str
    retry_at: float
    tries: int = 1
    delay: float = 0.0   # seconds this wait lasts

    def info(self) -> dict:
        """As devices.json and the progress event show it."""
        return {"since": self.since, "retry_at": self.retry_at, "error": self.error, "tries": self.tries}


class OutageWatch:
    """Whether the API is down, told by each proposal that comes back (`down`, `up`).

    backoff: (first, longest) seconds to wait before asking again; each failed try doubles the wait.
    probing: a proposal asking the API again is in flight (the others meanwhile do without it).
    clock: the wall clock its waits are counted on (a notebook or a test may step its own)."""

    def __init__(self, backoff: tuple[float, float], clock: Callable[[], float] = time.time):
        self.backoff, self.clock = backoff, clock
        self.outage: Outage | None = None
        self.probing = False

    @property
    def down(self) -> bool:
        return self.outage is not None

    def offline_only(self) -> bool:
        """Whether a proposal planned now must do without the API (it is waited out, or asked already)."""
        return self.outage is not None and (self.clock() < self.outage.retry_at or self.probing)

    def failed(self, error: str) -> Outage | None:
        """A proposal found the API down: the new wait, or None when it asked before this wait began (no news)."""
        now = self.clock()
        first, longest = self.backoff
        outage = self.outage
        if outage is not None and now < outage.retry_at:
            return None
        tries = outage.tries + 1 if outage is not None else 1
        delay = min(longest, first * 2 ** (tries - 1))
        self.outage = Outage(since=outage.since if outage else now, error=error, retry_at=now + delay, tries=tries,
                             delay=delay)
        return self.outage

    def answered(self, remote: bool) -> float | None:
        """A proposal came back; if the API wrote it (`remote`), the outage is over: its seconds (else None)."""
        if self.outage is None or not remote:
            return None
        down, self.outage = self.clock() - self.outage.since, None
        return down

    def info(self) -> dict | None:
        return None if self.outage is None else self.outage.info()
