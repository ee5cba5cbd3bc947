"""Prompts that fit the model: count a prompt's tokens and shrink it until it fits the context.

A model's context holds the prompt and the answer. `Budget` says how large both may be
(`--context-tokens`, `--max-tokens`); `fit_prompt` builds the prompt, and while it is too large
shows less, in this order: fewer ideas from the search's memory, then the genome by regions
(hyperparameters and the parts the change is about stay whole, other functions and classes
are summarised to their signature and first docstring line), then the head of program.md.
It never goes over silently: a prompt that cannot fit is an error naming the model and the
token counts (`PromptTooLarge`).

Token counts are estimated from UTF-8 bytes (no tokenizer file is needed, none is downloaded):
`BYTES_PER_TOKEN` errs on the large side for code (SmolLM2's tokenizer makes 8,060 tokens of
the default train.py's 24,652 bytes, 3.06 bytes a token; OpenAI's cl100k and Llama 3's make
fewer). Once a server reports the prompt's real size the estimate follows it if it was low.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Callable

from evo.proposers._prompts import TOOL_SCHEMA, Prompt, Shape
from population.errors import ProposalError

BYTES_PER_TOKEN = 3.0   # safe side for code: a model's tokenizer rarely packs more than 3 bytes a token
MESSAGE_OVERHEAD = 16   # tokens a chat template adds around the system and user messages
# Memory sizes tried before any of the genome is summarised: (recent ideas, older failures).
MEMORY_STEPS = ((30, 40), (10, 10), (3, 0))
PROGRAM_HEAD = 1500     # characters of program.md kept when even the summarised genome does not fit
HYPERPARAMETER = re.compile(r"^[A-Z][A-Z0-9_]*\s*(:[^=]*)?=", re.M)


class PromptTooLarge(ProposalError, ValueError):
    """Even the smallest prompt does not fit the model's context; the message says by how much and what to do."""


