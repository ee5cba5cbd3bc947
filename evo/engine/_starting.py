"""Starting a trial: a child becomes a trial (committed, published, admitted under the claim) and
gets its ticket (where and how it runs); a child that never runs is recorded as what it is (an
invalid proposal, a known genome, a proposal a stop left unrun)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from evo.engine._admission import admit, original_of
from evo.engine._options import StopKind, StopReason
from evo.engine._records import Ticket
from evo.engine._trial_files import commit_message, trial_attrs, trial_family, trial_params, write_trial_files
from evo.runner import Limits
from evo.schedulers import Child
from evo.search import check_harness
from evo.slots import Slot
from evo.targets import target_of
from population.search import SearchError
from population.store import DUPLICATE, INTERRUPTED, INVALID

DISK_LIMIT = 16 << 30  # bytes a trial may write into its folder


def start(engine, child: Child, slot: Slot | None = None) -> Ticket | None:
    """Record `child` as a trial and return its ticket for `slot` (default: a free one); None when it is
    recorded without a run (an invalid proposal, a known genome) or no longer wanted (the trial limit is
    full, another worker took its re-run), or the harness or data changed (`failure`)."""
    search, repo = engine.search, engine.search.repo
    try:  # a trial without a sandbox could have changed them since the last one
        check_harness(search)
        engine.data_check.quick()
    except SearchError as e:
        engine.failure = StopReason(StopKind.ERROR, str(e))
        return None
    engine.forget()
    lineage = search.lineage()
    parent_commits = [lineage.by_number[n].commit for n in child.parents if n in lineage.by_number]
    attrs = trial_attrs(child, engine.strategy.name, engine.hosts.trial_attrs())
    p = child.proposal
    tree = None
    try:
        if p is not None and p.ok:
            if child.commit is None:
                child.commit = repo.commit(p.files, parents=parent_commits, message=commit_message(child, p))
            if not child.published:
                engine.hosts.publish(search, child.commit)  # on the remote before its trial exists
                child.published = True
        elif child.commit is not None:  # the seed, a re-run or a re-evaluation: maybe another host's genome
            engine.hosts.ensure(search, [child.commit, *parent_commits])
        if child.commit is not None:
            tree = repo.tree_of(child.commit)
            attrs.update(commit=child.commit, tree=tree)
        params = trial_params(search, child)
        attrs.update(trial_family(search, child))
        with search.store.claim():
            if engine.hosts.shared:
                lineage = search.lineage()  # as other workers left it, and no one changes it until we are done
            if not admit(child, lineage, limit=engine.options.limits.trials, shared=engine.hosts.shared,
                         base_seed=search.config.seed):
                return None
            original = original_of(child, tree, lineage)
            number = search.store.start({**attrs, "seed": child.seed}, params=params)
    except Exception as e:
        if engine.hosts.transient(e):  # not recorded: try again once the database or remote is back
            engine.ready.insert(0, child)
        raise
    engine.forget()
    engine.hosts.started(number, child.commit)
    if p is not None and not p.ok:
        record_invalid(engine, child, parent_commits, number)
    elif original is not None:  # identical genome (trained, or training on some host): reuse, never train twice
        record_duplicate(engine, child, attrs, parent_commits, original, lineage, number)
    else:
        return make_ticket(engine, child, attrs, parent_commits, tree, number, slot or engine.free_slot())
    return None


def record_invalid(engine, child: Child, parent_commits: list[str], number: int) -> None:
    p = child.proposal
    write_trial_files(engine.search, number, p, None, parent_commits)
    engine.search.store.finish(number, status=INVALID, error=p.error)
    engine.on_event("finished", {"trial": number, "status": INVALID, "error": p.error, "operator": child.operator,
                                 "description": p.description})


def record_duplicate(engine, child: Child, attrs: dict, parent_commits: list[str], original, lineage,
                      number: int) -> None:
    search, store = engine.search, engine.search.store
    search.repo.set_branch(search.branch(number), child.commit)
    write_trial_files(search, number, child.proposal, child.commit, parent_commits)
    value = lineage.score_of(original.number) if original.finished_ok else None
    values = list(lineage.individual(original.number).objectives) if value is not None else None
    store.finish(number, status=DUPLICATE, value=value, values=values, duplicate_of=original.number,
                 metrics=original.metrics,
                 error="" if value is not None else f"same genome as #{original.number}")
    engine.on_event("finished", {"trial": number, "status": DUPLICATE, "duplicate_of": original.number,
                               "value": value, "operator": child.operator, "description": attrs.get("description", "")})


def make_ticket(engine, child: Child, attrs: dict, parent_commits: list[str], tree: str, number: int,
            slot: Slot) -> Ticket:
    search = engine.search
    search.repo.set_branch(search.branch(number), child.commit)
    write_trial_files(search, number, child.proposal, child.commit, parent_commits)
    worktree = search.repo.checkout(search.paths.worktree(slot.name), child.commit)
    target = target_at(engine, child.attrs)
    env = target.environment(search, slot=slot, seed=child.seed) | dict(child.attrs.get("rung_env") or {})
    ticket = Ticket(number=number, operator=child.operator, parents=list(child.parents),
                    description=attrs.get("description", ""), commit=child.commit, tree=tree, seed=child.seed,
                    slot=slot, worktree=worktree, log_path=search.paths.trial(number).run_log, env=env,
                    timeout=target.timeout(), clock=target.clock(slot), threads=slot.threads or os.cpu_count(),
                    limits=trial_limits(engine))
    engine.running[number] = ticket
    engine.on_event("started", {"trial": number, "slot": slot.name, "operator": child.operator,
                              "parents": child.parents, "description": ticket.description})
    return ticket

def target_at(engine, attrs: dict):
    """The target at a trial's scale: the search's own, or a promoted rung's larger budget."""
    if not attrs.get("rung_budget"):
        return engine.target
    return target_of(dataclasses.replace(engine.search.config, budget=float(attrs["rung_budget"])))

