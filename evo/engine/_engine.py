"""The engine: one search, stepped by ask and tell.

`plan` asks the schedulers what runs next, `propose` has the proposer write a child (in any
thread), `start` records a child as a trial and hands back a `Ticket`, `run` runs it, and
`tell` records its result and says what changed. `ask` does plan, propose and start at once
(for a notebook); `enqueue` puts a genome of the user's own first in line. `evo.loop.SearchLoop`
runs the same calls on several devices at once, with proposals written while devices train.

All state lives in the store and git (the engine keeps only what is queued, running and the
API's outage), so a new engine over the same search continues where the last one stopped.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import Callable

from evo.devices import Slot, check_slots, parse_devices, visible_gpus
from evo.engine import _recovery, _starting, _telling
from evo.engine._admission import toward_limit
from evo.engine._explain import no_parent
from evo.engine._options import INTERRUPTED_STOP, RunOptions, StopKind, StopReason, fix_ladder
from evo.engine._outage import OutageWatch
from evo.engine._proposing import check_files, make_child
from evo.engine._records import Order, ProposalFacts, Ticket, Told
from evo.events import emitter
from evo.hosts import OneHost, SharedHosts
from evo.proposers import Proposal, Proposer, ProposerError, ProposerUnavailable
from evo.runner import TrialResult, TrialRunner
from evo.schedulers import Child, Propose, Run, Snapshot, Wait, chain, decide
from evo.search import DataCheck, check_harness
from evo.strategies import NoParentError, Strategy
from evo.targets import target_of
from population.importer import check_runnable
from population.search import Search, SearchError

ENQUEUED = "enqueued"  # the operator of a genome the user handed in (`Engine.enqueue`); its proposer is "user"


class Engine:
    """A search, stepped one trial at a time.

    >>> engine = Engine(search, GreedyStrategy(), OfflineProposer(), RunOptions(limits=LimitSpec(trials=5)))  # doctest: +SKIP
    >>> ticket = engine.ask()                                                                # doctest: +SKIP
    >>> engine.tell(ticket, engine.run(ticket)).kept                                          # doctest: +SKIP

    Args:
        search, strategy, proposer, options: as `evo.SearchLoop` takes them.
        slots: where trials may run (default: one CPU slot); each running trial holds one.
        hosts: who else works on the search (default: `SharedHosts` for a shared search, else `OneHost`).
        runner: runs one genome (default: the search's target's runner).
        on_event: called as (kind, info) for each `evo.events.EventKind`.
        python: the interpreter that runs trials (default: this one).
    """

    def __init__(self, search: Search, strategy: Strategy, proposer: Proposer, options: RunOptions, *,
                 slots: list[Slot] | None = None, hosts: OneHost | None = None, runner: TrialRunner | None = None,
                 on_event: Callable[[str, dict], None] | None = None, python: str | None = None):
        self.search, self.strategy, self.proposer, self.options = search, strategy, proposer, options
        self.slots = slots or parse_devices("cpu")
        self.on_event = emitter(on_event)
        self.python = python or sys.executable
        self.target = target_of(search.config)
        self.runner = runner or self.target.runner(search, python=self.python)
        self.data_check = DataCheck(search, self.runner.data)
        # A shared search's study has other writers: treating it as this host's alone would fail their trials.
        self.hosts = hosts or (SharedHosts(search) if search.config.shared else OneHost())
        self.stop = threading.Event()       # set on a stop request: plan nothing more, kill running trials
        self.started = time.time()
        self.ready: list[Child] = []        # children waiting for a device (seed, re-runs, re-evaluations, enqueued)
        self.running: dict[int, Ticket] = {}
        self.failure: StopReason | None = None   # what no retry fixes: the search stops with it
        self.outages = OutageWatch(options.backoff.api_backoff)
        self.finished_here = 0              # trials this engine told (for the pace `evo status` shows)
        self._plans = 0
        self._snapshot, self._snapshot_at = None, 0.0   # see trials()
        self._steps = set()                 # which of check, begin and recover were done

    # -- a notebook's calls -------------------------------------------------------------

    def ask(self, slot: Slot | None = None) -> Ticket | None:
        """The next trial, recorded as running on `slot` (default: a free one), or None when nothing is to run
        now (a limit was reached, the search failed: see `failure`, or a scheduler waits). Plans, proposes and
        starts in this thread; an invalid or duplicate proposal is recorded without a run and the next is asked."""
        self.open()
        slot = slot or self.free_slot()
        while self.limit_reached() is None:
            child = self.ready.pop(0) if self.ready else None
            if child is None:
                decision = self.plan()
                if isinstance(decision, Run):
                    continue
                if not isinstance(decision, Order):
                    return None
                child = self.received(decision, lambda: self.propose(decision))
                if child is None:
                    continue
            ticket = self.start(child, slot)
            if ticket is not None:
                return ticket
        return None

    def enqueue(self, files: dict[str, str], *, note: str = "", parent: int | None = None) -> Child:
        """Queue a genome of your own: the next free device evaluates it (the seed, re-runs and children queued
        before it go first; proposals not yet taken come after it).

        files: mutable files (name -> text); those not given are the parent's. parent: the trial the files
        were edited from (default: none, the seed's files fill the gaps and the genome is a root of its own).
        Its trial's operator is "enqueued" and its proposer "user". Raises SearchError for a file the search
        does not evolve or an unknown parent."""
        cfg, lineage = self.search.config, self.search.lineage(self.trials())
        if parent is not None and (parent not in lineage.by_number or not lineage.by_number[parent].commit):
            raise SearchError(f"enqueue: trial #{parent} has no genome in search {cfg.name!r}; name a trial that ran")
        base = lineage.by_number[parent].commit if parent is not None else cfg.seed_commit
        proposal = Proposal({**self.search.repo.files(base, cfg.mutable), **files}, note or "a genome enqueued by hand",
                            proposer="user", remote=False)
        check_files(proposal, cfg.mutable)
        if not proposal.ok:
            raise SearchError(f"enqueue: {proposal.error}; the search evolves {', '.join(cfg.mutable)}")
        child = Child(ENQUEUED, [parent] if parent is not None else [], proposal=proposal, seed=cfg.seed)
        self.ready.append(child)
        return child

    def open(self) -> None:
        """Check, prepare and recover the search, once (the loop does each step itself, around its lock)."""
        for step in (self.check, self.begin, self.recover):
            if step.__name__ not in self._steps:
                step()

    def close(self) -> None:
        """End the proposer's calls in flight and leave the search to other hosts."""
        self.proposer.close()
        self.end()

    # -- start-up and recovery ------------------------------------------------------------

    def check(self) -> None:
        """What must hold before the search is taken: genomes to run, the ladder, the slots; then the run's
        pruner and the metric's name go to the store (a search made before metrics were named)."""
        check_runnable(self.search)
        fix_ladder(self.search, self.options.promotion.ladder)
        check_slots(self.slots, visible_gpus(self.search))
        self.search.store.pruner = self.options.pruner_in_use()
        self.search.store.name_metric(self.search.config.metric)
        self._steps.add("check")

    def begin(self) -> None:
        """The target's preparation (a harness prepares its data), the harness and data checks, the hosts' start."""
        cfg = self.search.config
        if self.target.kind == "harness":  # only the harness has data to prepare
            self.on_event("preparing", {"profile": cfg.profile, "data": cfg.data})
        self.target.prepare(self.search, python=self.python, say=lambda line: self.on_event("preparing", {"line": line}))
        check_harness(self.search)
        self.data_check.verify()
        self.hosts.begin(self)
        self._steps.add("begin")

    def end(self) -> None:
        self.hosts.end(self)

    def recover(self) -> None:
        """Make the store and git agree after a crash, and queue what was left unfinished."""
        if "recover" not in self._steps:
            _recovery.recover(self)
            self._steps.add("recover")

    def recover_orphans(self) -> None:
        _recovery.recover_orphans(self)

    def queue_reruns(self, trials) -> None:
        _recovery.queue_reruns(self, trials)

    def limits(self) -> tuple[int | None, float | None]:
        """The trial and hour limits this run works to (`evo.hosts.HostedLoop`)."""
        return self.options.limits.trials, self.options.limits.hours

    def set_limits(self, *, trials: int | None, hours: float | None, since: float | None = None) -> None:
        """Work to these limits from now on, hours counted from `since` (None: as before)."""
        since = since if since is not None else self.options.limits.since
        self.options = self.options.with_limits(trials=trials, hours=hours, since=since)  # one write: readers see all or none

    # -- what the engine reads ------------------------------------------------------------

    def trials(self):
        """The trials as the limit check and the planner see them: read again after this engine wrote, and
        on one host whenever `forget` was called; a shared search's worker re-reads what others did every few
        seconds (`hosts.trials_max_age`). Whatever is decided from them is checked again under the claim."""
        age = self.hosts.trials_max_age
        if self._snapshot is None or (age is not None and time.monotonic() - self._snapshot_at > age):
            self._snapshot, self._snapshot_at = self.search.trials(), time.monotonic()
        return self._snapshot

    def forget(self) -> None:
        """Read the trials again next time (this engine wrote, or another host may have)."""
        self._snapshot = None

    def free_slot(self) -> Slot:
        busy = {t.slot.name for t in self.running.values()}
        free = [s for s in self.slots if s.name not in busy]
        if not free:
            raise SearchError(f"every slot ({', '.join(s.name for s in self.slots)}) has a trial running: tell one "
                              "of them first, or give the engine more slots")
        return free[0]

    def limit_reached(self) -> StopReason | None:
        """Why no new child should be planned, or None to go on."""
        o = self.options.limits
        if self.stop.is_set():
            return INTERRUPTED_STOP
        if self.failure:
            return self.failure
        if o.trials is not None and sum(1 for t in self.trials() if t.spends_trial) >= o.trials:
            return StopReason(StopKind.TRIALS, f"reached {o.trials} trials")
        if o.hours is not None and time.time() - (o.since or self.started) >= o.hours * 3600:
            return StopReason(StopKind.HOURS, f"reached the {o.hours:g} h limit")
        if o.max_cost_usd is not None and self.search.store.ledger.spend_usd >= o.max_cost_usd:
            return StopReason(StopKind.COST, f"LLM spend reached the ${o.max_cost_usd:g} cap")
        return None

    # -- planning and proposing -----------------------------------------------------------

    def plan(self, in_flight: int = 0) -> Run | Order | Wait | None:
        """The schedulers' next decision: a `Run` (its child queued in `ready`), an `Order` for the proposer,
        a `Wait`, or None (the trial limit is spoken for, or nothing can be bred from yet: `failure` says so
        once nothing runs anywhere). `in_flight`: proposals ordered and not yet received."""
        fresh = False  # whether the trials were read again for a decision to stop
        while True:
            trials = self.trials()
            limit = self.options.limits.trials
            if limit is not None and toward_limit(trials) + in_flight + len(self.ready) >= limit:
                return None
            lineage = self.search.lineage(trials)
            offline_only = self.outages.offline_only()
            rng = random.Random(f"{self.search.config.seed}:{len(lineage.trials)}:{self._plans}{self.hosts.salt}")
            busy = {t.slot.name for t in self.running.values()}
            snapshot = Snapshot(lineage, running=tuple(t.tree for t in self.running.values()), queued=tuple(self.ready),
                                free_slots=sum(1 for s in self.slots if s.name not in busy), offline_only=offline_only,
                                seed=self.search.config.seed, rng=rng)
            try:
                decision = decide(self.schedulers(), snapshot)
            except NoParentError as e:
                elsewhere = any(t.state == "RUNNING" for t in trials)  # on another host: its result may be a parent
                if not self.running and not in_flight and not self.ready and not elsewhere:
                    if not fresh:  # a stop is decided on a fresh view only
                        self.forget()
                        fresh = True
                        continue
                    self.failure = StopReason(StopKind.ERROR, no_parent(self.search.config, lineage, e))
                return None
            if isinstance(decision, Run):
                self.ready.append(decision.child)
                return decision
            if not isinstance(decision, Propose):
                return decision  # a scheduler holds children back (the noise floor, an API outage)
            return self._order(decision, lineage, rng, offline_only)

    def _order(self, decision: Propose, lineage, rng: random.Random, offline_only: bool) -> Order:
        plan = decision.plan
        self.hosts.ensure(self.search, [lineage.by_number[n].commit for n in plan.parents if n in lineage.by_number])
        # Named here, in the planning thread: a name read in the worker could be another proposal's.
        scratch = self.search.paths.scratch(f"plan-{self._plans}")
        self._plans += 1
        facts = ProposalFacts({"operator": plan.operator, "parents": list(plan.parents),
                               "proposer": self.proposer.name, "started": time.time()})
        probe = self.outages.down and not offline_only  # the one proposal that asks the API whether it is back
        self.outages.probing = self.outages.probing or probe
        return Order(plan, lineage, rng, offline_only=offline_only, probe=probe, scratch=scratch, facts=facts)

    def schedulers(self):
        """The chain that decides what runs next (see `evo.schedulers`), from this run's options as they are now."""
        o = self.options
        return chain(strategy=self.strategy, noise_runs=o.noise.noise_runs, reeval=o.noise.reeval,
                     promote=o.promotion.ladder, promote_top=o.promotion.top, config=self.search.config,
                     reeval_while_waiting=o.backoff.reeval_while_waiting,
                     offline_fallback=self.proposer.offline_fallback)

    def propose(self, order: Order) -> Child:
        """The child of an order (any thread): reads git, writes neither the store nor git refs."""
        return make_child(self, order)

    def received(self, order: Order, outcome: Callable[[], Child]) -> Child | None:
        """A proposal came back (`outcome()` returns its child or raises): the child, or None when the proposer
        failed the search (`failure`) or its API is down (the outage is waited out, its cost counted)."""
        if order.probe:
            self.outages.probing = False
        try:
            child = outcome()
        except ProposerError as e:
            self.failure = StopReason(StopKind.ERROR, f"proposer stopped the search: {e}")
            return None
        except ProposerUnavailable as e:
            self.spend(e.usage)  # a first answer billed before the server failed
            self.search.store.ledger.add_api_fault(e.usage)  # no trial records it: the search does
            outage = self.outages.failed(str(e))
            if outage is not None:
                self.on_event("waiting", {"error": str(e), "seconds": outage.delay, "since": outage.since,
                                          "tries": outage.tries, "usage": e.usage or {}})
            return None
        down = self.outages.answered(child.proposal is not None and child.proposal.remote)
        if down is not None:
            self.on_event("resumed", {"seconds": down})
        self.spend(child.proposal.usage if child.proposal else {})
        return child

    def spend(self, usage: dict) -> None:
        cost = float(usage.get("cost_usd") or 0.0)
        if cost:
            self.search.store.ledger.add_spend(cost)

    # -- starting, running, telling ---------------------------------------------------------

    def start(self, child: Child, slot: Slot | None = None) -> Ticket | None:
        """Record `child` as a trial and return its ticket for `slot` (default: a free one); None when it is
        recorded without a run (an invalid proposal, a known genome) or no longer wanted (the trial limit is
        full, another worker took its re-run), or the harness or data changed (`failure`)."""
        return _starting.start(self, child, slot)

    def run(self, ticket: Ticket) -> TrialResult:
        """Run a ticket's genome (blocking; any thread) and return its result, never raising for the genome
        (a runner that fails is a crash). Progress goes to the store; `stop` kills the run."""
        return _telling.run(self, ticket)

    def tell(self, ticket: Ticket, result: TrialResult) -> Told:
        """Record a finished trial's result in the study and its folder, and say what changed (may be called
        again for the same result after the database of a shared search came back)."""
        return _telling.tell(self, ticket, result)

    def keep_unrun(self, child: Child) -> None:
        """Record a proposal a stop left unrun when an LLM was paid for it (see `_starting.keep_unrun`)."""
        _starting.keep_unrun(self, child)


