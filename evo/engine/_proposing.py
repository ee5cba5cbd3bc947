"""Turning a plan into a child, in a worker thread: reads git, writes neither git refs nor the
store (the engine's own thread owns both); a shared search's worker also commits and pushes the
child here, while the devices are busy."""

from __future__ import annotations

from evo.engine._known import IdeaGate
from evo.engine._records import Order
from evo.engine._trial_files import commit_message
from evo.memory import recall
from evo.proposers import (Genome, KnownIdeas, Proposal, ProposalContext, ProposerError, ProposerUnavailable,
                           cap_proposal)
from evo.schedulers import Child
from population.genomes import genome_hash


def make_child(engine, order: Order) -> Child:
    """The child of `order`'s plan, as `engine.proposer` writes it (a failed proposal is a child too:
    it is recorded as invalid), checked against the lab notebook first (`IdeaGate`: a proposal that repeats
    an idea measured worse is not trained). ProposerError and ProposerUnavailable pass through."""
    search, plan, lineage = engine.search, order.plan, order.lineage
    parents = [search.genome(n, lineage) for n in plan.parents]
    memory = recall(search, lineage) if engine.options.memory else None
    known = {t.tree for t in lineage.trials if t.tree}
    gate = IdeaGate(KnownIdeas(memory, lineage, search.config, list(plan.parents), [g.files for g in parents])
                    if memory is not None and memory.ideas else None, known)
    ctx = _context(engine, order, memory, gate)
    proposal = gate.screen(lambda: _proposal(engine, order, parents, ctx))
    child = Child(plan.operator, list(plan.parents), proposal=proposal, island=plan.island, seed=search.config.seed)
    if proposal.ok and engine.hosts.shared:
        publish_early(engine, child, [g.commit for g in parents])
    return child


def _proposal(engine, order: Order, parents: list[Genome], ctx: ProposalContext) -> Proposal:
    """One proposal of `engine.proposer` for the order, capped and checked to hold the mutable files."""
    search, plan, proposer = engine.search, order.plan, engine.proposer
    try:
        if plan.operator == "crossover":
            base_commit = search.repo.merge_base(parents[0].commit, parents[1].commit)
            base = None
            if base_commit:
                base = Genome(trial=-1, commit=base_commit, files=search.repo.files(base_commit, search.config.mutable))
            proposal = proposer.crossover(parents[0], parents[1], base, ctx)
        else:
            proposal = proposer.mutate(parents[0], ctx)
    except (ProposerError, ProposerUnavailable):
        raise
    except Exception as e:  # a bug or an unexpected reply must not end the search
        proposal = Proposal(parents[0].files, "", ok=False, error=f"{type(e).__name__}: {e}")
    proposal.proposer = proposal.proposer or proposer.name
    proposal.remote = proposal.remote and proposer.remote
    cap_proposal(proposal)
    check_files(proposal, search.config.mutable)
    return proposal


def check_files(proposal: Proposal, mutable: list[str]) -> None:
    """Mark a proposal invalid unless it holds exactly the mutable files."""
    if proposal.ok:
        extra = set(proposal.files) - set(mutable)
        missing = set(mutable) - set(proposal.files)
        if extra or missing:
            proposal.ok = False
            proposal.error = (f"proposal touches files outside the mutable set: {sorted(extra)}" if extra
                              else f"proposal lacks mutable files: {sorted(missing)}")


def _context(engine, order: Order, memory, gate: IdeaGate) -> ProposalContext:
    search, lineage, runner, known = engine.search, order.lineage, engine.runner, gate.known
    cfg = search.config
    return ProposalContext(program=search.program, mutable=cfg.mutable,
                           settings=engine.target.proposer_settings(), lineage=lineage, rng=order.rng,
                           is_known=lambda files: genome_hash(files) in known or gate.is_refused(files),
                           scratch=order.scratch, executor=runner.executor, offline_only=order.offline_only,
                           progress=order.facts.update, say=lambda line: engine.on_event("proposer", {"line": line}),
                           hidden_data=runner.data.sources, training_data=(*runner.data.tokenizer, *runner.data.train),
                           memory=memory, known_idea=gate.hook)


def publish_early(engine, child: Child, parent_commits: list[str]) -> None:
    """Worker thread of a shared search: commit the child (objects only, no ref) and push it while the
    devices are busy, so neither costs a freed device time. A failed push is tried again at `start`."""
    try:
        child.commit = engine.search.repo.commit(child.proposal.files, parents=parent_commits,
                                                 message=commit_message(child, child.proposal))
        engine.hosts.publish(engine.search, child.commit)
        child.published = True
    except Exception as e:
        if not engine.hosts.transient(e):
            raise