class TokenCounter:
    """Estimated tokens of a text; learns from the counts a server reports (thread-safe)."""

    def __init__(self, bytes_per_token: float = BYTES_PER_TOKEN):
        self.bytes_per_token = bytes_per_token
        self._lock = threading.Lock()

    def __call__(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8", "replace")) / self.bytes_per_token)

    def prompt(self, prompt: Prompt, *, tools: bool = True) -> int:
        """Tokens of a whole request: both messages, the chat template, and the tool's schema when sent."""
        schema = self(json.dumps(TOOL_SCHEMA)) if tools else 0
        return self(prompt.system_text()) + self(prompt.user_text()) + MESSAGE_OVERHEAD + schema

    def learn(self, text_bytes: int, reported: int) -> bool:
        """A server counted `reported` tokens for `text_bytes` bytes: estimate more from now on if that is
        more than we did. Returns whether the estimate changed."""
        if reported <= 0 or text_bytes <= 0:
            return False
        with self._lock:
            observed = text_bytes / reported
            if observed < self.bytes_per_token:
                self.bytes_per_token = observed
                return True
        return False


@dataclass
class Budget:
    """What a model takes: its context (prompt and answer together; None: unknown, nothing is fitted)
    and the most tokens its answer may have."""

    context: int | None
    answer: int

    @property
    def margin(self) -> int:
        """Tokens kept free for the estimate's error."""
        return max(64, (self.context or 0) // 32)

    @property
    def prompt(self) -> int | None:
        """The most tokens a prompt may have."""
        return None if self.context is None else self.context - self.answer - self.margin


@dataclass
class Fit:
    """How a prompt was fitted: its estimated tokens, the budget, and what was left out (empty: nothing)."""

    tokens: int
    budget: Budget
    cuts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        limit = f"fits {self.budget.prompt:,}" if self.budget.prompt is not None else "context unknown"
        return f"~{self.tokens:,} tokens ({limit})" + (f"; {'; '.join(self.cuts)}" if self.cuts else "")


# -- regions of a file ------------------------------------------------------------------------

@dataclass
class Region:
    """Lines [start, end) of a file (0-based) that can be shown whole or summarised."""

    start: int
    end: int
    summary: list[str]      # the lines shown instead when summarised
    keep: bool = False      # hyperparameters: always shown whole
    simple: bool = True     # not a def or a class (consecutive simple ones make one region)


def regions(path: str, text: str) -> list[Region]:
    """A file cut into regions: top-level statements for Python (comments above one belong to it), else
    paragraphs. Summaries keep a def's or class's signature and the first line of its docstring."""
    lines = text.splitlines()
    if path.endswith(".py"):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            tree = None
        if tree is not None and tree.body:
            found, start = [], 0
            for i, node in enumerate(tree.body):
                end = tree.body[i + 1].lineno - 1 if i + 1 < len(tree.body) else len(lines)
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
                end = _trim_comments_above_next(lines, node.end_lineno or first + 1, end)
                region = _region(lines, start, end, first, node)
                previous = found[-1] if found else None
                if previous is not None and previous.simple and region.simple and previous.keep == region.keep:
                    found[-1] = _region(lines, previous.start, end, previous.start, None, keep=region.keep)
                else:  # consecutive imports or constants are one region: summarising one line at a time gains nothing
                    found.append(region)
                start = end
            return found
    found, start = [], 0
    for i, line in enumerate(lines + [""]):
        if not line.strip() and i > start:
            found.append(_region(lines, start, i, start, None))
            start = i
    return found


def _trim_comments_above_next(lines: list[str], last: int, end: int) -> int:
    """Comments and blank lines just before the next statement belong to it, not to this one (`last`: where
    this statement ends)."""
    while end > last and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")) \
            and not lines[end - 1].startswith((" ", "\t")):
        end -= 1
    return end


def _region(lines: list[str], start: int, end: int, first: int, node, keep: bool | None = None) -> Region:
    body = "\n".join(lines[start:end])
    simple = not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    if keep is None:
        keep = bool(HYPERPARAMETER.search(body)) and simple
    hidden = end - start
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
        head_end = node.body[0].lineno - 1  # the signature, however many lines it takes
        head = lines[first:head_end]
        indent = re.match(r"\s*", lines[node.body[0].lineno - 1]).group(0) or "    "
        doc = ast.get_docstring(node)
        summary = head + ([f'{indent}"""{doc.strip().splitlines()[0]} ..."""'] if doc else [])
        summary.append(f"{indent}...  # [{hidden - len(head)} lines not shown: they do not fit the model's context]")
    else:
        what = next((line.strip()[:60] for line in lines[first:end] if line.strip()), "")
        summary = [f"# [{hidden} lines not shown ({what} ...): they do not fit the model's context]"]
    return Region(start, end, summary, keep, simple)


def summarised(path: str, text: str, hide: set[int]) -> str:
    """`text` with the regions numbered in `hide` replaced by their summaries."""
    lines, out = text.splitlines(), []
    for i, r in enumerate(regions(path, text)):
        out += r.summary if i in hide else lines[r.start:r.end]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _order(files: dict[str, str], focus: dict[str, set[int]], rng) -> list[tuple[str, int]]:
    """Regions in the order they give way (first = summarised first): those the change is not about,
    in an order drawn per child (different children see different parts whole), then the focus."""
    plain, focused = [], []
    for path in sorted(files):
        for i, r in enumerate(regions(path, files[path])):
            if r.keep:
                continue
            touched = any(r.start <= n < r.end for n in focus.get(path, ()))
            (focused if touched else plain).append((path, i))
    if rng is not None:
        rng.shuffle(plain)
    return plain + focused


def changed_lines(old: dict[str, str], new: dict[str, str]) -> dict[str, set[int]]:
    """The lines of `new` (0-based, per file) that differ from `old`: what a crossover is about."""
    found: dict[str, set[int]] = {}
    for path, text in new.items():
        matcher = difflib.SequenceMatcher(None, old.get(path, "").splitlines(), text.splitlines(), autojunk=False)
        for tag, _, _, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                found.setdefault(path, set()).update(range(j1, max(j2, j1 + 1)))
    return found


# -- fitting ------------------------------------------------------------------------------------

def fit_prompt(build: Callable[[Shape], Prompt], files: dict[str, str], budget: Budget, count: TokenCounter, *,
               tools: bool = True, focus: dict[str, set[int]] | None = None, rng=None, model: str = "the model",
               program: str = "") -> tuple[Prompt, Fit]:
    """The largest prompt `build` makes that fits `budget`, and how it was fitted.

    build: makes the prompt for a Shape (see `evo.proposers._prompts.Shape`).
    files: the genome the prompt shows (its regions are what gets summarised).
    focus: lines per file that the change is about (shown whole as long as anything is).
    rng: draws which regions give way first (seeded per child: reproducible).
    Raises PromptTooLarge when even the smallest shape is over the budget."""
    size = lambda p: count.prompt(p, tools=tools)
    prompt = build(Shape())
    full = size(prompt)
    limit = budget.prompt
    if limit is None or full <= limit:
        return prompt, Fit(full, budget)
    cuts: list[str] = []
    for recent, failures in MEMORY_STEPS[1:]:
        prompt = build(Shape(recent=recent, failures=failures))
        if size(prompt) < full:  # (a young search's memory is short: then nothing was cut)
            cuts = [f"memory cut to {recent} recent ideas" + (f" and {failures} older failures" if failures else "")]
        if size(prompt) <= limit:
            return prompt, Fit(size(prompt), budget, cuts)
    recent, failures = MEMORY_STEPS[-1]
    order = _order(files, focus or {}, rng)
    hidden: dict[str, set[int]] = {}

    def shape_with(n: int, program_text: str | None = None) -> Shape:
        hidden.clear()
        for path, i in order[:n]:
            hidden.setdefault(path, set()).add(i)
        shown = {p: summarised(p, t, hidden.get(p, set())) for p, t in files.items()}
        total = sum(len(regions(p, t)) for p, t in files.items())
        note = (f"(To fit the model's context, {n} of {total} regions of the files above are summarised to their "
                "first lines: edit only text that is shown in full.)")
        return Shape(recent, failures, shown=shown, program=program_text, note=note)

    # The fewest regions summarised that make it fit (a prompt only shrinks as more are summarised).
    low, high = 1, len(order)
    if order and size(build(shape_with(high))) <= limit:
        while low < high:
            middle = (low + high) // 2
            if size(build(shape_with(middle))) <= limit:
                high = middle
            else:
                low = middle + 1
        prompt = build(shape_with(low))
        return prompt, Fit(size(prompt), budget, cuts + [_regions_cut(files, hidden)])
    head = program[:PROGRAM_HEAD] + f"\n\n[program.md cut at {PROGRAM_HEAD:,} of {len(program):,} characters]"
    prompt = build(shape_with(len(order), head if len(program) > PROGRAM_HEAD else None))
    smallest = size(prompt)
    if smallest <= limit:
        return prompt, Fit(smallest, budget, cuts + [_regions_cut(files, hidden), "program.md cut to its head"])
    raise PromptTooLarge(
        f"the prompt for {model} needs ~{smallest:,} tokens even with the search's memory cut and the genome "
        f"summarised (~{full:,} in full), but a {budget.context:,}-token context with --max-tokens {budget.answer:,} "
        f"leaves {limit:,}: serve the model with a larger context (--context-tokens to match) or lower --max-tokens")


def _regions_cut(files: dict[str, str], hidden: dict[str, set[int]]) -> str:
    return "; ".join(f"{path}: {len(hidden.get(path, ()))} of {len(regions(path, text))} regions summarised"
                     for path, text in sorted(files.items()) if hidden.get(path))
