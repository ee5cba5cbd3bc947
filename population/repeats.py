"""When two ideas are the same idea: the key the lab notebook's rows and a proposed child are compared by.

An idea is what a child changed against its parent(s): the UPPERCASE constants it moved (which one,
from what value, to what value) and the rest of its code change. Two ideas are the same when both
parts are equal:

- the constants as the notebook records them (`Change`: name, old, new), so `LR = 0.04 -> 0.05` is one
  idea whatever the line looks like (`5e-2`, a new comment, `0.1 / 2`);
- the code change as the notebook keeps it (`notebook.normalised_diff`: the changed lines only, context
  dropped), with comments and whitespace removed (a space between two words stays one), the lines of
  the moved constants left out (their values are in the first part), each side's lines joined so that
  a statement wrapped over more lines reads the same, and lines that only moved or were reformatted
  cancelled out.

So a trivially reformatted repeat matches, and the same edit made to another parent matches too (the
context differs, the change does not): whether that is a new combination is the judge's call
(`evo.proposers.KnownIdeas`). A child that changes nothing by this measure (only comments) has no key
and never matches.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from population.notebook import Change, Idea, normalised_diff

# Trial attributes. SKIPPED_ATTR: the proposals refused before this child because they repeated a known
# idea, each {"description", "verdict", "reason", "proposer"}; REPEAT_ATTR: this child repeats an idea the
# notebook knows and was trained all the same ({"verdict", "reason"}: a new combination, or unclear).
SKIPPED_ATTR = "skipped_ideas"
REPEAT_ATTR = "repeats_idea"

_ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)=")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class IdeaKey:
    """What an idea changed, normalised (see the module docstring): equal keys, the same idea."""

    changes: frozenset[Change]
    removed: str
    added: str

    def __bool__(self) -> bool:
        return bool(self.changes or self.removed or self.added)


def strip_comment(line: str) -> str:
    """A line of Python without its comment (a `#` outside a quoted string, as far as the line shows)."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            return line[:i]
        i += 1
    return line


def squeeze(text: str) -> str:
    """`text` without whitespace, except one space where it separates two words (`return x`, `not a`)."""
    parts = _SPACE.split(text.strip())
    out = parts[0] if parts else ""
    for part in parts[1:]:
        if out and part and (out[-1].isalnum() or out[-1] == "_") and (part[0].isalnum() or part[0] == "_"):
            out += " "
        out += part
    return out


def _constants(changes) -> set[str]:
    """The names whose assignment lines the constants part already says (a tuple's NAME_0 is NAME's)."""
    names = set()
    for c in changes:
        names.add(c.name)
        base, _, index = c.name.rpartition("_")
        if base and index.isdigit():
            names.add(base)
    return names


def _code(lines: list[str], names: set[str]) -> list[str]:
    kept = []
    for line in lines:
        text = squeeze(strip_comment(line))
        match = _ASSIGN.match(text)
        if text and not (match and match.group(1) in names):
            kept.append(text)
    return kept


@functools.lru_cache(maxsize=65536)
def idea_key(changes: tuple[Change, ...], normalised: str) -> IdeaKey:
    """The key of an idea that moved `changes` and whose code change, as `notebook.normalised_diff` keeps it,
    is `normalised`. Cached: a search compares every proposal with every row of its task."""
    names = _constants(changes)
    removed = _code([line[1:] for line in normalised.splitlines() if line.startswith("-")], names)
    added = _code([line[1:] for line in normalised.splitlines() if line.startswith("+")], names)
    # Lines on both sides alike once normalised (a reformatted or moved line) are no change; a block
    # that reads the same joined (a statement wrapped differently) neither.
    minus, plus = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, removed, added, autojunk=False).get_opcodes():
        if op != "equal" and "".join(removed[i1:i2]) != "".join(added[j1:j2]):
            minus += removed[i1:i2]
            plus += added[j1:j2]
    return IdeaKey(frozenset(changes), "".join(minus), "".join(plus))


def key_of(idea: Idea) -> IdeaKey:
    """The key of a notebook row."""
    return idea_key(tuple(idea.changes), idea.diff)


def diff_lines(parents: list[dict[str, str]], child: dict[str, str]) -> str:
    """The diff of a child (path -> text) against each of its parents, as the notebook keeps a trial's
    (`normalised_diff` of the diffs against each parent in turn, as its folder's diff holds them)."""
    chunks = []
    for parent in parents:
        for path in sorted(set(parent) | set(child)):
            a, b = parent.get(path, ""), child.get(path, "")
            if a != b:
                chunks += difflib.unified_diff(a.splitlines(), b.splitlines(), f"a/{path}", f"b/{path}", n=0,
                                               lineterm="")
    return normalised_diff("\n".join(chunks))


def skipped_counts(trials) -> tuple[int, int]:
    """(trials saved, proposals skipped) of a search's trials: a child with at least one proposal refused
    before it would have spent a trial on a known idea (one trial saved, however many were refused)."""
    refused = [len(t.attrs.get(SKIPPED_ATTR) or ()) for t in trials]
    return sum(1 for n in refused if n), sum(refused)
