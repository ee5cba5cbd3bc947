"""What a running search tells its caller: `on_event(kind, info)`, with `kind` one of `EventKind`.

A leaf module: the engine, the loop and the hosts all emit these, and none imports the others
through it. `kind` reaches the callback as the plain string (`EventKind.FINISHED == "finished"`),
so a callback written before the enum compares as it always did.
"""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    """Every kind of event a search emits, and what its `info` dict holds."""

    PREPARING = "preparing"      # the target prepares its data: profile, data; or a line it printed
    RECOVERED = "recovered"      # a trial whose process is gone was marked interrupted: trial, host
    SEED = "seed"                # a failed seed runs again: trial, status, error, replaced
    STARTED = "started"          # a trial started: trial, slot, operator, parents, description
    PROGRESS = "progress"        # about once a second while trials run: slots, waiting, proposals
    FINISHED = "finished"        # a trial was told: trial, status, value, kept, error, operator, description, ...
    LOST = "lost"                # another worker took this trial over before its result came: trial, status
    WAITING = "waiting"          # the proposer's API stopped answering: error, seconds, since, tries, usage
    RESUMED = "resumed"          # it answers again: seconds
    PROPOSER = "proposer"        # a line a proposer wants in the log (e.g. a mode fallback): line
    OUTAGE = "outage"            # a shared search lost its database or git remote: what, error, patience
    RECONNECTED = "reconnected"  # it is back: what
    STOPPED = "stopped"          # the run stopped: reason, kind


def emitter(on_event):
    """`on_event` as the engine calls it: with the kind's plain string (None: events go nowhere).
    A kind missing from `EventKind` still goes through (tests/test_engine.py keeps the set complete)."""
    if on_event is None:
        return lambda kind, info: None
    return lambda kind, info: on_event(str(kind), info)
