"""API keys, held in this process's memory instead of its environment.

The first proposer that needs a key takes it out of `os.environ`: from then on no process
that can read this one's environment (an unsandboxed trial reading /proc/<pid>/environ, a
child started with a copy of the environment) finds it there. Later proposers of the same
process (one per member of an `evo compare`) get it from here; the command proposer hands
the keys to its agent, which needs its API, and redacts them from the agent's log.
"""

from __future__ import annotations

import os

_held: dict[str, str] = {}


def take(name: str) -> str | None:
    """The key in $`name`, moved out of the environment (None when it was never set)."""
    value = os.environ.pop(name, None)
    if value:
        _held[name] = value
    return _held.get(name)


def held() -> dict[str, str]:
    """Every key taken so far, by variable name."""
    return dict(_held)


def redact(text: str) -> str:
    """`text` with every held key replaced by [redacted]."""
    for value in _held.values():
        text = text.replace(value, "[redacted]")
    return text
