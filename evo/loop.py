"""The search loop: asynchronous, steady-state, resumable.

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
import enum
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna

from evo.devices import Slot, check_slots, parse_devices, visible_gpus
from evo.hosts import OneHost, SharedHosts
from evo.proposers import (Genome, Proposal, ProposalContext, Proposer, ProposerError, ProposerUnavailable, cap_proposal,
                           hyperparameter_values)
from evo.promotion import DEFAULT_TOP, LADDER_ATTR, RUNG_ATTRS, Rung, describe
from evo.pruners import make_pruner
from evo.runner import Limits, TrialResult, TrialRunner
from evo.schedulers import Child, Propose, Run, Snapshot, chain, decide
from evo.search import DataCheck, check_harness
from evo.targets import target_of
from evo.strategies import NoParentError, Plan, Strategy
from population.genomes import genome_hash
from population.importer import check_runnable
from population.lineage import MIN_GAIN_ATTR, Lineage, auto_min_gain, genome_key
from population.search import Search, SearchError
from population.store import DUPLICATE, INTERRUPTED, INVALID, OK

AUTO = "auto"  # RunOptions.min_gain: a multiple of the measured noise floor

__all__ = ["AUTO", "Child", "RunOptions", "SearchLoop", "Slot", "StopKind", "StopReason", "parse_devices"]


class StopKind(enum.Enum):
    """Why a search stopped."""

    TRIALS = "trials"            # reached --trials
    HOURS = "hours"              # reached --hours
    COST = "cost"                # reached --max-cost-usd
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM or a caller's stop
    ERROR = "error"              # something no retry fixes (a rejected key, no parent to breed from)
    EXHAUSTED = "exhausted"      # nothing left to plan


@dataclass(frozen=True)
class StopReason:
    """A stop, as a value: its kind and the sentence a person reads."""

    kind: StopKind
    message: str

    @property
    def halts(self) -> bool:
        """Whether children already prepared must not start either (a trial or cost limit lets them run)."""
        return self.kind in (StopKind.INTERRUPTED, StopKind.ERROR, StopKind.HOURS)

    def __str__(self) -> str:
        return self.message


INTERRUPTED_STOP = StopReason(StopKind.INTERRUPTED, "interrupted")


@dataclass(kw_only=True)
class RunOptions:
    """How long and how a search runs this time (not fixed: each `evo run` may change them).

    trials: total finished trials in the search, seed included; it becomes the search's limit, which
        later runs keep when given None (`population.store.NO_LIMIT` lifts it).
    hours: wall-clock limit of this run (counted from `since`).
    reeval: extra seeds for a genome that becomes the best.
    noise_runs: extra seeds for the seed genome before any child is planned: they measure the
        noise floor (`Lineage.noise_sd`) that `min_gain="auto"` is a multiple of.
    min_gain: how much better than the best a result must be to count as better (kept, and
        the best from then on): a number in val_bpb, or "auto" for `NOISE_MULTIPLE` times the
        noise floor measured so far (needs noise_runs >= 1). Recorded on every trial.
    prune: stop children whose loss is clearly behind (with `pruner`, or the default rule).
    pruner: the Optuna pruner `prune` uses (default: `evo.pruners.make_pruner()`).
    max_vram_gb: an Optuna constraint on peak memory.
    max_memory_gb: memory (RSS) one trial's processes may use before they are stopped as oom
        (default: 85% of the machine's memory shared among the slots).
    max_cost_usd: stop proposing once the LLM spend reaches this.
    since: when `hours` starts counting (epoch seconds; default: when the run starts). A shared
        search's workers count from its first trial.
    promote: a ladder of larger scales (`evo.promotion.parse_ladder`); the top `promote_top`
        fraction of the genomes scored at each rung is re-run at the next. Fixed for a search
        once a run used it.
    api_backoff: (first, longest) seconds to wait before asking a proposer's API again once it
        stopped answering; each failed try doubles the wait. The search never stops for an outage.
    reeval_while_waiting: while the API is down, idle devices re-evaluate the best genomes until
        each has this many evaluations (0: they wait).
    """

    trials: int | None = None
    hours: float | None = None
    reeval: int = 0
    noise_runs: int = 0
    min_gain: float | str = 0.0
    prune: bool = False
    pruner: optuna.pruners.BasePruner | None = None
    max_vram_gb: float | None = None
    max_memory_gb: float | None = None
    max_cost_usd: float | None = None
    since: float | None = None
    promote: tuple[Rung, ...] = ()
    promote_top: float = DEFAULT_TOP
    api_backoff: tuple[float, float] = (15.0, 600.0)
    reeval_while_waiting: int = 3

    def __post_init__(self):
        if not 0 < self.promote_top < 1:
            raise ValueError(f"--promote-top is the fraction of a rung promoted to the next: above 0 and below 1, "
                             f"not {self.promote_top:g}")
        if self.min_gain == AUTO:
            if self.noise_runs < 1:
                raise ValueError("--min-gain auto needs a measured noise floor: add --noise-runs K (e.g. 3), "
                                 "or give --min-gain a number")
        elif not isinstance(self.min_gain, (int, float)) or not math.isfinite(self.min_gain) or self.min_gain < 0:
            raise ValueError(f"--min-gain must be 'auto' or a number >= 0, not {self.min_gain!r}")
        if self.noise_runs < 0 or self.reeval < 0:
            raise ValueError("noise_runs and reeval count seeds: they must be >= 0")

    def min_gain_now(self, lineage: Lineage) -> float:
        """The min gain a result finishing now must beat the best by (see `population.lineage`)."""
        return auto_min_gain(lineage.noise_sd()) if self.min_gain == AUTO else float(self.min_gain)

    def pruner_in_use(self) -> optuna.pruners.BasePruner | None:
        """The pruner that decides, or None when this run does not prune."""
        if not self.prune:
            return None
        return self.pruner or make_pruner()


@dataclass
class _Busy:
    """What one device is doing right now."""

    slot: Slot
    trial: int
    tree: str
    started: float = field(default_factory=time.time)
    fraction: float = 0.0
    loss: float | None = None
    pid: int | None = None


@dataclass
class _Outage:
    """The proposer's API stopped answering: since when, why, and when to ask it again."""

    since: float
    error: str
    retry_at: float
    tries: int = 1


class SearchLoop:
    """Runs a search until its trial limit, its time limit, or a stop request.

    >>> loop = SearchLoop(search, GreedyStrategy(), OfflineProposer(), parse_devices("cpu"), RunOptions(trials=10))  # doctest: +SKIP
    >>> loop.run()                                                                                                  # doctest: +SKIP

    Args:
        search: the open search.
        strategy, proposer: who plans and who writes children.
        slots: where trials run (`parse_devices`).
        options: this run's limits and switches.
        on_event: called as (kind, info) for "preparing", "recovered", "seed" (a failed seed runs again),
            "started", "progress" (each running trial's fraction, loss and seconds, about once a
            second, with the proposals in flight), "finished", "waiting" (the API stopped answering),
            "resumed" (it answers again), "proposer" (a line a proposer wants in the log, e.g. a mode
            fallback) and "stopped".
        python: the interpreter that runs trials (default: this one).
        runner: runs one genome (default: a `TrialRunner` over the search's harness).
        hosts: who else works on the search (default: `SharedHosts` for a shared search, which must be
            opened with `Search.open(name, worker=True)`; else nobody, `OneHost`).
    """

    def __init__(self, search: Search, strategy: Strategy, proposer: Proposer, slots: list[Slot], options: RunOptions,
                 *, on_event: Callable[[str, dict], None] | None = None, python: str | None = None,
                 runner: TrialRunner | None = None, hosts: OneHost | None = None):
        self.search, self.strategy, self.proposer, self.slots, self.options = search, strategy, proposer, slots, options
        self.on_event = on_event or (lambda kind, info: None)
        self.python = python or sys.executable
        self.target = target_of(search.config)
        self.runner = runner or self.target.runner(search, python=self.python)
        self.data_check = DataCheck(search, self.runner.data)
        # A shared search's study has other writers: treating it as this host's alone would fail their trials.
        self.hosts = hosts or (SharedHosts(search) if search.config.shared else OneHost())
        self._recovered = False
        self._snapshot, self._snapshot_at = None, 0.0   # see _trials
        self.stop = threading.Event()          # set on Ctrl-C: stop planning, kill running trials
        self.started = time.time()
        self._pending: list[cf.Future] = []     # proposals being prepared (FIFO)
        self._ready: list[Child] = []           # children ready to run (re-runs, re-evaluations)
        self._running: dict[cf.Future, _Busy] = {}
        self._plans = 0
        self._devices_written = 0.0
        self._error: StopReason | None = None
        self._outage: _Outage | None = None
        self._finished_here = 0                  # trials this run told (for the pace `evo status` shows)
        self._probe: cf.Future | None = None    # the proposal asking a down API again
        self._flight: dict[cf.Future, ProposalFacts] = {}  # each pending proposal's facts, for `evo status`

    @property
    def error(self) -> str | None:
        """The error that stopped the search, if one did."""
        return self._error.message if self._error else None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> StopReason:
        """Run until done; return why it stopped. Records survive any exception or signal."""
        check_runnable(self.search)
        fix_ladder(self.search, self.options.promote)
        check_slots(self.slots, visible_gpus(self.search))
        self.search.store.pruner = self.options.pruner_in_use()
        self.search.store.name_metric(self.search.config.metric)  # a search made before metrics were named
        reason = INTERRUPTED_STOP
        with self.search.lock(), cf.ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="trial") as runs:
            # Not a `with` block: on a stop we must not wait for an LLM call still in flight.
            proposals = cf.ThreadPoolExecutor(max_workers=max(1, len(self.slots)), thread_name_prefix="propose")
            self._runs, self._proposals = runs, proposals
            try:
                self._prepare_data()
                check_harness(self.search)
                self.data_check.verify()
                self.hosts.begin(self)
                reason = self._outlast_outages()
            finally:
                self._shut_down(proposals)
                self.hosts.end(self)
        reason = self._unless_nothing_succeeded(reason)
        self.on_event("stopped", {"reason": str(reason), "kind": reason.kind.value})
        return reason

    def _outlast_outages(self) -> StopReason:
        """Recover, then run the steady state; a shared search's worker waits out a lost database or remote."""
        while True:
            try:
                if not self._recovered:
                    self._recover()
                    self._recovered = True
                return self._steady_state()
            except Exception as e:
                if not self.hosts.transient(e):
                    raise
                gave_up = self.hosts.wait_out(e, self)
                if self.stop.is_set():  # stopped while waiting: leave now, the rest is the other workers'
                    return INTERRUPTED_STOP
                if gave_up is not None:
                    self._error = StopReason(StopKind.ERROR, gave_up)
                    return self._error

    def _steady_state(self) -> StopReason:
        """Plan, launch and finish trials until a limit says stop and nothing runs any more."""
        while True:
            if self.hosts.trials_max_age is None:
                self._snapshot = None
            self.hosts.poll(self)
            limit = self._limit_reached()
            if limit is None:
                self._plan_more()
            if limit is None or not limit.halts:
                self._launch_ready()
            if not self._running and limit is None and not self._pending and not self._ready:
                # A launch may have used up a proposal without running it (a duplicate or an
                # invalid proposal): plan again before concluding there is nothing to do.
                self._plan_more()
                if self._pending or self._ready:
                    continue
            drained = not self._pending and not self._ready
            # Done when a limit says so, or when nothing is left to plan (an API outage holds proposals back: wait).
            done = limit is not None and (limit.halts or drained) or drained and self._outage is None
            if not self._running and done:
                reason = self._stop_reason()
                if reason is not None:
                    return reason
                if self._pending or self._ready:
                    continue
            self._wait()

    def _stop_reason(self) -> StopReason | None:
        """Why to stop, now that nothing runs here and nothing is left to plan; None to go on.

        Decided on one fresh view of the trials, planned from once more: from the few seconds old
        view a shared worker plans from, a worker waiting while another host ran the seed saw no
        parent, then (in the gap between two trials there) nothing running, and quit; a survivor
        counted too few trials and said "nothing left to plan" instead of the limit it reached."""
        self._snapshot = None
        limit = self._limit_reached()
        if limit is not None:
            return limit
        self._plan_more()
        if self._pending or self._ready:
            return None
        if self._error is not None:
            return self._error
        if any(t.state == "RUNNING" for t in self._trials()):  # on another host: a parent to be, or a failure to re-run
            return None
        return StopReason(StopKind.EXHAUSTED, "nothing left to plan")

    def _shut_down(self, proposals: cf.ThreadPoolExecutor) -> None:
        self.stop.set()  # kill whatever still runs; their trials are recorded as interrupted
        self.proposer.close()  # abandons LLM calls in flight and kills agents: their proposals end at once
        proposals.shutdown(wait=False, cancel_futures=True)
        for future in list(self._running):
            self._unless_away(self._finish, future)
        cf.wait(self._pending, timeout=SHUTDOWN_WAIT)
        self._flight.clear()
        for future in self._pending:  # prepared but never run: what an LLM was paid for is kept
            if future.done() and not future.cancelled() and future.exception() is None:
                self._unless_away(self._keep_unrun, future.result())
        self._pending.clear()
        self._write_devices()

    def _keep_unrun(self, child: Child) -> None:
        """A proposal the stop left unrun. An offline one costs nothing and goes; an LLM's was paid
        for: its cost counts, and it is recorded (a valid child as interrupted, so the next run
        trains it; a failed one as invalid) with its prompt and response files."""
        p = child.proposal
        if p is None or not (p.usage.get("calls") or p.usage.get("aborted_calls")):
            return
        if p.usage.get("cost_usd"):
            self.search.store.add_spend(float(p.usage["cost_usd"]))
        search = self.search
        lineage = search.lineage()
        parent_commits = [lineage.by_number[n].commit for n in child.parents if n in lineage.by_number]
        attrs = self._trial_attrs(child)
        if p.ok:
            child.commit = child.commit or search.repo.commit(p.files, parents=parent_commits,
                                                              message=_commit_message(child, p))
            if not child.published:
                self.hosts.publish(search, child.commit)
            attrs.update(commit=child.commit, tree=search.repo.tree_of(child.commit))
        with search.store.claim():
            number = search.store.start({**attrs, "seed": child.seed}, params=self._params(child))
        self._write_trial_files(number, p, child.commit if p.ok else None, parent_commits)
        if p.ok:
            search.repo.set_branch(search.branch(number), child.commit)
            search.store.finish(number, status=INTERRUPTED, error="the search stopped before it ran; the next run "
                                "trains it")
        else:
            search.store.finish(number, status=INVALID, error=p.error)

    def abandon(self) -> None:
        """Kill everything this loop started, at once (a second Ctrl-C, before the process exits):
        running trials and agents. Their trials stay RUNNING in the store; the next run marks
        them interrupted and runs them again, as after a kill -9."""
        self.stop.set()
        self.proposer.close()
        for busy in list(self._running.values()):
            if busy.pid:
                try:
                    os.killpg(busy.pid, signal.SIGKILL)
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

    def _limit_reached(self) -> StopReason | None:
        """Why no new child should be planned, or None to go on."""
        o = self.options
        if self.stop.is_set():
            return INTERRUPTED_STOP
        if self._error:
            return self._error
        if o.trials is not None and self._counted() >= o.trials:
            return StopReason(StopKind.TRIALS, f"reached {o.trials} trials")
        if o.hours is not None and time.time() - (o.since or self.started) >= o.hours * 3600:
            return StopReason(StopKind.HOURS, f"reached the {o.hours:g} h limit")
        if o.max_cost_usd is not None and self.search.store.spend_usd >= o.max_cost_usd:
            return StopReason(StopKind.COST, f"LLM spend reached the ${o.max_cost_usd:g} cap")
        return None

    def _counted(self) -> int:
        return sum(1 for t in self._trials() if t.spends_trial)

    def _trials(self):
        """The trials as the limit check and the planner see them: read again after this loop wrote, and
        on one host at every turn; a shared search's worker re-reads what others did every few seconds
        (`hosts.trials_max_age`) rather than every second while its trials run. Whatever it decides
        from them is checked again against a fresh read under the claim."""
        age = self.hosts.trials_max_age
        if self._snapshot is None or (age is not None and time.monotonic() - self._snapshot_at > age):
            self._snapshot, self._snapshot_at = self.search.trials(), time.monotonic()
        return self._snapshot

    def _queued(self) -> int:
        return len(self._pending) + len(self._ready)

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
        if (self._running or self._outage or self._flight) and time.time() - self._devices_written > PROGRESS_SECONDS:
            rows = self._write_devices()  # keeps `evo status` showing each trial's progress and each proposal's
            self.on_event("progress", {"slots": rows, "waiting": self._waiting_info(), "proposals": self._in_flight()})

    # -- start-up ---------------------------------------------------------------------

    def _prepare_data(self) -> None:
        """The target's preparation before any trial (a harness prepares its data; a no-op when cached)."""
        cfg = self.search.config
        if self.target.kind == "harness":  # only the harness has data to prepare
            self.on_event("preparing", {"profile": cfg.profile, "data": cfg.data})
        self.target.prepare(self.search, python=self.python, say=lambda line: self.on_event("preparing", {"line": line}))

    def _recover(self) -> None:
        """Make the store and git agree after a crash, and queue what was left unfinished."""
        search = self.search
        self.recover_orphans()
        trials = search.trials()
        self.hosts.sync(search, trials)
        self.queue_reruns(trials)
        if not any(t.finished_ok for t in trials) and not any(c.operator == "seed" for c in self._ready):
            # No genome has ever run successfully: nothing to breed from but the seed. A seed that
            # failed before (a device that was not there, a bug since fixed by `evo reseed`) runs again.
            failed = [t for t in trials if t.operator == "seed" and t.counts]
            if failed:
                self.on_event("seed", {"trial": failed[-1].number, "status": failed[-1].status,
                                       "error": failed[-1].error, "replaced": failed[-1].commit != search.config.seed_commit})
            self._ready.insert(0, Child("seed", [], commit=search.config.seed_commit, seed=search.config.seed,
                                        attrs={"description": "seed genome", "proposer": "seed"}))

    def recover_orphans(self) -> None:
        """Mark trials whose worker is gone as interrupted; kill what they left running on this host."""
        for orphan in self.hosts.fail_orphans(self.search):
            if self.hosts.is_here(orphan):
                _kill_leftover(orphan.attrs.get("pid"))
            self.on_event("recovered", {"trial": orphan.number, "host": orphan.host})

    def queue_reruns(self, trials) -> None:
        """Queue a re-run of every interrupted trial nobody has re-run (nor queued here) yet."""
        rerun = {t.attrs.get("rerun_of") for t in trials if t.attrs.get("rerun_of") is not None}
        rerun |= {c.rerun_of for c in self._ready if c.rerun_of is not None}
        for t in trials:
            if t.status == INTERRUPTED and t.commit and t.number not in rerun:
                self._ready.append(Child(t.operator, t.parents, commit=t.commit, seed=t.seed,
                                         island=int(t.attrs.get("island", 0)), rerun_of=t.number,
                                         attrs={k: t.attrs[k] for k in ("description", "rationale", "proposer", "usage",
                                                                        *RUNG_ATTRS) if k in t.attrs}))

    # -- planning ---------------------------------------------------------------------

    def _free_slots(self) -> list[Slot]:
        busy = {b.slot.name for b in self._running.values()}
        return [s for s in self.slots if s.name not in busy]

    def _plan_more(self) -> None:
        fresh = False  # whether the trials were read again for a decision to stop
        while True:
            if self.strategy.prefetch:
                # One prepared child per device, so a freed device never waits on a proposal.
                if len(self._pending) + len(self._ready) >= len(self.slots):
                    return
            elif len(self._pending) + len(self._ready) >= len(self._free_slots()):
                return  # sequential semantics: plan only for a device that is free now
            limit = self.options.trials
            trials = self._trials()
            if limit is not None and _toward_limit(trials) + self._queued() >= limit:
                return
            lineage = self.search.lineage(trials)
            offline_only = self._outage is not None and (self._waiting_for_api() or self._probe in self._pending)
            rng = random.Random(f"{self.search.config.seed}:{len(lineage.trials)}:{self._plans}{self.hosts.salt}")
            try:
                decision = decide(self._schedulers(), self._snapshot_for(lineage, offline_only, rng))
            except NoParentError as e:
                running = any(t.state == "RUNNING" for t in trials)  # elsewhere: its result may be a parent
                if not self._running and not self._pending and not self._ready and not running:
                    if not fresh:  # a stop is decided on a fresh view only
                        self._snapshot, fresh = None, True
                        continue
                    self._error = StopReason(StopKind.ERROR, self._no_parent(lineage, e))
                return
            if isinstance(decision, Run):
                self._ready.append(decision.child)
                continue
            if not isinstance(decision, Propose):
                return  # a scheduler holds children back (the noise floor, an API outage)
            plan = decision.plan
            self.hosts.ensure(self.search, [lineage.by_number[n].commit for n in plan.parents if n in lineage.by_number])
            # Named here, in the planning thread: a name read in the worker could be another proposal's.
            scratch = self.search.paths.scratch(f"plan-{self._plans}")
            self._plans += 1
            facts = ProposalFacts({"operator": plan.operator, "parents": list(plan.parents),
                                   "proposer": self.proposer.name, "started": time.time()})
            future = self._proposals.submit(self._propose, plan, lineage, rng, offline_only, scratch, facts)
            self._pending.append(future)
            self._flight[future] = facts
            if self._outage is not None and not offline_only:
                self._probe = future  # the one proposal that asks the API whether it is back

    def _no_parent(self, lineage: Lineage, error: NoParentError | None, again: str = "") -> str:
        """Why no child can be planned, and what to do about it (`again`: the flags a run needs to go on)."""
        cfg = self.search.config
        name = cfg.name
        seeds = [t for t in lineage.trials if t.operator == "seed" and t.counts]
        if seeds and not any(t.finished_ok for t in lineage.trials):
            t = seeds[-1]
            failed = f"the seed genome failed (trial #{t.number}, {t.status}: {(t.error or 'no error line')[:160]})"
            if t.status == "no_metric" and cfg.target:  # the metric's name is fixed: running again cannot help
                return (f"{failed}; the search's metric {cfg.metric!r} is fixed: if the run prints its score under "
                        f"another name, delete the search with `evo rm {name} --yes` and create it again with that "
                        f"--metric (or --metric-pattern); if the seed's own files should print it, fix them in the "
                        f"project and run `evo reseed {name}`, then `evo run {name}{again}`")
            return (f"{failed}; fix the cause and run `evo run {name}{again}` again, which retries the seed (if the "
                    f"seed itself is at fault, fix it in the project and run `evo reseed {name}` first; `evo show "
                    f"{name} {t.number}` has its log; `evo rm {name} --yes` starts over)")
        return f"cannot plan a child: {error}" if error else "no trial succeeded"

    def _unless_nothing_succeeded(self, reason: StopReason) -> StopReason:
        """A run that reached a limit (or ran out of plans) while no trial of the search ever succeeded did not
        do what was asked: an error, saying why and what to run next."""
        if reason.kind in (StopKind.INTERRUPTED, StopKind.ERROR):
            return reason
        try:
            lineage = Lineage(self.search.trials(), direction=self.search.config.direction)
        except Exception:  # a shared search's database went away at the end: the stop says what it knows
            return reason
        if any(t.finished_ok for t in lineage.trials):
            return reason
        counted = sum(1 for t in lineage.trials if t.counts)
        again = f" --trials {counted + self.options.trials}" if reason.kind == StopKind.TRIALS else ""
        return StopReason(StopKind.ERROR, f"{reason} and none succeeded: {self._no_parent(lineage, None, again)}")

    def _schedulers(self):
        """The chain that decides what runs next (see `evo.schedulers`), from this run's options as they are now."""
        o = self.options
        return chain(strategy=self.strategy, noise_runs=o.noise_runs, reeval=o.reeval, promote=o.promote,
                     promote_top=o.promote_top, config=self.search.config, reeval_while_waiting=o.reeval_while_waiting,
                     offline_fallback=self.proposer.offline_fallback)

    def _snapshot_for(self, lineage: Lineage, offline_only: bool, rng: random.Random) -> Snapshot:
        return Snapshot(lineage, running=tuple(b.tree for b in self._running.values()), queued=tuple(self._ready),
                        free_slots=len(self._free_slots()), offline_only=offline_only, seed=self.search.config.seed,
                        rng=rng)

    def _propose(self, plan: Plan, lineage: Lineage, rng: random.Random, offline_only: bool = False,
                 scratch: Path | None = None, facts: ProposalFacts | None = None) -> Child:
        """Worker thread: turn a plan into a child. Reads git; writes neither git refs nor the store (the loop's
        own thread owns both); a shared search's worker also commits and pushes the child here (`_publish_early`)."""
        search = self.search
        parents = [search.genome(n, lineage) for n in plan.parents]
        known = {t.tree for t in lineage.trials if t.tree}
        ctx = ProposalContext(program=search.program, mutable=search.config.mutable,
                              settings={"profile": search.config.profile, "seq_len": search.config.seq_len,
                                        "budget": search.config.budget, "name": search.config.name,
                                        "metric": search.config.metric, "direction": search.config.direction},
                              lineage=lineage, rng=rng, is_known=lambda files: genome_hash(files) in known,
                              scratch=scratch, executor=self.runner.executor,
                              offline_only=offline_only, progress=(facts or ProposalFacts({})).update,
                              say=lambda line: self.on_event("proposer", {"line": line}),
                              hidden_data=self.runner.data.sources,
                              training_data=(*self.runner.data.tokenizer, *self.runner.data.train))
        try:
            if plan.operator == "crossover":
                base_commit = search.repo.merge_base(parents[0].commit, parents[1].commit)
                base = None
                if base_commit:
                    base = Genome(trial=-1, commit=base_commit, files=search.repo.files(base_commit, search.config.mutable))
                proposal = self.proposer.crossover(parents[0], parents[1], base, ctx)
            else:
                proposal = self.proposer.mutate(parents[0], ctx)
        except (ProposerError, ProposerUnavailable):
            raise
        except Exception as e:  # a bug or an unexpected reply must not end the search
            proposal = Proposal(parents[0].files, "", ok=False, error=f"{type(e).__name__}: {e}")
        proposal.proposer = proposal.proposer or self.proposer.name
        proposal.remote = proposal.remote and self.proposer.remote
        cap_proposal(proposal)
        if proposal.ok:
            extra = set(proposal.files) - set(search.config.mutable)
            missing = set(search.config.mutable) - set(proposal.files)
            if extra or missing:
                proposal.ok = False
                proposal.error = (f"proposal touches files outside the mutable set: {sorted(extra)}" if extra
                                  else f"proposal lacks mutable files: {sorted(missing)}")
        child = Child(plan.operator, list(plan.parents), proposal=proposal, island=plan.island, seed=search.config.seed)
        if proposal.ok and self.hosts.shared:
            self._publish_early(child, [g.commit for g in parents])
        return child

    def _publish_early(self, child: Child, parent_commits: list[str]) -> None:
        """Worker thread of a shared search: commit the child (objects only, no ref) and push it while the
        devices are busy, so neither costs a freed device time. A failed push is tried again at `_start`."""
        try:
            child.commit = self.search.repo.commit(child.proposal.files, parents=parent_commits,
                                                   message=_commit_message(child, child.proposal))
            self.hosts.publish(self.search, child.commit)
            child.published = True
        except Exception as e:
            if not self.hosts.transient(e):
                raise

    # -- launching --------------------------------------------------------------------

    def _next_child(self) -> Child | None:
        if self._ready:
            return self._ready.pop(0)
        while self._pending and self._pending[0].done():
            future = self._pending.pop(0)
            self._flight.pop(future, None)
            if future is self._probe:
                self._probe = None
            try:
                child = future.result()
            except ProposerError as e:
                self._error = StopReason(StopKind.ERROR, f"proposer stopped the search: {e}")
                return None
            except ProposerUnavailable as e:
                cost = float(e.usage.get("cost_usd") or 0.0)  # a first answer billed before the server failed
                if cost:
                    self.search.store.add_spend(cost)
                self.search.store.add_api_fault(e.usage)  # no trial records it: the search does
                self._api_down(str(e), e.usage)
                continue
            self._api_up(child)
            cost = float(child.proposal.usage.get("cost_usd", 0.0)) if child.proposal else 0.0
            if cost:
                self.search.store.add_spend(cost)
            return child
        return None

    # -- an API that stopped answering ------------------------------------------------

    def _api_down(self, error: str, usage: dict | None = None) -> None:
        """A proposal found the API down: wait before asking again, longer each time it is still down."""
        now = time.time()
        first, longest = self.options.api_backoff
        outage = self._outage
        if outage is not None and now < outage.retry_at:
            return  # a proposal asked before this wait began: no news
        tries = outage.tries + 1 if outage is not None else 1
        delay = min(longest, first * 2 ** (tries - 1))
        self._outage = _Outage(since=outage.since if outage else now, error=error, retry_at=now + delay, tries=tries)
        self._write_devices()
        self.on_event("waiting", {"error": error, "seconds": delay, "since": self._outage.since, "tries": tries,
                                  "usage": usage or {}})

    def _api_up(self, child: Child) -> None:
        """A proposal came back: if the API wrote it (not the offline member of a mix), it answers again."""
        if self._outage is not None and child.proposal is not None and child.proposal.remote:
            down = time.time() - self._outage.since
            self._outage = None
            self._write_devices()
            self.on_event("resumed", {"seconds": down})

    def _waiting_for_api(self) -> bool:
        return self._outage is not None and time.time() < self._outage.retry_at

    def _launch_ready(self) -> None:
        while self._free_slots() and not self.stop.is_set():
            child = self._next_child()
            if child is None:
                return
            self._start(child)

    def _start(self, child: Child) -> None:
        """Record the child as a trial and run it, unless it is an invalid proposal, a known genome, or
        no longer wanted (the trial limit is full, or another worker already took its re-run)."""
        search, repo = self.search, self.search.repo
        try:  # a trial without a sandbox could have changed them since the last one
            check_harness(search)
            self.data_check.quick()
        except SearchError as e:
            self._error = StopReason(StopKind.ERROR, str(e))
            return
        self._snapshot = None
        lineage = search.lineage()
        parent_commits = [lineage.by_number[n].commit for n in child.parents if n in lineage.by_number]
        attrs = self._trial_attrs(child)
        p = child.proposal
        tree = original = None
        try:
            if p is not None and p.ok:
                if child.commit is None:
                    child.commit = repo.commit(p.files, parents=parent_commits, message=_commit_message(child, p))
                if not child.published:
                    self.hosts.publish(search, child.commit)  # on the remote before its trial exists
                    child.published = True
            elif child.commit is not None:  # the seed, a re-run or a re-evaluation: maybe another host's genome
                self.hosts.ensure(search, [child.commit, *parent_commits])
            if child.commit is not None:
                tree = repo.tree_of(child.commit)
                attrs.update(commit=child.commit, tree=tree)
            params = self._params(child)
            with search.store.claim():
                if self.hosts.shared:
                    lineage = search.lineage()  # as other workers left it, and no one changes it until we are done
                if not self._admit(child, lineage):
                    return
                if tree is not None and child.operator in ("mutate", "crossover") and child.rerun_of is None:
                    original = next((t for t in lineage.trials if t.tree == tree and t.operator != "reeval"
                                     and t.status not in (INVALID, INTERRUPTED)), None)
                number = search.store.start({**attrs, "seed": child.seed}, params=params)
        except Exception as e:
            if self.hosts.transient(e):  # not recorded: try again once the database or remote is back
                self._ready.insert(0, child)
            raise
        self._snapshot = None
        self.hosts.started(number, child.commit)
        if p is not None and not p.ok:
            self._record_invalid(child, attrs, parent_commits, number)
        elif original is not None:  # identical genome (trained, or training on some host): reuse, never train twice
            self._record_duplicate(child, attrs, parent_commits, original, lineage, number)
        else:
            self._launch(child, attrs, parent_commits, tree, number)

    def _params(self, child: Child) -> dict:
        """The child genome's UPPERCASE hyperparameters, recorded as the trial's Optuna params."""
        if child.commit is None or (child.proposal is not None and not child.proposal.ok):
            return {}
        cfg = self.search.config
        files = child.proposal.files if child.proposal is not None else self.search.repo.files(child.commit, cfg.mutable)
        return hyperparameter_values(files, cfg.profile)

    def _admit(self, child: Child, lineage: Lineage) -> bool:
        """Whether `child` should still become a trial, judged from the study as it is now (inside the claim).

        On one host the loop's own bookkeeping already made sure of all this; with other
        workers it is where the trial limit holds across hosts, a re-run is taken once, the
        seed is trained once, and re-evaluations stop at the number asked for."""
        trials, limit = lineage.trials, self.options.trials
        if limit is not None and _toward_limit(trials) >= limit:
            return False
        if child.rerun_of is not None:
            return not any(t.attrs.get("rerun_of") == child.rerun_of for t in trials)
        if child.operator == "seed":  # a seed that failed runs again (after its cause was fixed)
            return not any(t.operator == "seed" and (t.finished_ok or t.state == "RUNNING") for t in trials)
        genome = lineage.individual(child.parents[0]) if child.parents else None
        if child.operator == "reeval" and self.hosts.shared and genome is not None:
            done, running = lineage.evaluations(genome)
            if done + running >= child.wanted:  # the limit the plan had: noise runs, --reeval, or an outage's
                return False
            child.seed = self.search.config.seed + done + running  # no two hosts pick the same new seed
        if child.operator == "promote":  # once per genome and rung, whichever host gets there first
            return genome is not None and not lineage.promoted(genome.tree, child.attrs.get("rung"))
        return True

    def _trial_attrs(self, child: Child) -> dict:
        attrs = {"operator": child.operator, "parents": child.parents, "seed": child.seed, "island": child.island,
                 "strategy": self.strategy.name, **child.attrs}
        if child.rerun_of is not None:
            attrs["rerun_of"] = child.rerun_of
        attrs.update(self.hosts.trial_attrs())
        p = child.proposal
        if p is not None:
            attrs.update(description=p.description, rationale=p.rationale, proposer=p.proposer, usage=p.usage)
            if p.capped:
                attrs["capped"] = p.capped
        return attrs

    def _record_invalid(self, child: Child, attrs: dict, parent_commits: list[str], number: int) -> None:
        p = child.proposal
        self._write_trial_files(number, p, None, parent_commits)
        self.search.store.finish(number, status=INVALID, error=p.error)
        self.on_event("finished", {"trial": number, "status": INVALID, "error": p.error, "operator": child.operator,
                                   "description": p.description})

    def _record_duplicate(self, child: Child, attrs: dict, parent_commits: list[str], original, lineage: Lineage,
                          number: int) -> None:
        store = self.search.store
        self.search.repo.set_branch(self.search.branch(number), child.commit)
        self._write_trial_files(number, child.proposal, child.commit, parent_commits)
        value = lineage.score_of(original.number) if original.finished_ok else None
        values = list(lineage.individual(original.number).objectives) if value is not None else None
        store.finish(number, status=DUPLICATE, value=value, values=values, duplicate_of=original.number,
                     metrics=original.metrics,
                     error="" if value is not None else f"same genome as #{original.number}")
        self.on_event("finished", {"trial": number, "status": DUPLICATE, "duplicate_of": original.number,
                                   "value": value, "operator": child.operator, "description": attrs.get("description", "")})

    def _launch(self, child: Child, attrs: dict, parent_commits: list[str], tree: str, number: int) -> None:
        search = self.search
        slot = self._free_slots()[0]
        search.repo.set_branch(search.branch(number), child.commit)
        self._write_trial_files(number, child.proposal, child.commit, parent_commits)
        worktree = search.repo.checkout(search.paths.worktree(slot.name), child.commit)
        busy = _Busy(slot, number, tree)
        target = self._target_at(child.attrs)
        env = target.environment(search, slot=slot, seed=child.seed) | dict(child.attrs.get("rung_env") or {})
        future = self._runs.submit(self.runner.run, worktree, log_path=search.paths.trial(number).run_log, env=env,
                                   timeout=target.timeout(), clock=target.clock(slot),
                                   threads=slot.threads or os.cpu_count(),
                                   limits=self._limits(), compile_cache=search.paths.inductor_cache,
                                   on_progress=self._progress_callback(busy), stop=self.stop,
                                   on_start=lambda pid: self._started(busy, pid))
        self._running[future] = busy
        self._write_devices()
        self.on_event("started", {"trial": number, "slot": slot.name, "operator": child.operator,
                                  "parents": child.parents, "description": attrs.get("description", "")})

    def _target_at(self, attrs: dict):
        """The target at a trial's scale: the search's own, or a promoted rung's larger budget."""
        if not attrs.get("rung_budget"):
            return self.target
        return target_of(dataclasses.replace(self.search.config, budget=float(attrs["rung_budget"])))

    def _started(self, busy: _Busy, pid: int) -> None:
        busy.pid = pid
        self.search.store.set_attrs(busy.trial, {"pid": pid})  # what a resume kills if this process dies

    def _limits(self) -> Limits:
        if self.options.max_memory_gb is not None:
            memory = self.options.max_memory_gb * 1024
        else:
            memory = 0.85 * _memory_mb() / len(self.slots)
        return Limits(memory_mb=memory, disk_bytes=DISK_LIMIT)

    def _progress_callback(self, busy: _Busy):
        store, prune = self.search.store, self.options.prune

        def on_progress(fraction: float, loss: float) -> bool:
            busy.fraction, busy.loss = fraction, loss
            should_prune = store.report(busy.trial, int(round(fraction * 100)), loss)
            return bool(prune and should_prune) or store.lost(busy.trial)  # another worker re-runs a lost one
        return on_progress

    # -- finishing ---------------------------------------------------------------------

    def _finish(self, future: cf.Future) -> None:
        self._snapshot = None
        busy = self._running.pop(future)
        try:
            result: TrialResult = future.result()
        except Exception as e:  # the runner itself failed: record it, keep going
            result = TrialResult("crash", error=f"runner error: {type(e).__name__}: {e}")
        try:
            self._tell(busy, result)
        except Exception as e:
            if self.hosts.transient(e):  # keep the result: it is told once the database is back
                self._running[future] = busy
            raise

    def _tell(self, busy: _Busy, result: TrialResult) -> None:
        """Record a finished trial's result in the study and its folder (may be called again for the
        same result after the database of a shared search came back)."""
        search, number = self.search, busy.trial
        result = self._after_trial(busy, result)
        value = result.value(search.config.metric) if result.status == OK else None
        constraints = {}
        peak_mb = result.metrics.get("peak_vram_mb")
        if self.options.max_vram_gb is not None and peak_mb is not None and math.isfinite(peak_mb):
            constraints["vram_gb"] = peak_mb / 1024 - self.options.max_vram_gb
        values, violations, missing = search.objectives.judge(value, result.metrics)  # --objective, --constraint
        constraints.update(violations)
        if missing:
            result.status, result.error, value = "no_metric", missing, None
        feasible = all(v <= 0 for v in constraints.values())
        with search.store.claim():  # the best as every host left it, and no result told in between
            lineage = search.lineage()
            trial = lineage.by_number.get(number)
            min_gain = self.options.min_gain_now(lineage)
            kept = trial is not None and lineage.would_keep(value, operator=trial.operator, feasible=feasible,
                                                            min_gain=min_gain, key=genome_key(trial), values=values)
            told = search.store.finish(number, status=result.status, value=value, values=values, metrics=result.metrics,
                                       constraints=constraints, error=result.error,
                                       log_tail=result.log_tail[-2000:], wall_seconds=round(result.wall_seconds, 2),
                                       kept=kept, provenance=result.provenance,
                                       **({"artifacts": result.artifacts} if result.artifacts else {}),
                                       **{k: v for k, v in result.metrics.items()
                                          if k == f"reported_{search.config.metric}"}, **{MIN_GAIN_ATTR: min_gain})
        search.paths.trial(number).make().result.write_text(result.to_json())
        self._snapshot = None
        self._write_devices()
        if not told:
            self.on_event("lost", {"trial": number, "status": result.status})
            return
        self._finished_here += 1
        self.on_event("finished", {"trial": number, "status": result.status, "value": value, "kept": kept,
                                   "error": result.error, "operator": trial.operator if trial else "",
                                   "description": trial.description if trial else "", "feasible": feasible,
                                   "seconds": result.wall_seconds})

    def _after_trial(self, busy: _Busy, result: TrialResult) -> TrialResult:
        """What the engine adds to a result: provenance, the harness check of an unsandboxed trial,
        and the seed's compile cache, which becomes the trusted one every later trial starts from."""
        search = self.search
        result.provenance["harness_sha256"] = search.config.harness_sha256
        if result.provenance.get("sandbox") == "none":
            try:
                check_harness(search)
            except SearchError as e:
                result.status, result.error = "invalid", "changed the search's harness (prepare.py) while it ran"
                self._error = StopReason(StopKind.ERROR, str(e))
        seed_tree = next((t.tree for t in search.trials() if t.operator == "seed" and t.tree), None)
        if result.status == OK and busy.tree == seed_tree:
            private = search.paths.worktree(busy.slot.name) / ".evo" / "inductor-cache"
            if private.is_dir():
                shutil.copytree(private, search.paths.inductor_cache, symlinks=True, dirs_exist_ok=True)
        return result

    # -- records ----------------------------------------------------------------------

    def _write_trial_files(self, number: int, proposal: Proposal | None, commit: str | None, parent_commits: list[str]) -> None:
        folder = self.search.paths.trial(number).make()
        if proposal is not None:
            record = {"description": proposal.description, "rationale": proposal.rationale, "ok": proposal.ok,
                      "error": proposal.error, "proposer": proposal.proposer, "usage": proposal.usage,
                      **({"capped": proposal.capped} if proposal.capped else {})}
            folder.proposal.write_text(json.dumps(record, indent=2) + "\n")
            for name, text in proposal.artifacts.items():
                folder.artifact(name).write_text(text)
        if commit:
            diffs = [self.search.repo.diff(parent, commit) for parent in parent_commits]
            header = [f"# diff against parent {c[:10]}\n" for c in parent_commits]
            folder.diff.write_text("".join(h + d for h, d in zip(header, diffs)))

    def _write_devices(self) -> list[dict]:
        """What each device is doing, for `evo status` while the search runs (and returned)."""
        now = time.time()
        busy = {b.slot.name: b for b in self._running.values()}
        rows = []
        for s in self.slots:
            b = busy.get(s.name)
            rows.append({"slot": s.name, "device": s.device, "trial": b.trial if b else None,
                         "seconds": round(now - b.started, 1) if b else None,
                         "fraction": b.fraction if b else None, "loss": b.loss if b else None})
        self._devices_written = now
        run = {"target": self.options.trials, "hours": self.options.hours, "started": self.options.since or self.started,
               "finished": self._finished_here, "stopping": self.stop.is_set()}
        path = self.search.paths.devices
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "updated": now, "slots": rows, "run": run,
                                   "waiting": self._waiting_info(), "proposals": self._in_flight()}))
        os.replace(tmp, path)
        return rows

    def _in_flight(self) -> list[dict]:
        """The proposals being written now: operator, parents, proposer (a mix's member once drawn), model,
        phase, tokens so far where known, and seconds since planned."""
        now = time.time()
        shown = [facts.snapshot() for future, facts in list(self._flight.items()) if not future.done()]
        return [{**facts, "seconds": round(now - facts["started"], 1)} for facts in shown]

    def _waiting_info(self) -> dict | None:
        o = self._outage
        return None if o is None else {"since": o.since, "retry_at": o.retry_at, "error": o.error, "tries": o.tries}


