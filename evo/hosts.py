"""Who else works on a search: nobody (`OneHost`, the default), or other workers (`SharedHosts`).

The loop asks the same questions either way; the answers differ:

- which RUNNING trials are orphans: on one host, all of them (the folder lock proves their
  process is gone); shared, those whose heartbeats stopped for the grace period, those of a
  dead predecessor in this folder, and those never marked as beating;
- where genomes come from: this host's repository, or also the git remote (fetched when a
  trial names a commit this host lacks, pushed before a new genome's trial exists);
- what to do when the database or the remote goes away: on one host that is an error like
  any other; shared, a worker waits with back-off for up to `patience` seconds and carries
  on, or stops with one line saying what it lost.

Everything that decides from the study and writes the decision runs inside the store's
claim (`TrialStore.claim`), which on one host is a no-op.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Protocol

from population.genomes import RemoteError
from population.search import Search, SearchError
from population.store import LIMITS_ATTR, NO_LIMIT, TrialRecord, is_transient, redact

HOST = socket.gethostname()


class HostedLoop(Protocol):
    """What hosts see of the loop they serve (`evo.engine.Engine`, which imports this module, so the
    contract lives here): its search and clock, its events, its limits, and two chores it does on request."""

    search: Search
    started: float             # when the run started (epoch seconds)
    stop: threading.Event      # set when the run is to stop

    def on_event(self, kind: str, info: dict) -> None: ...

    def limits(self) -> tuple[int | None, float | None]:
        """The trial and hour limits the run works to."""

    def set_limits(self, *, trials: int | None, hours: float | None, since: float | None = None) -> None:
        """Work to these limits from now on (hours counted from `since`; None: as before)."""

    def recover_orphans(self) -> None:
        """Fail trials whose worker is gone and kill what they left running here."""

    def queue_reruns(self, trials: list[TrialRecord]) -> None:
        """Queue a re-run of every interrupted trial nobody has re-run yet."""


class OneHost:
    """A search run by one process on one host: what `evo run` has always done."""

    shared = False
    idle_wait = 0.2     # seconds the loop sleeps when it has nothing to wait on
    salt = ""           # added to the planner's random seed: workers that see the same lineage must not
                        # all draw the same child
    trials_max_age = None  # seconds the loop may plan from trials it read earlier (None: re-read every turn)

    def begin(self, loop: HostedLoop) -> None:
        """Before the first trial: a trial limit given to this run becomes the search's, kept for the runs
        after it; none given means the one recorded (hours count for this run only)."""
        trials, hours = loop.limits()
        loop.set_limits(trials=record_limits(loop.search, trials=trials).get("trials"), hours=hours)

    def end(self, loop: HostedLoop) -> None:
        """After the last trial ended (or was left to others)."""

    def trial_attrs(self) -> dict:
        """What every trial records about where it ran."""
        return {}

    def fail_orphans(self, search: Search) -> list[TrialRecord]:
        """Mark trials whose process is gone as interrupted; return them."""
        return search.store.orphans.fail_running()

    def is_here(self, trial: TrialRecord) -> bool:
        """Whether `trial` ran on this host (so a leftover process of it may be killed here)."""
        return True

    def sync(self, search: Search, trials: list[TrialRecord]) -> None:
        """Make git agree with the store: a trial asked for just before a crash may lack its branch.
        Two git processes whatever the search's length (one per trial took a minute at 10,000)."""
        have = search.repo.branches(f"evo/{search.config.name}/")
        search.repo.set_branches({search.branch(t.number): t.commit for t in trials
                                  if t.commit and search.branch(t.number) not in have})

    def ensure(self, search: Search, commits: list[str]) -> None:
        """Make sure this host's repository holds `commits`."""

    def publish(self, search: Search, commit: str | None) -> None:
        """Make a new genome reachable by every host before its trial exists."""

    def started(self, number: int, commit: str | None) -> None:
        """A trial of this process was recorded."""

    def poll(self, loop: HostedLoop) -> None:
        """Called on every turn of the loop; the shared version looks for stale trials now and then."""

    def transient(self, error: BaseException) -> bool:
        """Whether `error` is an outage worth waiting out."""
        return False

    def wait_out(self, error: BaseException, loop: HostedLoop) -> str | None:
        """Wait for the database and the remote to come back: None when they did, else why the worker stops."""
        raise error


def record_limits(search: Search, **given) -> dict:
    """Make the limits given (not None) the search's, `NO_LIMIT` lifting one; return the search's limits."""
    limits = search.store.attr(LIMITS_ATTR) or {}
    given = {k: None if v == NO_LIMIT else v for k, v in given.items() if v is not None}
    if given:
        limits = {**limits, **given}
        search.store.set_attr(LIMITS_ATTR, limits)
    return limits


