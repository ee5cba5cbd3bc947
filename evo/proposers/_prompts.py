"""The prompts every model-driven proposer sends, and the structured answer they ask for.

A prompt has a system part (the role and program.md) and a user part (the genome the child
starts from, then the search's memory and the task). The blocks that repeat from call to
call (program.md, the parent's files) are marked cacheable, so a provider with prompt
caching bills them at a fraction after the first call; the memory and task come last
because they change every time. The command proposer renders the same text into a file.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from evo.proposers._base import Genome, ProposalContext
from evo.proposers._blocks import marked
from evo.proposers._memory import NOTEBOOK_CHARS, notebook_memory, search_memory
from population.genomes import merge_texts

TOOL_NAME = "propose_change"

TOOL_DESCRIPTION = (
    "Propose one child genome: a one-line description, a rationale, and the edits that turn the starting "
    "files into the child. Edits are exact search/replace pairs applied in order; each search text must occur "
    "exactly once in the file as it is at that point. For a large change give the whole file under `files`.")

TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "description": {"type": "string", "description": "one line, e.g. 'raise MATRIX_LR 0.04 -> 0.05' or "
                        "'swap ReLU² for SwiGLU'; it becomes the commit subject and the label in every plot"},
        "rationale": {"type": "string", "description": "why this should improve the search's score under this budget, "
                      "in a few sentences; say why it differs from ideas that already failed"},
        "edits": {"type": "array", "description": "exact search/replace pairs on the mutable files",
                  "items": {"type": "object", "properties": {
                      "file": {"type": "string", "description": "a mutable file, e.g. train.py"},
                      "search": {"type": "string", "description": "text copied exactly from the file "
                                 "(whitespace included), long enough to match once"},
                      "replace": {"type": "string", "description": "the text that replaces it"}},
                      "required": ["file", "search", "replace"]}},
        "files": {"type": "array", "description": "whole-file replacements, only when the change is too large "
                  "for edits", "items": {"type": "object", "properties": {
                      "file": {"type": "string"}, "content": {"type": "string"}},
                      "required": ["file", "content"]}},
    },
    "required": ["description", "rationale", "edits"],
}

ROLE = ("You are one researcher in an evolutionary search over a small GPT training script. You propose one "
        "child genome at a time; it is trained under a fixed time budget and scored by val_bpb (lower is better).")
ROLE_ANY = ("You are one researcher in an evolutionary search over a project's files. You propose one child genome "
            "(a version of the mutable files) at a time; it is run under a fixed time budget and scored by {metric} "
            "({better} is better).")


def objective(ctx: ProposalContext) -> tuple[str, str]:
    """(the metric's name, "lower" or "higher"): what the search optimises."""
    return ctx.settings.get("metric", "val_bpb"), "higher" if ctx.settings.get("direction") == "maximize" else "lower"

ANSWER_WITH_TOOL = (f"Answer by calling the `{TOOL_NAME}` tool exactly once, with the edits written against the "
                    "starting files shown above.")

ANSWER_AS_JSON = (
    "Answer with one JSON object and nothing else, with these keys: \"description\" (one line), \"rationale\" "
    "(a few sentences), \"edits\" (a list of {\"file\", \"search\", \"replace\"}: exact search/replace pairs on "
    "the starting files shown above, each search text occurring exactly once), and optionally \"files\" (a list "
    "of {\"file\", \"content\"} whole-file replacements for large changes).")


@dataclass
class Shape:
    """How much of the search a prompt shows; the defaults show everything. `evo.proposers._fit` shrinks
    it until the prompt fits the model's context.

    recent, failures: ideas listed in the memory (see `search_memory`).
    shown: the genome's files as the prompt shows them (some regions summarised), or None: whole.
    program: program.md as shown (its head when even the summarised genome does not fit), or None: whole.
    note: what was left out, said at the top of the prompt so the model knows it does not see everything.
    """

    recent: int = 30
    failures: int = 40
    shown: dict[str, str] | None = None
    program: str | None = None
    note: str = ""


@dataclass
class Block:
    """One piece of a prompt. cache: worth caching, because it repeats across calls."""

    text: str
    cache: bool = False


@dataclass
class Prompt:
    """What a model is sent: system blocks, then user blocks, in order."""

    system: list[Block] = field(default_factory=list)
    user: list[Block] = field(default_factory=list)

    def system_text(self) -> str:
        return "\n\n".join(b.text for b in self.system)

    def user_text(self) -> str:
        return "\n\n".join(b.text for b in self.user)

    def render(self) -> str:
        """The whole prompt as Markdown, for prompt.md in the trial folder."""
        return f"<!-- system -->\n\n{self.system_text()}\n\n<!-- user -->\n\n{self.user_text()}\n"


def _fence(text: str) -> str:
    # A fence longer than any backtick run inside, so a file holding ``` cannot end it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def files_block(title: str, files: dict[str, str]) -> str:
    """Markdown of a genome's files, each in a fenced block."""
    parts = [f"# {title}"]
    for path, text in sorted(files.items()):
        fence = _fence(text)
        lang = "python" if path.endswith(".py") else ""
        parts.append(f"## {path}\n\n{fence}{lang}\n{text.rstrip()}\n{fence}")
    return "\n\n".join(parts)


def _diff(old: dict[str, str], new: dict[str, str], old_label: str, new_label: str) -> str:
    chunks = []
    for path in sorted(set(old) | set(new)):
        lines = difflib.unified_diff(old.get(path, "").splitlines(keepends=True), new.get(path, "").splitlines(keepends=True),
                                     fromfile=f"{path} ({old_label})", tofile=f"{path} ({new_label})", n=3)
        chunks.append("".join(line if line.endswith("\n") else line + "\n" for line in lines))
    text = "".join(chunks).rstrip()
    return f"```diff\n{text}\n```" if text else "(no change)"


def _settings(ctx: ProposalContext, files: dict[str, str] | None = None) -> str:
    s = ctx.settings
    facts = []
    harness = s.get("profile") not in (None, "command")  # evoresearch's own ML harness
    if harness:
        facts.append(f"task profile `{s['profile']}` (in per_profile(...) calls, the `{s['profile']}=` value is the one "
                     f"that counts)")
    if s.get("budget"):
        facts.append(f"time budget {s['budget']:g} s {'of counted training ' if harness else ''}per trial")
    facts += s.get("target_facts") or []  # what the target adds (the harness: its sequence length)
    facts.append(f"mutable files: {', '.join(ctx.mutable)}")
    blocked = [p for p in ctx.mutable if marked((files or {}).get(p, ""))]
    if blocked:
        facts.append(f"in {', '.join(blocked)} only the lines between `EVOLVE-BLOCK-START` and `EVOLVE-BLOCK-END` "
                     "may change (an edit elsewhere is refused)")
    return "This search: " + "; ".join(facts) + "."


def _system(ctx: ProposalContext, shape: Shape | None = None) -> list[Block]:
    metric, better = objective(ctx)
    role = ROLE if (metric, better) == ("val_bpb", "lower") else ROLE_ANY.format(metric=metric, better=better)
    program = shape.program if shape is not None and shape.program is not None else ctx.program
    return [Block(role), Block("# Research program (program.md)\n\n" + program.strip(), cache=True)]


def _notebook(ctx: ProposalContext, parents: list[int], shape: Shape) -> list[Block]:
    """The lab notebook's block (none without memory or earlier searches): after program.md and before the
    parent's files, cached with them, since it changes only when the parent does. It shrinks with the
    search's own memory when the prompt must fit a small context (`shape.recent`)."""
    share = min(1.0, shape.recent / Shape().recent)
    text = notebook_memory(ctx.memory, parents, ctx.lineage, search=ctx.settings.get("name", ""),
                           metric=objective(ctx)[0], limit=int(NOTEBOOK_CHARS * share))
    return [Block(text, cache=True)] if text else []


def mutation_prompt(parent: Genome, ctx: ProposalContext, *, answer: str = ANSWER_WITH_TOOL,
                    show_files: bool = True, shape: Shape | None = None) -> tuple[Prompt, dict[str, str]]:
    """The prompt for one mutation of `parent`, and the files its edits apply to (the parent's).

    answer: how the model must answer (tool call, JSON, or edit the files in a folder).
    show_files: include the parent's files (False when they are in the agent's folder instead).
    shape: how much to show (default: everything)."""
    shape = shape or Shape()
    metric, better = objective(ctx)
    score = f", {metric} {parent.score:.4f}" if parent.score is not None else ""
    user = []
    if show_files:
        title = f"Parent genome #{parent.trial}{score}: the starting files"
        user.append(Block(files_block(title, shape.shown if shape.shown is not None else parent.files)
                          + (f"\n\n{shape.note}" if shape.note else ""), cache=True))
    task = (f"# Your task\n\n{_settings(ctx, parent.files)}\n\nPropose one child of #{parent.trial}{score} "
            f"({parent.description or 'no description'}): one focused idea that should make {metric} {better} within "
            f"the budget. Read the memory above first: build on what improved, and do not repeat what failed.\n\n{answer}")
    memory = search_memory([parent.trial], ctx.lineage, metric=metric, recent=shape.recent, failures=shape.failures)
    user.append(Block("# What the search has learned\n\n" + memory + "\n\n" + task))
    return Prompt(_system(ctx, shape) + _notebook(ctx, [parent.trial], shape), user), dict(parent.files)


def crossover_prompt(a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext, *, answer: str = ANSWER_WITH_TOOL,
                     show_files: bool = True, shape: Shape | None = None) -> tuple[Prompt, dict[str, str]]:
    """The prompt for one crossover of two elites, and the files its edits apply to.

    The starting files are git's three-way merge of `a` and `b` from their merge base `base`
    (conflict markers left where the two changed the same lines), or `a`'s files when there
    is no merge base. The prompt shows what each parent changed relative to the base.
    shape: how much to show (default: everything; its `shown` files are views of the merge).
    """
    shape = shape or Shape()
    la, lb = f"#{a.trial}", f"#{b.trial}"
    start, conflicts = {}, []
    for path in sorted(set(a.files) | set(b.files)):
        if base is None:
            start[path] = a.files.get(path, "")
            continue
        merged, conflict = merge_texts(base.files.get(path, ""), a.files.get(path, ""), b.files.get(path, ""),
                                       labels=(la, "merge base", lb))
        start[path] = merged
        if conflict:
            conflicts.append(path)

    def score(g: Genome) -> str:
        return f"{objective(ctx)[0]} {g.score:.4f}" if g.score is not None else "no score"

    where = "shown below" if show_files else "in the current folder"
    parts = [f"# Crossover of #{a.trial} ({score(a)}: {a.description}) and #{b.trial} ({score(b)}: {b.description})"]
    if base is not None:
        parts.append(f"## What #{a.trial} changed relative to their merge base\n\n{_diff(base.files, a.files, 'merge base', la)}")
        parts.append(f"## What #{b.trial} changed relative to their merge base\n\n{_diff(base.files, b.files, 'merge base', lb)}")
        how = (f"The starting files ({where}) are git's three-way merge of the two. "
               + (f"It conflicts in {', '.join(conflicts)}: the conflict markers (<<<<<<< {la} / ======= / >>>>>>> {lb}) "
                  f"show both sides, and every conflict must be resolved by your edits."
                  if conflicts else "It merged cleanly; change it only where the two ideas interact badly."))
    else:
        parts.append(f"## How #{b.trial} differs from #{a.trial} (they share no ancestor)\n\n{_diff(a.files, b.files, la, lb)}")
        how = f"The starting files ({where}) are #{a.trial}'s; bring in what is good in #{b.trial}."
    parts.append(how)
    if show_files:
        parts.append(files_block("The starting files", shape.shown if shape.shown is not None else start)
                     + (f"\n\n{shape.note}" if shape.note else ""))
    task = (f"# Your task\n\n{_settings(ctx, start)}\n\nPropose one child that keeps the strengths of both parents. "
            f"{'Resolve every conflict. ' if conflicts else ''}Say in the description what it takes from each "
            f"(e.g. 'cross #{a.trial} x #{b.trial}: LR schedule of #{a.trial} + SwiGLU of #{b.trial}').\n\n{answer}")
    memory = search_memory([a.trial, b.trial], ctx.lineage, metric=objective(ctx)[0], recent=shape.recent,
                           failures=shape.failures)
    # Not cached: a pair of parents rarely meets twice, and a cache write costs more than plain input.
    user = [Block("\n\n".join(parts)), Block("# What the search has learned\n\n" + memory + "\n\n" + task)]
    return Prompt(_system(ctx, shape) + _notebook(ctx, [a.trial, b.trial], shape), user), start


def repair_message(error: str) -> str:
    """The one repair turn: the precise problems, and what a valid answer looks like."""
    return ("Your proposal could not be applied:\n\n" + error + "\n\nSend the corrected proposal once more, complete "
            "(description, rationale and all edits), written against the same starting files as before: nothing "
            "of the previous attempt was applied. Search texts must be copied exactly from those files.")
