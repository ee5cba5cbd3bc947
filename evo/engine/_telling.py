"""Running a ticket and telling its result: the study, the trial's folder, and what changed."""

from __future__ import annotations

import math

from evo.engine._options import StopKind, StopReason
from evo.engine._records import Ticket, Told
from evo.runner import TrialResult
from evo.search import check_harness
from population.lineage import MIN_GAIN_ATTR, genome_key
from population.search import SearchError
from population.store import OK, TrialStatus


def run(engine, ticket: Ticket) -> TrialResult:
    """Run a ticket's genome (blocking; any thread) and return its result, never raising for the genome
    (a runner that fails is a crash). Progress goes to the store; `stop` kills the run."""
    store, prune = engine.search.store, engine.options.prune

    def on_progress(fraction: float, loss: float) -> bool:
        ticket.fraction, ticket.loss = fraction, loss
        should_prune = store.report(ticket.number, int(round(fraction * 100)), loss)
        return bool(prune and should_prune) or store.lost(ticket.number)  # another worker re-runs a lost one

    def on_start(pid: int) -> None:
        ticket.pid = pid
        store.set_attrs(ticket.number, {"pid": pid})  # what a resume kills if this process dies

    try:
        return engine.runner.run(ticket.worktree, log_path=ticket.log_path, env=ticket.env, timeout=ticket.timeout,
                               clock=ticket.clock, threads=ticket.threads, limits=ticket.limits,
                               on_progress=on_progress, stop=engine.stop,
                               on_start=on_start)
    except Exception as e:  # the runner itself failed: record it, keep going
        return TrialResult(TrialStatus.CRASH, error=f"runner error: {type(e).__name__}: {e}")


def tell(engine, ticket: Ticket, result: TrialResult) -> Told:
    """Record a finished trial's result in the study and its folder, and say what changed (may be called
    again for the same result after the database of a shared search came back)."""
    search, number = engine.search, ticket.number
    result = after_trial(engine, ticket, result)
    value = result.value(search.config.metric) if result.status == OK else None
    constraints = {}
    peak_mb = result.metrics.get("peak_vram_mb")
    if engine.options.max_vram_gb is not None and peak_mb is not None and math.isfinite(peak_mb):
        constraints["vram_gb"] = peak_mb / 1024 - engine.options.max_vram_gb
    values, violations, missing = search.objectives.judge(value, result.metrics)  # --objective, --constraint
    constraints.update(violations)
    if missing:
        result.status, result.error, value = TrialStatus.NO_METRIC, missing, None
    feasible = all(v <= 0 for v in constraints.values())
    with search.store.claim():  # the best as every host left it, and no result told in between
        lineage = search.lineage()
        trial = lineage.by_number.get(number)
        min_gain = engine.options.noise.min_gain_now(lineage)
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
    engine.forget()
    engine.running.pop(number, None)
    outcome = Told(number, result.status, value, kept, feasible, result.error, ticket.operator,
                   ticket.description, result.wall_seconds, told=bool(told))
    if not told:
        engine.on_event("lost", {"trial": number, "status": result.status})
        return outcome
    engine.finished_here += 1
    engine.on_event("finished", {"trial": number, "status": result.status, "value": value, "kept": kept,
                               "error": result.error, "operator": trial.operator if trial else "",
                               "description": trial.description if trial else "", "feasible": feasible,
                               "seconds": result.wall_seconds})
    return outcome


def after_trial(engine, ticket: Ticket, result: TrialResult) -> TrialResult:
    """What the engine adds to a result: provenance, the harness check of an unsandboxed trial,
    and what the target keeps of it (e.g. the seed's compile cache, which later trials start from)."""
    search = engine.search
    result.provenance["harness_sha256"] = search.config.harness_sha256
    if result.provenance.get("sandbox") == "none":
        try:
            check_harness(search)
        except SearchError as e:
            result.status, result.error = TrialStatus.INVALID, "changed the search's harness (prepare.py) while it ran"
            engine.failure = StopReason(StopKind.ERROR, str(e))
    seed_tree = next((t.tree for t in engine.trials() if t.operator == "seed" and t.tree), None)
    engine.target.after_trial(search, result, workdir=ticket.worktree, seed=ticket.tree == seed_tree)
    return result