class SharedHosts(OneHost):
    """One worker of a search shared by several hosts through PostgreSQL and a git remote.

    >>> search = Search.open("demo", worker=True)                                          # doctest: +SKIP
    >>> SearchLoop(search, strategy, proposer, slots, options, hosts=SharedHosts(search)).run()  # doctest: +SKIP

    Args:
        search: a shared search opened with `worker=True` (its store beats for its trials).
        patience: seconds to keep retrying a lost database or remote before stopping.
    """

    shared = True
    idle_wait = 1.0

    def __init__(self, search: Search, *, patience: float = 600.0):
        if not search.config.shared or not search.store.shared:
            raise SearchError(f"search {search.config.name!r} is not opened as a shared search's worker: "
                              "open it with Search.open(name, worker=True)")
        self.patience = patience
        self.worker = f"{HOST}:{search.folder}"
        self.salt = f":{self.worker}"
        self._unpushed: dict[int, str] = {}        # this worker's trial branches not yet on the remote
        self._next_poll = 0.0
        self._poll_every = max(1.0, float(search.config.heartbeat))
        self.trials_max_age = self._poll_every
        self._lock = threading.Lock()

    def begin(self, loop: HostedLoop) -> None:
        """Start beating; limits this worker was given become the search's, for every worker."""
        trials, hours = loop.limits()
        record_limits(loop.search, trials=trials, hours=hours)
        loop.search.store.start_heartbeats()
        self.refresh_limits(loop, loop.search.trials())

    def end(self, loop: HostedLoop) -> None:
        loop.search.store.stop_heartbeats()
        try:
            loop.search.publish_branches()
        except Exception:  # the remote is away: any host can rebuild these branches from the study
            pass

    def trial_attrs(self) -> dict:
        return {"host": HOST, "worker": self.worker}

    def fail_orphans(self, search: Search) -> list[TrialRecord]:
        return search.store.orphans.fail_stale(dead={self.worker})

    def is_here(self, trial: TrialRecord) -> bool:
        return trial.host == HOST

    def sync(self, search: Search, trials: list[TrialRecord]) -> None:
        search.sync(trials)

    def ensure(self, search: Search, commits: list[str]) -> None:
        if search.repo.missing(commits):
            search.sync()
            if search.repo.missing(commits):
                raise RemoteError(f"the remote {search.config.remote} lacks genome(s) "
                                  f"{', '.join(c[:12] for c in search.repo.missing(commits))}")

    def publish(self, search: Search, commit: str | None) -> None:
        """Push the genome, with the branches of this worker's earlier trials, in one push."""
        with self._lock:
            branches = dict(self._unpushed)
        search.publish([commit] if commit else [], trials=branches)
        with self._lock:
            for number in branches:
                self._unpushed.pop(number, None)

    def started(self, number: int, commit: str | None) -> None:
        if commit:
            with self._lock:
                self._unpushed[number] = commit

    def poll(self, loop: HostedLoop) -> None:
        """Every heartbeat interval: fail stale trials (queuing their re-runs) and re-read the limits."""
        now = time.time()
        if now < self._next_poll:
            return
        self._next_poll = now + self._poll_every
        loop.recover_orphans()
        trials = loop.search.trials()
        loop.queue_reruns(trials)
        self.refresh_limits(loop, trials)

    def refresh_limits(self, loop: HostedLoop, trials: list[TrialRecord]) -> None:
        """The search's trial and hour limits, shared by every worker (hours count from its first trial)."""
        limits = loop.search.store.attr(LIMITS_ATTR) or {}
        starts = [t.started.timestamp() for t in trials if t.started is not None]
        loop.set_limits(trials=limits.get("trials"), hours=limits.get("hours"),
                        since=min(starts) if starts else loop.started)

    def transient(self, error: BaseException) -> bool:
        return isinstance(error, RemoteError) or is_transient(error)

    def wait_out(self, error: BaseException, loop: HostedLoop) -> str | None:
        """Retry with back-off (1, 2, 4 ... 30 s) until both the database and the remote answer."""
        search = loop.search
        what = (f"the git remote {search.config.remote}" if isinstance(error, RemoteError)
                else f"the database {redact(search.config.storage)}")
        reason = _one_line(error)
        loop.on_event("outage", {"what": what, "error": reason, "patience": self.patience})
        deadline, delay = time.time() + self.patience, 1.0
        while not loop.stop.is_set():
            if loop.stop.wait(min(delay, max(0.0, deadline - time.time()))):
                break
            try:
                search.store.ping()
                search.repo.check_remote(search.config.remote)
                loop.on_event("reconnected", {"what": what})
                return None
            except Exception as e:
                if not self.transient(e):
                    raise
                what = (f"the git remote {search.config.remote}" if isinstance(e, RemoteError)
                        else f"the database {redact(search.config.storage)}")
                reason = _one_line(e)
            if time.time() >= deadline:
                return (f"lost {what} for {self.patience:g} s ({reason}); stopping: "
                        "its trials in flight will be re-run by the other workers")
            delay = min(30.0, delay * 2)
        return None


def _one_line(error: BaseException) -> str:
    """The first line of what went wrong, from the deepest cause that says something."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:200]
