"""Small text helpers every view shares (tables, labels, status lines)."""

from __future__ import annotations

import math


def fmt(value, digits: int = 4) -> str:
    """A number for a table cell: '-' when missing or not finite."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def shorten(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def best_score(best, digits: int = 4) -> str:
    """A best genome's score for a one-line view: its mean, and for a promoted genome the score at
    its highest rung first (the one it is ranked by)."""
    if getattr(best, "rung", 0):
        return f"{fmt(best.score_at(best.rung), digits)} at rung {best.rung} ({fmt(best.score, digits)} at rung 0)"
    return fmt(best.score, digits)


def duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def crop(line: str, width: int | None) -> str:
    """`line` cut to `width` characters with an ellipsis (never wrapped); whole when width is None."""
    return line if width is None or len(line) <= width else line[: max(0, width - 1)] + "…"
