"""The search's memory, as text a model reads before it proposes.

Derived from the trial records: the parents' ancestry (each step's description and how
val_bpb moved), a compact table of recent ideas across the whole population with their
outcomes (improved / worse / crashed with the error's last line / invalid), older ideas
that failed (so they are not retried blindly), and the current best. Each line reads
`idea | outcome`, because descriptions often hold "->" themselves.
"""

from __future__ import annotations

import math
import re

from population.lineage import Lineage, better
from population.notebook import Idea, Recall
from population.store import TrialRecord, TrialStatus

# Operators that are not ideas: the seed and re-evaluations of a known genome.
_NOT_IDEAS = ("seed", "reeval")


def _one_line(text: str, width: int = 160) -> str:
    """The last non-empty line of an error, shortened: usually the exception itself."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _bpb(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def outcome(t: TrialRecord, lineage: Lineage, metric: str = "val_bpb") -> str:
    """How one trial went, in a few words: what a researcher would write in a lab notebook."""
    status = t.status
    if status == TrialStatus.OK and t.value is not None:
        base = lineage.parent_score(t)
        delta = f" ({t.value - base:+.4f} vs parent)" if base is not None else ""
        if lineage.kept(t.number):
            verdict = "improved, new best"
        elif base is not None and better(t.value, base, lineage.direction):
            verdict = "better than its parent, not the best"
        else:
            verdict = "worse"
        if not t.feasible:
            verdict += ", over the memory limit"
        return f"{verdict}: {metric} {_bpb(t.value)}{delta}"
    if status == TrialStatus.DUPLICATE:
        return f"duplicate of #{t.attrs.get('duplicate_of', '?')} (same genome, not re-run)"
    if status == TrialStatus.INVALID_PROPOSAL:
        return f"invalid proposal: {_one_line(t.error)}"
    if status == TrialStatus.RUNNING:
        return "running now"
    if status == TrialStatus.INTERRUPTED:
        return "interrupted by the search (re-run later)"
    return f"{status}: {_one_line(t.error) or 'no error message'}"


FEEDBACK_LIMIT = 4000  # characters of evaluator feedback in one prompt
ARTIFACT_PROMPT_LIMIT = 1500  # characters of one artifact in a prompt (its end: an error ends there)


def feedback(parents: list[int], lineage: Lineage) -> str:
    """What the evaluator said about this lineage (its text artifacts): of each parent, and of the
    parent's latest child that failed; bounded by FEEDBACK_LIMIT. "" when it said nothing."""
    chosen = []
    for n in parents:
        parent = lineage.by_number.get(n)
        if parent is not None and parent.attrs.get("artifacts"):
            chosen.append((parent, f"#{n}, the parent"))
        failed = [t for t in lineage.trials if t.parents[:1] == [n] and t.attrs.get("artifacts")
                  and t.status not in (TrialStatus.OK, TrialStatus.DUPLICATE, TrialStatus.RUNNING,
                                       TrialStatus.INTERRUPTED)]
        if failed:
            chosen.append((failed[-1], f"#{failed[-1].number}, the latest child of #{n} that failed ({failed[-1].status})"))
    lines, used = [], 0
    for t, label in chosen:
        for name, text in t.attrs["artifacts"].items():
            text = str(text).strip()
            text = text if len(text) <= ARTIFACT_PROMPT_LIMIT else "..." + text[-ARTIFACT_PROMPT_LIMIT:]
            if used + len(text) > FEEDBACK_LIMIT:
                break
            used += len(text)
            lines.append(f"### {label}: {name}\n\n{_fence(text)}\n{text}\n{_fence(text)}")
    return "## What the evaluator said about this lineage\n\n" + "\n\n".join(lines) if lines else ""


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _failed(t: TrialRecord, lineage: Lineage) -> bool:
    if t.status in (TrialStatus.OK, TrialStatus.DUPLICATE):
        base = lineage.parent_score(t)
        return t.status == TrialStatus.OK and t.value is not None and base is not None and not better(t.value, base, lineage.direction)
    return t.status not in (TrialStatus.RUNNING, TrialStatus.INTERRUPTED)


def _step(t: TrialRecord) -> str:
    if t.operator == "crossover" and len(t.parents) == 2:
        return f"crossover of #{t.parents[0]} and #{t.parents[1]}"
    return t.operator or "?"


def ancestry(number: int, lineage: Lineage, metric: str = "val_bpb") -> list[str]:
    """One line per step from the seed to trial `number` (first parents), with val_bpb and its change."""
    lines, previous = [], None
    for n in lineage.path_to(number):
        t = lineage.by_number.get(n)
        if t is None:
            continue
        score = lineage.score_of(n)
        change = f" ({score - previous:+.4f})" if score is not None and previous is not None else ""
        if t.operator == "seed":
            what = "seed genome"
        elif t.operator == "crossover" and t.description.startswith("cross"):
            what = t.description  # it already names both parents
        else:
            what = f"{_step(t)}: {t.description or '(no description)'}"
        lines.append(f"- #{n} {what} | {metric} {_bpb(score)}{change}")
        previous = score if score is not None else previous
    return lines


