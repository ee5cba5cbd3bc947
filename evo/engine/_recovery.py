"""Recovery: making the store and git agree after a crash, and queuing what was left unfinished
(trials whose process is gone, interrupted trials to re-run, a seed that never succeeded)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from evo.promotion import RUNG_ATTRS
from evo.schedulers import Child
from population.store import INTERRUPTED


def recover_orphans(engine) -> None:
    """Mark trials whose worker is gone as interrupted; kill what they left running on this host."""
    for orphan in engine.hosts.fail_orphans(engine.search):
        if engine.hosts.is_here(orphan):
            kill_leftover(orphan.attrs.get("pid"), engine.target.owns_process)
        engine.on_event("recovered", {"trial": orphan.number, "host": orphan.host})


def queue_reruns(engine, trials) -> None:
    """Queue a re-run of every interrupted trial nobody has re-run (nor queued here) yet."""
    rerun = {t.attrs.get("rerun_of") for t in trials if t.attrs.get("rerun_of") is not None}
    rerun |= {c.rerun_of for c in engine.ready if c.rerun_of is not None}
    for t in trials:
        if t.status == INTERRUPTED and t.commit and t.number not in rerun:
            engine.ready.append(Child(t.operator, t.parents, commit=t.commit, seed=t.seed,
                                      island=int(t.attrs.get("island", 0)), rerun_of=t.number,
                                      attrs={k: t.attrs[k] for k in ("description", "rationale", "proposer", "usage",
                                                                     *RUNG_ATTRS) if k in t.attrs}))


def recover(engine) -> None:
    """Make the store and git agree after a crash, and queue what was left unfinished."""
    search = engine.search
    recover_orphans(engine)
    trials = search.trials()
    engine.hosts.sync(search, trials)
    queue_reruns(engine, trials)
    if not any(t.finished_ok for t in trials) and not any(c.operator == "seed" for c in engine.ready):
        # No genome has ever run successfully: nothing to breed from but the seed. A seed that
        # failed before (a device that was not there, a bug since fixed by `evo reseed`) runs again.
        failed = [t for t in trials if t.operator == "seed" and t.counts]
        if failed:
            engine.on_event("seed", {"trial": failed[-1].number, "status": failed[-1].status,
                                     "error": failed[-1].error,
                                     "replaced": failed[-1].commit != search.config.seed_commit})
        engine.ready.insert(0, Child("seed", [], commit=search.config.seed_commit, seed=search.config.seed,
                                     attrs={"description": "seed genome", "proposer": "seed"}))


def kill_leftover(pid, owns_process) -> None:
    """Kill the process group of a trial whose engine died (kill -9 leaves its child running)."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if owns_process(cmdline):  # the target knows its own processes (a pid may be reused)
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