def trial_limits(engine) -> Limits:
    if engine.options.max_memory_gb is not None:
        memory = engine.options.max_memory_gb * 1024
    else:
        memory = 0.85 * _memory_mb() / len(engine.slots)
    return Limits(memory_mb=memory, disk_bytes=DISK_LIMIT)


def keep_unrun(engine, child: Child) -> None:
    """A proposal a stop left unrun. An offline one costs nothing and goes; an LLM's was paid
    for: its cost counts, and it is recorded (a valid child as interrupted, so the next run
    trains it; a failed one as invalid) with its prompt and response files."""
    p = child.proposal
    if p is None or not (p.usage.get("calls") or p.usage.get("aborted_calls")):
        return
    engine.spend(p.usage)
    search = engine.search
    lineage = search.lineage()
    parent_commits = [lineage.by_number[n].commit for n in child.parents if n in lineage.by_number]
    attrs = trial_attrs(child, engine.strategy.name, engine.hosts.trial_attrs())
    if p.ok:
        child.commit = child.commit or search.repo.commit(p.files, parents=parent_commits,
                                                          message=commit_message(child, p))
        if not child.published:
            engine.hosts.publish(search, child.commit)
        attrs.update(commit=child.commit, tree=search.repo.tree_of(child.commit), **trial_family(search, child))
    with search.store.claim():
        number = search.store.start({**attrs, "seed": child.seed}, params=trial_params(search, child))
    write_trial_files(search, number, p, child.commit if p.ok else None, parent_commits)
    if p.ok:
        search.repo.set_branch(search.branch(number), child.commit)
        search.store.finish(number, status=INTERRUPTED, error="the search stopped before it ran; the next run "
                            "trains it")
    else:
        search.store.finish(number, status=INVALID, error=p.error)


def _memory_mb() -> float:
    """The machine's memory in MiB (from /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return 8192.0
