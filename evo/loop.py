"""The search loop: asynchronous, steady-state, resumable; the engine's calls (`evo.engine.Engine`:
plan, propose, start, run, tell) on every device at once.

Whenever a device is free, the next child starts on it: first any trial a dead or
interrupted process left unfinished, then a re-evaluation of a best genome that has too
few seeds, then a proposal. Proposals are prepared in worker threads while devices are
busy (unless the strategy asks for exact sequential semantics), committed to the
population repository by this thread alone, run by the runner in the device's worktree,
and told to the store. All state lives in the store and git, so `run` after any kind of
stop continues where the search left off.

The same loop is a worker of a search shared by several hosts (`evo.hosts.SharedHosts`):
then a child becomes a trial only inside the store's claim, after a fresh look at the
study (the trial limit, a genome another host is training, a re-run someone already took).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import signal
import time
from typing import Callable

from evo.devices import Slot, parse_devices
from evo.engine import (AUTO, INTERRUPTED_STOP, BackoffSpec, Engine, LimitSpec, NoiseSpec, Order, PromotionSpec,
                        RunOptions, StopKind, StopReason, Ticket, fix_ladder)
from evo.engine._explain import unless_nothing_succeeded
from evo.hosts import OneHost
from evo.proposers import Proposer
from evo.runner import TrialRunner
from evo.schedulers import Child, Run
from evo.strategies import Strategy
from population.devices import DeviceRow, DevicesRecord, RunFacts
from population.search import Search

__all__ = ["AUTO", "BackoffSpec", "Child", "LimitSpec", "NoiseSpec", "PromotionSpec", "RunOptions", "SearchLoop", "Slot",
           "StopKind", "StopReason", "fix_ladder", "parse_devices"]

PROGRESS_SECONDS = 1.0  # how often running trials' progress is written and sent as an event
SHUTDOWN_WAIT = 5.0    # seconds a stop waits for proposals to end (an LLM call in flight is abandoned at once)
DEVICE_EVENTS = ("started", "finished", "lost", "waiting", "resumed")  # what changes devices.json at once


class SearchLoop:
    """Runs a search until its trial limit, its time limit, or a stop request: the engine's ask/tell
    (`evo.engine.Engine`) on every device at once, with proposals written while the devices train.

    >>> loop = SearchLoop(search, GreedyStrategy(), OfflineProposer(), parse_devices("cpu"),
    ...                   RunOptions(limits=LimitSpec(trials=10)))  # doctest: +SKIP
    >>> loop.run()                                                                                                  # doctest: +SKIP

    Args:
        search: the open search.
        strategy, proposer: who plans and who writes children.
        slots: where trials run (`parse_devices`).
        options: this run's limits and switches.
        on_event: called as (kind, info) for each kind of `evo.events.EventKind` (the trials' progress
            about once a second).
        python: the interpreter that runs trials (default: this one).
        runner: runs one genome (default: a `TrialRunner` over the search's harness).
        hosts: who else works on the search (default: `SharedHosts` for a shared search, which must be
            opened with `Search.open(name, worker=True)`; else nobody, `OneHost`).
    """

    def __init__(self, search: Search, strategy: Strategy, proposer: Proposer, slots: list[Slot], options: RunOptions,
                 *, on_event: Callable[[str, dict], None] | None = None, python: str | None = None,
                 runner: TrialRunner | None = None, hosts: OneHost | None = None):
        self.search, self.strategy, self.proposer, self.slots = search, strategy, proposer, slots
        self._told = on_event or (lambda kind, info: None)
        self.engine = Engine(search, strategy, proposer, options, slots=slots, hosts=hosts, runner=runner,
                             on_event=self._event, python=python)
        self.hosts, self.on_event = self.engine.hosts, self.engine.on_event
        self.stop = self.engine.stop           # set on Ctrl-C: stop planning, kill running trials
        self._pending: dict[cf.Future, Order] = {}   # proposals being prepared (FIFO)
        self._running: dict[cf.Future, Ticket] = {}
        self._devices_written = 0.0

    @property
    def error(self) -> str | None:
        """The error that stopped the search, if one did."""
        return self.engine.failure.message if self.engine.failure else None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> StopReason:
        """Run until done; return why it stopped. Records survive any exception or signal."""
        self.engine.check()
        reason = INTERRUPTED_STOP
        with self.search.lock(), cf.ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="trial") as runs:
            # Not a `with` block: on a stop we must not wait for an LLM call still in flight.
            proposals = cf.ThreadPoolExecutor(max_workers=max(1, len(self.slots)), thread_name_prefix="propose")
            self._runs, self._proposals = runs, proposals
            try:
                self.engine.begin()
                reason = self._outlast_outages()
            finally:
                self._shut_down(proposals)
                self.engine.end()
        reason = unless_nothing_succeeded(self.search, reason, self.engine.options.limits.trials)
        self.on_event("stopped", {"reason": str(reason), "kind": reason.kind.value})
        return reason

    def _outlast_outages(self) -> StopReason:
        """Recover, then run the steady state; a shared search's worker waits out a lost database or remote."""
        while True:
            try:
                self.engine.recover()
                return self._steady_state()
            except Exception as e:
                if not self.hosts.transient(e):
                    raise
                gave_up = self.hosts.wait_out(e, self.engine)
                if self.stop.is_set():  # stopped while waiting: leave now, the rest is the other workers'
                    return INTERRUPTED_STOP
                if gave_up is not None:
                    self.engine.failure = StopReason(StopKind.ERROR, gave_up)
                    return self.engine.failure

    def _steady_state(self) -> StopReason:
        """Plan, launch and finish trials until a limit says stop and nothing runs any more."""
        engine = self.engine
        while True:
            if self.hosts.trials_max_age is None:
                engine.forget()
            self.hosts.poll(engine)
            limit = engine.limit_reached()
            if limit is None:
                self._plan_more()
            if limit is None or not limit.halts:
                self._launch_ready()
            if not self._running and limit is None and not self._pending and not engine.ready:
                # A launch may have used up a proposal without running it (a duplicate or an
                # invalid proposal): plan again before concluding there is nothing to do.
                self._plan_more()
                if self._pending or engine.ready:
                    continue
            drained = not self._pending and not engine.ready
            # Done when a limit says so, or when nothing is left to plan (an API outage holds proposals back: wait).
            done = limit is not None and (limit.halts or drained) or drained and not engine.outages.down
            if not self._running and done:
                reason = self._stop_reason()
                if reason is not None:
                    return reason
                if self._pending or engine.ready:
                    continue
            self._wait()

    def _stop_reason(self) -> StopReason | None:
        """Why to stop, now that nothing runs here and nothing is left to plan; None to go on.

        Decided on one fresh view of the trials, planned from once more: from the few seconds old
        view a shared worker plans from, a worker waiting while another host ran the seed saw no
        parent, then (in the gap between two trials there) nothing running, and quit; a survivor
        counted too few trials and said "nothing left to plan" instead of the limit it reached."""
        engine = self.engine
        engine.forget()
        limit = engine.limit_reached()
        if limit is not None:
            return limit
        self._plan_more()
        if self._pending or engine.ready:
            return None
        if engine.failure is not None:
            return engine.failure
        if any(t.state == "RUNNING" for t in engine.trials()):  # on another host: a parent to be, or a failure to re-run
            return None
        return StopReason(StopKind.EXHAUSTED, "nothing left to plan")

    def _shut_down(self, proposals: cf.ThreadPoolExecutor) -> None:
        self.stop.set()  # kill whatever still runs; their trials are recorded as interrupted
        self.proposer.close()  # abandons LLM calls in flight and kills agents: their proposals end at once
        proposals.shutdown(wait=False, cancel_futures=True)
        for future in list(self._running):
            self._unless_away(self._finish, future)
        cf.wait(self._pending, timeout=SHUTDOWN_WAIT)
        pending, self._pending = self._pending, {}
        for future in pending:  # prepared but never run: what an LLM was paid for is kept
            if future.done() and not future.cancelled() and future.exception() is None:
                self._unless_away(self.engine.keep_unrun, future.result())
        self._write_devices()

    def abandon(self) -> None:
        """Kill everything this loop started, at once (a second Ctrl-C, before the process exits):
        running trials and agents. Their trials stay RUNNING in the store; the next run marks
        them interrupted and runs them again, as after a kill -9."""
        self.stop.set()
        self.proposer.close()
        for ticket in list(self._running.values()):
            if ticket.pid:
                try:
                    os.killpg(ticket.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _unless_away(self, action, *args) -> None:
        """Do `action` while stopping; a shared worker whose database is away leaves it undone (its
        trials go stale and are re-run elsewhere) instead of failing the stop."""
        try:
            action(*args)
        except Exception as e:
            if not self.hosts.transient(e):
                raise

    def _wait(self) -> None:
        """Sleep until a trial ends or a proposal becomes ready (a ready one waits for a device, not us)."""
        waiting = list(self._running) + [f for f in self._pending if not f.done()]
        if waiting:
            done, _ = cf.wait(waiting, timeout=1.0, return_when=cf.FIRST_COMPLETED)
        else:
            done = set()
            self.stop.wait(self.hosts.idle_wait)
        for future in done:
            if future in self._running:
                self._finish(future)
        busy = self._running or self.engine.outages.down or self._pending
        if busy and time.time() - self._devices_written > PROGRESS_SECONDS:
            rows = self._write_devices()  # keeps `evo status` showing each trial's progress and each proposal's
            self.on_event("progress", {"slots": rows, "waiting": self.engine.outages.info(),
                                       "proposals": self._in_flight()})

    # -- planning and launching --------------------------------------------------------

    def _free_slots(self) -> list[Slot]:
        busy = {t.slot.name for t in self.engine.running.values()}
        return [s for s in self.slots if s.name not in busy]

    def _plan_more(self) -> None:
        """Order proposals (and queue known genomes) until every device has a child prepared (one per free
        device when the strategy wants sequential semantics), the trial limit is spoken for, or the
        schedulers wait."""
        engine = self.engine
        while True:
            room = len(self.slots) if self.strategy.prefetch else len(self._free_slots())
            if len(self._pending) + len(engine.ready) >= room:
                return
            decision = engine.plan(in_flight=len(self._pending))
            if isinstance(decision, Run):
                continue
            if not isinstance(decision, Order):
                return
            self._pending[self._proposals.submit(engine.propose, decision)] = decision

    def _next_child(self) -> Child | None:
        """A queued child, else the oldest proposal once it is back (None: nothing ready yet)."""
        engine = self.engine
        if engine.ready:
            return engine.ready.pop(0)
        while self._pending:
            future = next(iter(self._pending))
            if not future.done():
                return None
            child = engine.received(self._pending.pop(future), future.result)
            if child is not None or engine.failure is not None:
                return child
        return None

    def _launch_ready(self) -> None:
        while self._free_slots() and not self.stop.is_set():
            child = self._next_child()
            if child is None:
                return
            ticket = self.engine.start(child, self._free_slots()[0])
            if ticket is not None:
                self._running[self._runs.submit(self.engine.run, ticket)] = ticket

    def _finish(self, future: cf.Future) -> None:
        self.engine.forget()
        ticket = self._running.pop(future)
        try:
            self.engine.tell(ticket, future.result())
        except Exception as e:
            if self.hosts.transient(e):  # keep the result: it is told once the database is back
                self._running[future] = ticket
            raise

    # -- what `evo status` shows --------------------------------------------------------

    def _event(self, kind: str, info: dict) -> None:
        if kind in DEVICE_EVENTS:
            self._write_devices()
        self._told(kind, info)

    def _write_devices(self) -> list[dict]:
        """What each device is doing, for `evo status` while the search runs (and returned, as dicts)."""
        now, o = time.time(), self.engine.options.limits
        busy = {t.slot.name: t for t in self.engine.running.values()}
        rows = [DeviceRow(s.name, s.device) if s.name not in busy else
                DeviceRow(s.name, s.device, trial=busy[s.name].number, seconds=round(now - busy[s.name].started, 1),
                          fraction=busy[s.name].fraction, loss=busy[s.name].loss) for s in self.slots]
        run = RunFacts(target=o.trials, hours=o.hours, started=o.since or self.engine.started,
                       finished=self.engine.finished_here, stopping=self.stop.is_set())
        DevicesRecord(pid=os.getpid(), updated=now, slots=rows, run=run, waiting=self.engine.outages.info(),
                      proposals=self._in_flight()).write(self.search.paths.devices)
        self._devices_written = now
        return [dataclasses.asdict(r) for r in rows]

    def _in_flight(self) -> list[dict]:
        """The proposals being written now: operator, parents, proposer (a mix's member once drawn), model,
        phase, tokens so far where known, and seconds since planned."""
        now = time.time()
        shown = [order.facts.snapshot() for future, order in list(self._pending.items()) if not future.done()]
        return [{**facts, "seconds": round(now - facts["started"], 1)} for facts in shown]
