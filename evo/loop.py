"""The search loop: asynchronous, steady-state, resumable.

Whenever a device is free, the next child starts on it: first any trial a dead or
interrupted process left unfinished, then a re-evaluation of a best genome that has too
few seeds, then a proposal. Proposals are prepared in worker threads while devices are
busy (unless the strategy asks for exact sequential semantics), committed to the
population repository by this thread alone, run by the runner in the device's worktree,
and told to the store. All state lives in the store and git, so `run` after any kind of
stop continues where the search left off.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evo.proposers import Genome, Proposal, ProposalContext, Proposer, ProposerError
from evo.runner import TrialResult, run_trial, trial_environment
from evo.search import Search, SearchError
from evo.strategies import NoParentError, Plan, Strategy
from population.genomes import genome_hash
from population.lineage import Lineage
from population.store import DUPLICATE, INTERRUPTED, INVALID, OK, TrialRecord

@dataclass
class Slot:
    """One place a trial can run: a GPU, or a share of the CPU cores."""

    name: str          # unique, also the worktree's folder name
    device: str        # what the trial sees: cpu, cuda:N
    threads: int | None = None
    trial: int | None = None
    started: float = 0.0
    fraction: float = 0.0
    loss: float | None = None


def parse_devices(spec: str | None, cuda_devices: int = 0) -> list[Slot]:
    """`cuda:0,cuda:1` -> two GPU slots; `cpu` -> one CPU slot; `cpu:2` -> two CPU slots sharing the cores.

    Default (None): every visible GPU, else one CPU slot."""
    if not spec:
        spec = ",".join(f"cuda:{i}" for i in range(cuda_devices)) or "cpu"
    slots: list[Slot] = []
    cores = os.cpu_count() or 1
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "cpu" or part.startswith("cpu:"):
            count = part.split(":", 1)[1] if ":" in part else "1"
            if not count.isdigit() or int(count) < 1:
                raise SearchError(f"bad device {part!r}: write cpu or cpu:N with N >= 1 concurrent CPU trials")
            n = int(count)
            slots += [Slot(f"cpu{i}", "cpu", threads=max(1, cores // n)) for i in range(n)]
        elif part == "cuda" or (part.startswith("cuda:") and part[5:].isdigit()):
            slots.append(Slot(part.replace(":", ""), part if ":" in part else "cuda:0"))
        else:
            raise SearchError(f"bad device {part!r}: use cuda:N, cpu or cpu:N, separated by commas")
    if len({s.name for s in slots}) != len(slots):
        raise SearchError(f"device listed twice in {spec!r}")
    return slots


@dataclass
class Child:
    """A genome waiting for a device."""

    operator: str
    parents: list[int]
    commit: str | None = None           # known for the seed, re-evaluations and re-runs
    proposal: Proposal | None = None    # for new genomes
    seed: int = 0
    island: int = 0
    rerun_of: int | None = None
    attrs: dict = field(default_factory=dict)


@dataclass
class RunOptions:
    """How long and how a search runs this time (not fixed: each `evo run` may change them)."""

    trials: int | None = None            # total finished trials in the search, seed included
    hours: float | None = None           # wall-clock limit of this run
    reeval: int = 0                      # extra seeds for a genome that becomes the best
    prune: bool = False                  # stop children whose loss is clearly behind
    max_vram_gb: float | None = None     # an Optuna constraint on peak memory
    max_cost_usd: float | None = None    # stop proposing once the LLM spend reaches this


class SearchLoop:
    """Runs a search until its trial limit, its time limit, or a stop request.

    >>> loop = SearchLoop(search, GreedyStrategy(), OfflineProposer(), parse_devices("cpu"), RunOptions(trials=10))  # doctest: +SKIP
    >>> loop.run()                                                                                                  # doctest: +SKIP
    """

    def __init__(self, search: Search, strategy: Strategy, proposer: Proposer, slots: list[Slot], options: RunOptions,
                 *, on_event: Callable[[str, dict], None] | None = None, python: str | None = None):
        self.search, self.strategy, self.proposer, self.slots, self.options = search, strategy, proposer, slots, options
        self.on_event = on_event or (lambda kind, info: None)
        self.python = python
        self.stop = threading.Event()          # set on Ctrl-C: stop planning, kill running trials
        self.started = time.time()
        self._pending: list[cf.Future] = []     # proposals being prepared (FIFO)
        self._ready: list[Child] = []           # children ready to run (re-runs, re-evaluations)
        self._running: dict[cf.Future, tuple[Slot, int]] = {}
        self._plans = 0
        self._trees: dict[int, str] = {}        # content hash of each running trial
        self._devices_written = 0.0
        self._stop_reason = ""
        self.error: str | None = None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> str:
        """Run until done; return why it stopped. Records survive any exception or signal."""
        search = self.search
        with search.lock(), cf.ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="trial") as runs:
            # Not a `with` block: on a stop we must not wait for an LLM call still in flight.
            proposals = cf.ThreadPoolExecutor(max_workers=max(1, len(self.slots)), thread_name_prefix="propose")
            self._runs, self._proposals = runs, proposals
            try:
                self._prepare_data()
                self._recover()
                while True:
                    reason = self._limit_reached()
                    if not reason:
                        self._plan_more()
                    halting = self._halting(reason)
                    if not halting:
                        self._launch_ready()
                    if not self._running and not halting and not self._pending and not self._ready and not reason:
                        # A launch may have used up a proposal without running it (a duplicate or an
                        # invalid proposal): plan again before concluding there is nothing to do.
                        self._plan_more()
                        if self._pending or self._ready:
                            continue
                    if not self._running and (halting or (not self._pending and not self._ready)):
                        self._stop_reason = self._limit_reached() or self.error or "nothing left to plan"
                        break
                    self._wait()
            finally:
                self.stop.set()  # kill whatever still runs; their trials are recorded as interrupted
                self.proposer.close()  # interrupts a proposal waiting out a backoff
                proposals.shutdown(wait=False, cancel_futures=True)
                for future in list(self._running):
                    self._finish(future)
                for future in self._pending:  # prepared but never run: their LLM cost still counts
                    if future.done() and not future.cancelled() and future.exception() is None:
                        child = future.result()
                        if child.proposal is not None and child.proposal.usage.get("cost_usd"):
                            self.search.store.add_spend(float(child.proposal.usage["cost_usd"]))
                self._pending.clear()
                self._write_devices()
        self.on_event("stopped", {"reason": self._stop_reason})
        return self._stop_reason

    def _limit_reached(self) -> str:
        """Why no new child should be planned, or "" to go on."""
        o = self.options
        if self.stop.is_set():
            return "interrupted"
        if self.error:
            return self.error
        if o.trials is not None and self._counted() >= o.trials:
            return f"reached {o.trials} trials"
        if o.hours is not None and time.time() - self.started >= o.hours * 3600:
            return f"reached the {o.hours:g} h limit"
        if o.max_cost_usd is not None and self.search.store.spend_usd >= o.max_cost_usd:
            return f"LLM spend reached the ${o.max_cost_usd:g} cap"
        return ""

    def _halting(self, reason: str) -> bool:
        """Whether even children already prepared should not start (a trial or cost limit lets them run)."""
        return bool(reason) and (self.stop.is_set() or bool(self.error) or reason.endswith("h limit"))

    def _counted(self) -> int:
        return sum(1 for t in self.search.trials() if t.counts)

    def _in_flight(self) -> int:
        return len(self._running) + len(self._pending) + len(self._ready)

    def _wait(self) -> None:
        """Sleep until a trial ends or a proposal becomes ready (a ready one waits for a device, not us)."""
        waiting = list(self._running) + [f for f in self._pending if not f.done()]
        if waiting:
            done, _ = cf.wait(waiting, timeout=1.0, return_when=cf.FIRST_COMPLETED)
        else:
            done = set()
            self.stop.wait(0.2)
        for future in done:
            if future in self._running:
                self._finish(future)
        if self._running and time.time() - self._devices_written > 2.0:
            self._write_devices()  # keeps `evo status` showing each trial's progress

    # -- start-up ---------------------------------------------------------------------

    def _prepare_data(self) -> None:
        """Run the harness's preparation once before any trial (a no-op when the cache has it)."""
        cfg = self.search.config
        env = trial_environment(profile=cfg.profile, budget=cfg.budget, seed=cfg.seed, device="cpu",
                                data=cfg.data, cache_dir=cfg.cache_dir)
        self.on_event("preparing", {"profile": cfg.profile, "data": cfg.data})
        proc = subprocess.Popen([self.python or sys.executable, str(self.search.harness[0]), "--profile", cfg.profile,
                                 "--source", cfg.data], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=self.search.folder / "harness")
        lines = []
        for line in proc.stdout:  # a download can take a while: pass its progress on as it comes
            lines.append(line.rstrip())
            self.on_event("preparing", {"line": line.rstrip()})
        if proc.wait() != 0:
            raise SearchError(f"preparing data failed: {(lines or ['no output'])[-1]}")

    def _recover(self) -> None:
        """Make the store and git agree after a crash, and queue what was left unfinished."""
        search = self.search
        for orphan in search.store.fail_running():
            _kill_leftover(orphan.attrs.get("pid"))
            self.on_event("recovered", {"trial": orphan.number})
        trials = search.trials()
        for t in trials:  # a trial asked for just before a crash may lack its branch
            if t.commit and not search.repo.has_branch(search.branch(t.number)):
                search.repo.set_branch(search.branch(t.number), t.commit)
        rerun = {t.attrs.get("rerun_of") for t in trials if t.attrs.get("rerun_of") is not None}
        for t in trials:
            if t.status == INTERRUPTED and t.commit and t.number not in rerun:
                self._ready.append(Child(t.operator, t.parents, commit=t.commit, seed=t.seed,
                                         island=int(t.attrs.get("island", 0)), rerun_of=t.number,
                                         attrs={k: t.attrs[k] for k in ("description", "rationale", "proposer", "usage")
                                                if k in t.attrs}))
        if not any(t.operator == "seed" and t.counts for t in trials) and not any(c.operator == "seed" for c in self._ready):
            self._ready.insert(0, Child("seed", [], commit=search.config.seed_commit, seed=search.config.seed,
                                        attrs={"description": "seed genome", "proposer": "seed"}))

    # -- planning ---------------------------------------------------------------------

    def _free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.trial is None]

    def _plan_more(self) -> None:
        limit = self.options.trials
        while True:
            if limit is not None and self._counted() + self._in_flight() >= limit:
                return
            if self.strategy.prefetch:
                # One prepared child per device, so a freed device never waits on a proposal.
                if len(self._pending) + len(self._ready) >= len(self.slots):
                    return
            elif len(self._pending) + len(self._ready) >= len(self._free_slots()):
                return  # sequential semantics: plan only for a device that is free now
            lineage = self.search.lineage()
            reeval = self._reeval_child(lineage)
            if reeval is not None:
                self._ready.append(reeval)
                continue
            rng = random.Random(f"{self.search.config.seed}:{len(lineage.trials)}:{self._plans}")
            try:
                plan = self.strategy.plan(lineage, rng)
            except NoParentError as e:
                if not self._running and not self._pending and not self._ready:
                    self.error = f"cannot plan a child: {e}"
                return
            self._plans += 1
            self._pending.append(self._proposals.submit(self._propose, plan, lineage, rng))

    def _reeval_child(self, lineage: Lineage) -> Child | None:
        """A re-evaluation of the best genome if it has fewer than 1 + reeval evaluations."""
        k = self.options.reeval
        best = lineage.best
        if k <= 0 or best is None:
            return None
        busy = sum(1 for s in self.slots if s.trial is not None and self._trees.get(s.trial) == best.tree)
        busy += sum(1 for c in self._ready if c.operator == "reeval" and c.parents == [best.trial])
        done = len(best.values)
        if done + busy >= 1 + k:
            return None
        return Child("reeval", [best.trial], commit=best.commit, seed=self.search.config.seed + done + busy,
                     island=best.island, attrs={"description": f"re-evaluate #{best.trial} (seed {done + busy})",
                                                "proposer": "reeval"})

    def _propose(self, plan: Plan, lineage: Lineage, rng: random.Random) -> Child:
        """Worker thread: turn a plan into a child. Reads git; writes neither git nor the store (the loop's own thread owns both)."""
        search = self.search
        parents = [search.genome(n, lineage) for n in plan.parents]
        known = {t.tree for t in lineage.trials if t.tree}
        ctx = ProposalContext(program=search.program, mutable=search.config.mutable,
                              settings={"profile": search.config.profile, "seq_len": search.config.seq_len,
                                        "budget": search.config.budget, "name": search.config.name},
                              trials=lineage.trials, lineage=lineage, rng=rng,
                              is_known=lambda files: genome_hash(files) in known,
                              scratch=search.folder / "scratch" / f"plan-{self._plans}")
        try:
            if plan.operator == "crossover":
                base_commit = search.repo.merge_base(parents[0].commit, parents[1].commit)
                base = None
                if base_commit:
                    base = Genome(trial=-1, commit=base_commit, files=search.repo.files(base_commit, search.config.mutable))
                proposal = self.proposer.crossover(parents[0], parents[1], base, ctx)
            else:
                proposal = self.proposer.mutate(parents[0], ctx)
        except ProposerError:
            raise
        except Exception as e:  # a bug or an unexpected reply must not end the search
            proposal = Proposal(parents[0].files, "", ok=False, error=f"{type(e).__name__}: {e}")
        proposal.proposer = proposal.proposer or self.proposer.name
        if proposal.ok:
            extra = set(proposal.files) - set(search.config.mutable)
            missing = set(search.config.mutable) - set(proposal.files)
            if extra or missing:
                proposal.ok = False
                proposal.error = (f"proposal touches files outside the mutable set: {sorted(extra)}" if extra
                                  else f"proposal lacks mutable files: {sorted(missing)}")
        return Child(plan.operator, list(plan.parents), proposal=proposal, island=plan.island, seed=search.config.seed)

    # -- launching --------------------------------------------------------------------

    def _next_child(self) -> Child | None:
        if self._ready:
            return self._ready.pop(0)
        while self._pending and self._pending[0].done():
            future = self._pending.pop(0)
            try:
                child = future.result()
            except ProposerError as e:
                self.error = f"proposer stopped the search: {e}"
                return None
            cost = float(child.proposal.usage.get("cost_usd", 0.0)) if child.proposal else 0.0
            if cost:
                self.search.store.add_spend(cost)
            return child
        return None

    def _launch_ready(self) -> None:
        while self._free_slots() and not self.stop.is_set():
            child = self._next_child()
            if child is None:
                return
            self._start(child)

    def _start(self, child: Child) -> None:
        search, store, repo = self.search, self.search.store, self.search.repo
        lineage = search.lineage()
        parent_commits = [lineage.by_number[n].commit for n in child.parents if n in lineage.by_number]
        p = child.proposal
        attrs = {"operator": child.operator, "parents": child.parents, "seed": child.seed, "island": child.island,
                 "strategy": self.strategy.name, **child.attrs}
        if child.rerun_of is not None:
            attrs["rerun_of"] = child.rerun_of
        if p is not None:
            attrs.update(description=p.description, rationale=p.rationale, proposer=p.proposer, usage=p.usage)

        if p is not None and not p.ok:
            number = store.start(attrs)
            self._write_trial_files(number, p, None, parent_commits)
            store.finish(number, status=INVALID, error=p.error)
            self.on_event("finished", {"trial": number, "status": INVALID, "error": p.error, "operator": child.operator,
                                       "description": p.description})
            return

        if child.commit is None:
            message = _commit_message(child, p)
            child.commit = repo.commit(p.files, parents=parent_commits, message=message)
        tree = repo.tree_of(child.commit)
        attrs.update(commit=child.commit, tree=tree)

        if child.operator in ("mutate", "crossover") and child.rerun_of is None:
            original = next((t for t in lineage.trials if t.tree == tree and t.status not in (INVALID, INTERRUPTED)
                             and t.operator != "reeval"), None)
            if original is not None:  # identical genome: reuse, never train twice
                number = store.start(attrs)
                repo.set_branch(search.branch(number), child.commit)
                self._write_trial_files(number, p, child.commit, parent_commits)
                value = lineage.score_of(original.number) if original.finished_ok else None
                store.finish(number, status=DUPLICATE, value=value, duplicate_of=original.number,
                             metrics=original.metrics, error="" if value is not None else f"same genome as #{original.number}")
                self.on_event("finished", {"trial": number, "status": DUPLICATE, "duplicate_of": original.number,
                                           "value": value, "operator": child.operator,
                                           "description": attrs.get("description", "")})
                return

        slot = self._free_slots()[0]
        number = store.start(attrs)
        repo.set_branch(search.branch(number), child.commit)
        self._write_trial_files(number, p, child.commit, parent_commits)
        self._trees[number] = tree
        worktree = repo.checkout(search.folder / "worktrees" / slot.name, child.commit)
        slot.trial, slot.started, slot.fraction, slot.loss = number, time.time(), 0.0, None
        cfg = search.config
        env = trial_environment(profile=cfg.profile, budget=cfg.budget, seed=child.seed, device=slot.device,
                                data=cfg.data, cache_dir=cfg.cache_dir, inductor_cache=search.folder / "inductor-cache",
                                threads=slot.threads)
        future = self._runs.submit(run_trial, worktree, log_path=search.trial_dir(number) / "run.log", env=env,
                                   timeout=cfg.budget + cfg.startup_grace, harness=search.harness,
                                   on_progress=self._progress_callback(slot, number), stop=self.stop,
                                   on_start=lambda pid, n=number: store.set_attrs(n, {"pid": pid}),
                                   **({"python": self.python} if self.python else {}))
        self._running[future] = (slot, number)
        self._write_devices()
        self.on_event("started", {"trial": number, "slot": slot.name, "operator": child.operator,
                                  "parents": child.parents, "description": attrs.get("description", "")})

    def _progress_callback(self, slot: Slot, number: int):
        store, prune = self.search.store, self.options.prune

        def on_progress(fraction: float, loss: float) -> bool:
            slot.fraction, slot.loss = fraction, loss
            should_prune = store.report(number, int(round(fraction * 100)), loss)
            return bool(prune and should_prune)
        return on_progress

    # -- finishing ---------------------------------------------------------------------

    def _finish(self, future: cf.Future) -> None:
        slot, number = self._running.pop(future)
        try:
            result: TrialResult = future.result()
        except Exception as e:  # the runner itself failed: record it, keep going
            result = TrialResult("crash", error=f"runner error: {type(e).__name__}: {e}")
        search, store = self.search, self.search.store
        value = result.val_bpb if result.status == OK else None
        constraints = {}
        peak_mb = result.metrics.get("peak_vram_mb")
        if self.options.max_vram_gb is not None and peak_mb is not None and math.isfinite(peak_mb):
            constraints["vram_gb"] = peak_mb / 1024 - self.options.max_vram_gb
        lineage = search.lineage()
        trial = lineage.by_number.get(number)
        best = lineage.best
        feasible = all(v <= 0 for v in constraints.values())
        kept = bool(value is not None and feasible and trial is not None and trial.operator != "reeval"
                    and (best is None or value < best.score))
        store.finish(number, status=result.status, value=value, metrics=result.metrics, constraints=constraints,
                     error=result.error, log_tail=result.log_tail[-2000:], wall_seconds=round(result.wall_seconds, 2),
                     kept=kept)
        (search.trial_dir(number) / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
        slot.trial = None
        self._trees.pop(number, None)
        self._write_devices()
        self.on_event("finished", {"trial": number, "status": result.status, "value": value, "kept": kept,
                                   "error": result.error, "operator": trial.operator if trial else "",
                                   "description": trial.description if trial else "", "feasible": feasible,
                                   "seconds": result.wall_seconds})

    # -- records ----------------------------------------------------------------------

    def _write_trial_files(self, number: int, proposal: Proposal | None, commit: str | None, parent_commits: list[str]) -> None:
        folder = self.search.trial_dir(number)
        folder.mkdir(parents=True, exist_ok=True)
        if proposal is not None:
            record = {"description": proposal.description, "rationale": proposal.rationale, "ok": proposal.ok,
                      "error": proposal.error, "proposer": proposal.proposer, "usage": proposal.usage}
            (folder / "proposal.json").write_text(json.dumps(record, indent=2) + "\n")
            for name, text in proposal.artifacts.items():
                (folder / Path(name).name).write_text(text)
        if commit:
            diffs = [self.search.repo.diff(parent, commit) for parent in parent_commits]
            header = [f"# diff against parent {c[:10]}\n" for c in parent_commits]
            (folder / "diff.patch").write_text("".join(h + d for h, d in zip(header, diffs)))

    def _write_devices(self) -> None:
        """What each device is doing, for `evo status` while the search runs."""
        now = time.time()
        state = {"pid": os.getpid(), "updated": now, "slots": [
            {"slot": s.name, "device": s.device, "trial": s.trial, "seconds": round(now - s.started, 1) if s.trial is not None else None,
             "fraction": s.fraction if s.trial is not None else None, "loss": s.loss if s.trial is not None else None}
            for s in self.slots]}
        self._devices_written = now
        path = self.search.folder / "devices.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)


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
