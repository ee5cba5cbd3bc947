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