def _toward_limit(trials) -> int:
    """Trials that spend one of --trials, finished or running (re-evaluations during an outage spend none)."""
    return sum(1 for t in trials if (t.counts or t.state == "RUNNING") and not t.while_waiting)


class ProposalFacts:
    """What `evo status` shows of one proposal in flight. Its worker thread updates it (the proposer's
    progress) while the loop's thread reads it: the lock makes each read a whole, consistent copy."""

    def __init__(self, facts: dict):
        self._facts, self._lock = dict(facts), threading.Lock()

    def update(self, facts: dict) -> None:
        with self._lock:
            self._facts.update(facts)

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._facts)


DISK_LIMIT = 16 << 30  # bytes a trial may write into its folder
PROGRESS_SECONDS = 1.0  # how often running trials' progress is written and sent as an event
SHUTDOWN_WAIT = 5.0    # seconds a stop waits for proposals to end (an LLM call in flight is abandoned at once)


def _memory_mb() -> float:
    """The machine's memory in MiB (from /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return 8192.0


def _commit_message(child: Child, proposal: Proposal) -> str:
    subject = (proposal.description or child.operator).splitlines()[0][:200]
    body = proposal.rationale.strip()
    trailers = [f"Evo-Operator: {child.operator}", f"Evo-Parents: {' '.join(f'#{n}' for n in child.parents)}",
                f"Evo-Proposer: {proposal.proposer}"]
    return subject + "\n\n" + (body + "\n\n" if body else "") + "\n".join(trailers) + "\n"


def _kill_leftover(pid) -> None:
    """Kill the process group of a trial whose engine died (kill -9 leaves its child running)."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"train.py" in cmdline:
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def fix_ladder(search: Search, ladder: tuple[Rung, ...]) -> None:
    """Record a search's promotion ladder the first time a run uses one; refuse another one later
    (rungs that changed would compare scores made at different scales)."""
    if not ladder:
        return
    fixed, given = search.store.attr(LADDER_ATTR), describe(ladder)
    if fixed is None:
        search.store.set_attr(LADDER_ATTR, given)
    elif fixed != given:
        raise SearchError(f"search {search.config.name!r} promotes along --promote {fixed}; give that ladder or "
                          "none (its promoted trials keep their scale)")
