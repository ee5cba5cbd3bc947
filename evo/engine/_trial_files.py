"""What the engine records about a trial besides its result: its attributes, its commit message,
its Optuna params, and its folder's proposal.json and diff."""

from __future__ import annotations

import json

from evo.proposers import FAMILY_ATTR, Proposal, code_family, hyperparameter_values
from evo.schedulers import Child
from population.search import Search


def trial_attrs(child: Child, strategy: str, host_attrs: dict) -> dict:
    """The trial's user attributes: where it comes from (operator, parents, proposer...) and where it runs."""
    attrs = {"operator": child.operator, "parents": child.parents, "seed": child.seed, "island": child.island,
             "strategy": strategy, **child.attrs}
    if child.rerun_of is not None:
        attrs["rerun_of"] = child.rerun_of
    attrs.update(host_attrs)
    p = child.proposal
    if p is not None:
        attrs.update(p.attrs)  # what the proposer records of itself (an adaptive mix's weights in force)
        attrs.update(description=p.description, rationale=p.rationale, proposer=p.proposer, usage=p.usage)
        if p.capped:
            attrs["capped"] = p.capped
    return attrs


def commit_message(child: Child, proposal: Proposal) -> str:
    subject = (proposal.description or child.operator).splitlines()[0][:200]
    body = proposal.rationale.strip()
    trailers = [f"Evo-Operator: {child.operator}", f"Evo-Parents: {' '.join(f'#{n}' for n in child.parents)}",
                f"Evo-Proposer: {proposal.proposer}"]
    return subject + "\n\n" + (body + "\n\n" if body else "") + "\n".join(trailers) + "\n"


def trial_params(search: Search, child: Child) -> dict:
    """The child genome's UPPERCASE hyperparameters, recorded as the trial's Optuna params."""
    files = _files(search, child)
    return hyperparameter_values(files, search.config.profile) if files is not None else {}


def trial_family(search: Search, child: Child) -> dict:
    """The child genome's code family as a trial attribute (what a sampler proposer conditions on), or {}."""
    files = _files(search, child)
    return {FAMILY_ATTR: code_family(files, search.config.mutable, search.config.profile)} if files is not None else {}


def _files(search: Search, child: Child) -> dict[str, str] | None:
    if child.commit is None or (child.proposal is not None and not child.proposal.ok):
        return None
    return child.proposal.files if child.proposal is not None else search.repo.files(child.commit, search.config.mutable)


def write_trial_files(search: Search, number: int, proposal: Proposal | None, commit: str | None,
                      parent_commits: list[str]) -> None:
    folder = search.paths.trial(number).make()
    if proposal is not None:
        record = {"description": proposal.description, "rationale": proposal.rationale, "ok": proposal.ok,
                  "error": proposal.error, "proposer": proposal.proposer, "usage": proposal.usage,
                  **({"capped": proposal.capped} if proposal.capped else {})}
        folder.proposal.write_text(json.dumps(record, indent=2) + "\n")
        for name, text in proposal.artifacts.items():
            folder.artifact(name).write_text(text)
    if commit:
        diffs = [search.repo.diff(parent, commit) for parent in parent_commits]
        header = [f"# diff against parent {c[:10]}\n" for c in parent_commits]
        folder.diff.write_text("".join(h + d for h, d in zip(header, diffs)))
