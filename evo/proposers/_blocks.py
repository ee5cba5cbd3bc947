"""Marked blocks: where a mutable file has EVOLVE-BLOCK-START ... EVOLVE-BLOCK-END lines, only
the lines between them may change (the convention of OpenEvolve and ShinkaEvolve programs).

A file without markers is mutable as a whole. With markers, everything outside the marked
regions (the marker lines included) is fixed: an LLM's edit there is refused like an edit
that does not apply, and the offline proposer turns only the knobs inside.
"""

from __future__ import annotations

START, END = "EVOLVE-BLOCK-START", "EVOLVE-BLOCK-END"


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def marked(text: str) -> bool:
    """Whether the file marks the regions that may change."""
    return START in text


def regions(text: str) -> list[tuple[int, int]] | None:
    """Character spans of the marked regions' contents (between the marker lines), or None
    when the file has no markers (then all of it may change). An unclosed block runs to the end."""
    if not marked(text):
        return None
    spans, offset, opened = [], 0, None
    for line in _lines(text):
        if START in line and opened is None:
            opened = offset + len(line)
        elif END in line and opened is not None:
            spans.append((opened, offset))
            opened = None
        offset += len(line)
    if opened is not None:
        spans.append((opened, offset))
    return spans


def inside(text: str, span: tuple[int, int]) -> bool:
    """Whether the character span lies within a marked region (always, for a file without markers)."""
    spans = regions(text)
    return spans is None or any(a <= span[0] and span[1] <= b for a, b in spans)


def fixed_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside the marked regions, marker lines included."""
    kept, open_ = [], False
    for number, line in enumerate(_lines(text), 1):
        if START in line and not open_:
            open_ = True
            kept.append((number, line))
        elif END in line and open_:
            open_ = False
            kept.append((number, line))
        elif not open_:
            kept.append((number, line))
    return kept


def outside_change(before: str, after: str) -> str | None:
    """Where `after` changes `before` outside its marked regions, in words; None when it does not
    (or `before` has no markers)."""
    if not marked(before):
        return None
    old, new = fixed_lines(before), fixed_lines(after)
    for (number, line), (_, other) in zip(old, new):
        if line != other:
            return f"line {number} ({line.strip()[:80]!r})"
    if len(old) != len(new):
        where = old[len(new)] if len(old) > len(new) else new[len(old)]
        return f"line {where[0]} ({where[1].strip()[:80]!r})"
    return None
