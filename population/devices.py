"""devices.json: what each device of the process running a search is doing, written by the
engine's loop about once a second and read by `evo status` (`analysis.summary`).

The record is typed here, in the data layer, so its writer and its reader share one schema.
The JSON is what it has always been:

    {"pid": 123, "updated": 1700000000.0,
     "slots": [{"slot": "cpu0", "device": "cpu", "trial": 7, "seconds": 12.5, "fraction": 0.4, "loss": 3.1}],
     "run": {"target": 50, "hours": null, "started": 1699999000.0, "finished": 6, "stopping": false},
     "waiting": null or {"since": ..., "retry_at": ..., "error": "...", "tries": 2},
     "proposals": [{"operator": "mutate", "parents": [3], "proposer": "anthropic", "started": ..., "seconds": 4.2}]}
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DeviceRow:
    """One device: the trial on it (None: idle), its seconds so far, budget fraction and last loss."""

    slot: str
    device: str
    trial: int | None = None
    seconds: float | None = None
    fraction: float | None = None
    loss: float | None = None


@dataclass
class RunFacts:
    """The running process's limits and pace: trial target, hours, when it started, trials it finished."""

    target: int | None = None
    hours: float | None = None
    started: float | None = None
    finished: int = 0
    stopping: bool = False


@dataclass
class DevicesRecord:
    """The whole of devices.json. `waiting` is an API outage being waited out (see `evo.engine`);
    `proposals` the proposals in flight, as the proposers describe them (free-form facts)."""

    pid: int
    updated: float
    slots: list[DeviceRow] = field(default_factory=list)
    run: RunFacts = field(default_factory=RunFacts)
    waiting: dict | None = None
    proposals: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def write(self, path: Path) -> None:
        """Replace `path` at once: a reader never sees half a record."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, text: str) -> DevicesRecord:
        """The record in `text`; fields a reader does not know are dropped, missing ones take their defaults."""
        state = json.loads(text)
        slots = [DeviceRow(**_known(DeviceRow, row)) for row in state.get("slots") or []]
        return cls(pid=int(state.get("pid") or 0), updated=float(state.get("updated") or 0.0), slots=slots,
                   run=RunFacts(**_known(RunFacts, state.get("run") or {})), waiting=state.get("waiting"),
                   proposals=list(state.get("proposals") or []))

    @classmethod
    def read(cls, path: Path) -> DevicesRecord | None:
        """The record at `path`, or None when it is missing or unreadable (a writer died mid-way)."""
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, TypeError):
            return None


def _known(kind, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in values.items() if k in names}
