"""A model's proposed change and how it becomes a child genome, or precisely why it cannot.

A change is a one-line description, a rationale, and edits: exact search/replace pairs on
the mutable files, or whole files when the change is large. Every problem is collected and
reported at once, in words a model can act on in its one repair turn: which edit, which
file, how many times the search text occurred, the closest line when it did not.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from evo.proposers._blocks import END, START, outside_change
from population.errors import ProposalError

# The most text one change may carry, edits and whole files together (characters).
EDITS_CAP = 4 << 20
# Lines git writes around a conflict; a child must not keep them.
CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


class EditError(ProposalError, ValueError):
    """The proposed change does not give a valid child; the message lists every problem."""


@dataclass
class Edit:
    file: str
    search: str
    replace: str


@dataclass
class Change:
    """What the model proposed, before it is applied."""

    description: str
    rationale: str = ""
    edits: list[Edit] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)   # whole-file replacements


def _path(value) -> str:
    text = str(value or "").strip()
    return text[2:] if text.startswith("./") else text


def parse_change(fields: dict | None, *, allow_empty: bool = False) -> Change:
    """Read the tool's arguments (or the parsed JSON answer) into a Change.

    fields: {"description": str, "rationale": str, "edits": [{"file", "search", "replace"}],
             "files": [{"file", "content"}]}; "files" may also be a {path: text} object.
    allow_empty: accept a change without edits (a crossover may keep a clean merge as it is).
    Raises EditError naming every malformed part."""
    if not isinstance(fields, dict):
        raise EditError("the answer is not an object with description, rationale and edits")
    problems = []
    description = fields.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append("description is missing: give a one-line description of the change")
        description = ""
    lines = [line.strip() for line in str(description).strip().splitlines() if line.strip()]
    # Kept whole here: the loop cuts description and rationale to their caps and records the cut.
    change = Change(description=lines[0] if lines else "", rationale=str(fields.get("rationale") or "").strip())

    edits = fields.get("edits") or []
    if not isinstance(edits, list):
        problems.append("edits must be a list of {file, search, replace} objects")
        edits = []
    for i, e in enumerate(edits, 1):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("file", "search", "replace")):
            problems.append(f"edit {i} must be an object with string fields file, search and replace")
            continue
        change.edits.append(Edit(_path(e["file"]), e["search"], e["replace"]))

    files = fields.get("files") or []
    if isinstance(files, dict):
        files = [{"file": k, "content": v} for k, v in files.items()]
    if not isinstance(files, list):
        problems.append("files must be a list of {file, content} objects")
        files = []
    for i, f in enumerate(files, 1):
        if not isinstance(f, dict) or not isinstance(f.get("file"), str) or not isinstance(f.get("content"), str):
            problems.append(f"files entry {i} must be an object with string fields file and content")
            continue
        change.files[_path(f["file"])] = f["content"]

    if not problems and not allow_empty and not change.edits and not change.files:
        problems.append("the answer has no edits and no files: propose one concrete change")
    size = sum(len(e.search) + len(e.replace) for e in change.edits) + sum(len(t) for t in change.files.values())
    if size > EDITS_CAP:
        problems.append(f"the edits hold {size:,} characters; a change may hold at most {EDITS_CAP:,}: send a smaller "
                        "change, as search/replace edits")
    if problems:
        raise EditError("\n".join(problems))
    return change


def _closest_line(text: str, search: str) -> str:
    """Where the model probably meant: the file line most like the search text's first line."""
    first = next((line.strip() for line in search.splitlines() if line.strip()), "")
    if not first:
        return ""
    best, where = 0.0, None
    for number, line in enumerate(text.splitlines(), 1):
        # Compare with the line's start only: a trailing comment should not hide a near match.
        candidate = line.strip()[: len(first) + 8]
        ratio = difflib.SequenceMatcher(None, first, candidate).ratio()
        if ratio > best:
            best, where = ratio, (number, line.strip())
    if where is None or best < 0.6:
        return ""
    return f"; the closest line is line {where[0]}: {where[1]!r}"


def apply_change(start: dict[str, str], change: Change, *, mutable: list[str]) -> dict[str, str]:
    """The files after `change`: whole files first, then each edit in order on the text so far.

    start: the files the change was written against (the parent's, or a crossover's merge).
    mutable: the files a child may change; touching any other file is an error.
    Raises EditError listing every edit that does not apply."""
    problems = []
    allowed = ", ".join(mutable)
    child = dict(start)
    for path, text in change.files.items():
        if path not in mutable:
            problems.append(f"files: {path} is not a mutable file of this search (mutable: {allowed}); "
                            f"it cannot change")
            continue
        child[path] = text
    for i, e in enumerate(change.edits, 1):
        if e.file not in mutable:
            problems.append(f"edit {i} targets {e.file or '(no file)'}, which is not a mutable file of this search "
                            f"(mutable: {allowed}); it cannot change")
            continue
        if not e.search:
            problems.append(f"edit {i} on {e.file}: the search text is empty; quote the exact lines to replace")
            continue
        text = child.get(e.file, "")
        count = text.count(e.search)
        if count == 1:
            child[e.file] = text.replace(e.search, e.replace, 1)
        elif count == 0:
            problems.append(f"edit {i} on {e.file}: the search text was not found; it must match the file exactly, "
                            f"whitespace and comments included{_closest_line(text, e.search)}")
        else:
            problems.append(f"edit {i} on {e.file}: the search text occurs {count} times; include more surrounding "
                            f"lines so that it matches exactly once")
    if problems:
        raise EditError("\n".join(problems))
    return child


def check_child(child: dict[str, str], start: dict[str, str], *, allow_unchanged: bool = False,
                is_known: Callable[[dict[str, str]], bool] = lambda files: False) -> None:
    """Reject a child that cannot be worth a trial: unchanged, known, conflicted, not Python, or
    changed outside the marked EVOLVE-BLOCK regions of a file that has them.

    start: the files the change was written against.
    allow_unchanged: accept child == start (a crossover's clean merge is itself a new genome).
    is_known: whether the search already has this genome (ProposalContext.is_known).
    Raises EditError listing every problem."""
    problems = []
    if child == start and not allow_unchanged:
        problems.append("the edits leave the files unchanged: propose a change")
    for path, text in sorted(child.items()):
        where = outside_change(start.get(path, ""), text)
        if where:
            problems.append(f"{path}: the edits change {where}, outside its {START} ... {END} regions; only the "
                            f"lines between those markers may change, the rest of the file is fixed")
        marked = [n for n, line in enumerate(text.splitlines(), 1) if line.startswith(CONFLICT_MARKERS)]
        if marked:
            problems.append(f"{path} still holds conflict markers (line {marked[0]}): resolve every conflict")
        if path.endswith(".py"):
            try:
                compile(text, path, "exec", dont_inherit=True)
            except SyntaxError as e:
                where = f"line {e.lineno}" if e.lineno else "somewhere"
                problems.append(f"{path} does not compile after the edits: {e.msg} at {where}: {(e.text or '').strip()!r}")
            except ValueError as e:  # null bytes
                problems.append(f"{path} does not compile after the edits: {e}")
    if not problems and is_known(child):
        problems.append("this exact genome was already proposed or evaluated in this search: propose a different change")
    if problems:
        raise EditError("\n".join(problems))