def search_memory(parents: list[int], lineage: Lineage, *, recent: int = 30, failures: int = 40,
                  metric: str = "val_bpb") -> str:
    """The memory block of a prompt: ancestry of each parent, recent ideas, older failures, the best.

    parents: the trial numbers of the genome(s) the child starts from.
    lineage: the search so far (ProposalContext.lineage).
    recent: how many of the latest ideas to list with their outcomes.
    failures: how many older failed ideas to name besides those."""
    parts = []
    for n in parents:
        steps = ancestry(n, lineage, metric)
        if steps:
            parts.append(f"## How #{n} came about (from the seed)\n\n" + "\n".join(steps))
    said = feedback(parents, lineage)
    if said:
        parts.append(said)

    ideas = [t for t in lineage.trials if t.operator not in _NOT_IDEAS]
    shown, older = ideas[-recent:] if recent else [], ideas[:-recent] if recent else ideas
    if shown:
        rows = [f"- #{t.number} from {', '.join(f'#{p}' for p in t.parents) or '-'}"
                f"{f' [{t.proposer}]' if t.proposer else ''}: {t.description or '(no description)'} | {outcome(t, lineage, metric)}"
                for t in shown]
        parts.append(f"## Recent ideas across the population ({len(shown)} of {len(ideas)}, oldest first)\n\n"
                     + "\n".join(rows))
    else:
        parts.append("## Ideas so far\n\nNone yet: this is the first child of the search.")

    seen, named = {t.description for t in shown}, []
    for t in reversed(older):
        if len(named) >= failures:
            break
        if _failed(t, lineage) and t.description and t.description not in seen:
            seen.add(t.description)
            named.append(f"- #{t.number}: {t.description} | {outcome(t, lineage, metric)}")
    if named:
        parts.append("## Earlier ideas that did not work (do not retry them without saying why they would work now)\n\n"
                     + "\n".join(reversed(named)))

    best = lineage.best
    if best is not None:
        spread = f" ± {best.spread:.4f} over {len(best.values)} seeds" if best.spread is not None else ""
        seed = lineage.seed
        seed_score = lineage.score_of(seed.number) if seed is not None else None
        gain = f", {best.score - seed_score:+.4f} vs the seed" if seed_score is not None and best.trial != seed.number else ""
        lines = [f"Best so far: #{best.trial}, {metric} {_bpb(best.score)}{spread}{gain}: {best.description}"]
        noisy = [i.spread for i in lineage.individuals if i.spread is not None]
        if noisy:
            lines.append(f"Noise: the same genome on new seeds varies by about ±{max(noisy):.4f} {metric}; "
                         f"smaller differences are not evidence.")
        parts.append("## Current best\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


# -- the lab notebook: what other searches of the task measured ------------------------------

# The most characters of notebook a prompt carries (about 700 tokens): the closest ideas, not all.
NOTEBOOK_CHARS = 2800
_WORD = re.compile(r"[a-z_][a-z0-9_]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def notebook_memory(memory: Recall | None, parents: list[int], lineage: Lineage, *, search: str = "",
                    metric: str = "val_bpb", limit: int = NOTEBOOK_CHARS) -> str:
    """The notebook block of a prompt: ideas other searches of this task tried, each with what it measured,
    the closest to the parents' line of research first (words shared with the descriptions of their
    ancestry), at most `limit` characters. "" without such ideas.

    The closeness depends only on the parents and on other searches, so the block repeats while a
    search breeds from the same parent, and it is cached with the prompt's other fixed parts."""
    others = [i for i in (memory.ideas if memory else []) if i.search != search]
    if not others:
        return ""
    groups: dict[str, list[Idea]] = {}
    for i in others:
        groups.setdefault(i.move or " ".join(i.description.split()) or "(no description)", []).append(i)
    line_of_research = " ".join(lineage.by_number[n].description for p in parents if p in lineage.by_number
                                for n in lineage.path_to(p) if n in lineage.by_number)
    query = _words(line_of_research)

    def closeness(item: tuple[str, list[Idea]]) -> tuple[float, float]:
        words = _words(item[0] + " " + " ".join(i.diff for i in item[1][:3]))
        effects = [i.effect for i in item[1] if i.effect is not None]
        shared = len(words & query) / len(words | query) if words and query else 0.0
        return -shared, -abs(sum(effects) / len(effects)) if effects else 0.0

    head = (f"# Lab notebook: what earlier searches of this task measured\n\nIdeas tried in other searches of this "
            f"task, the closest to this line of research first. Effect is the child's {metric} against its parent's, "
            f"positive = better; differences inside the noise are not evidence. Build on what helped; do not repeat "
            f"what hurt unless you say why it would work now.\n")
    lines, size = [], len(head)
    for key, tries in sorted(groups.items(), key=closeness):
        line = _notebook_line(key, tries)
        if size + len(line) + 1 > limit:
            break
        lines.append(line)
        size += len(line) + 1
    return head + "\n".join(lines) if lines else ""


def _notebook_line(key: str, tries: list[Idea]) -> str:
    effects = [i.effect for i in tries if i.effect is not None]
    searches = len({i.search_id for i in tries})
    where = f"{len(tries)} tr{'y' if len(tries) == 1 else 'ies'} in {searches} search{'es' if searches > 1 else ''}"
    if not effects:
        failed = _one_line(tries[-1].status) or "failed"
        return f"- {key[:160]} | {where}: no score ({failed})"
    mean = sum(effects) / len(effects)
    kept = sum(1 for i in tries if i.kept)
    return (f"- {key[:160]} | {where}: effect {mean:+.4f} ({'helped' if mean > 0 else 'hurt' if mean < 0 else 'no change'})"
            + (f", made a new best {kept}x" if kept else ""))
