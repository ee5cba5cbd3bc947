"""autoresearch's results.tsv: the interchange format of one greedy line of experiments.

Columns: commit, val_bpb, memory_gb, status (keep, discard, crash), description. Written by
`evo export --tsv` and read by `evo import`, so an autoresearch run and a search can be
compared side by side.
"""

from __future__ import annotations

import math

from population.errors import ConfigError
from population.lineage import MINIMIZE, Lineage
from population.store import TrialRecord, TrialStatus

TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
# The file's own status column (not a trial status): a kept row, a discarded one, a crash.
TSV_KEEP, TSV_DISCARD, TSV_CRASH = "keep", "discard", "crash"


def results_tsv(trials: list[TrialRecord], *, metric: str = "val_bpb", direction: str = MINIMIZE) -> str:
    """autoresearch's results.tsv: keep = improved the best so far, discard = did not, crash = no result.
    The score's column is named after the search's metric (val_bpb for the harness)."""
    trials = list(trials)
    lineage = Lineage(trials, direction=direction)
    rows = ["\t".join((TSV_COLUMNS[0], metric, *TSV_COLUMNS[2:]))]
    for t in lineage.trials:
        if t.status in (TrialStatus.RUNNING, TrialStatus.INTERRUPTED):
            continue
        if t.finished_ok or (t.status == TrialStatus.DUPLICATE and t.value is not None):
            status = TSV_KEEP if lineage.kept(t.number) or t.operator == "seed" else TSV_DISCARD
            val = f"{t.value:.6f}"
        else:
            status, val = TSV_CRASH, "0.000000"
        memory = t.metrics.get("peak_vram_mb")
        memory_gb = f"{memory / 1024:.1f}" if memory is not None and math.isfinite(memory) else "0.0"
        description = (t.description or t.operator).replace("\t", " ").replace("\n", " ")
        rows.append("\t".join((t.commit[:7] or "-------", val, memory_gb, status, description)))
    return "\n".join(rows) + "\n"


class TsvError(ConfigError, ValueError):
    """A results.tsv that cannot be read; the message names the line and what is wrong."""


def parse_results_tsv(text: str) -> list[dict]:
    """Read autoresearch's results.tsv: one dict per row with commit, val_bpb, memory_gb, status,
    description, and `extra` (the row's other columns by name, numbers as floats).

    With a header line, columns are found by name, in any order, with any others beside them
    (a fork's results.tsv with more columns reads as well); commit, val_bpb and status must be
    among them. Without one, they are taken in autoresearch's order. Status must be keep,
    discard or crash; a crash's val_bpb is None whatever the file says. When description is
    the last column, everything after its tab belongs to it, so a stray tab in it survives.

    Args:
        text: the file's contents.

    Raises:
        TsvError: on a malformed line or header, with its line number.
    """
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        return []
    columns = _header(lines[0])
    if columns is not None:
        lines = lines[1:]
    else:
        columns = list(TSV_COLUMNS)
    return [_row(lineno, line, columns) for lineno, line in lines]


def _header(first: tuple[int, str]) -> list[str] | None:
    """The column names of a header line, or None when the line is a row (no header)."""
    lineno, line = first
    # autoresearch's columns in any case; a fork's own columns keep their names as written
    names = [c.strip().lower() if c.strip().lower() in TSV_COLUMNS else c.strip() for c in line.split("\t")]
    if not {"commit", "val_bpb", "status"} & set(names) or any(isinstance(_number_or_text(n), float) for n in names):
        return None  # a row: it names no column, or holds a number
    missing = [c for c in ("commit", "val_bpb", "status") if c not in names]
    if missing:
        raise TsvError(f"line {lineno}: the header has no {', '.join(missing)} column (its columns: "
                       f"{', '.join(n for n in names if n)}); a results.tsv needs commit, val_bpb and status")
    if len(set(names)) != len(names):
        raise TsvError(f"line {lineno}: the header names a column twice")
    return names


def _row(lineno: int, line: str, columns: list[str]) -> dict:
    last_is_description = columns[-1] == "description"
    cells = line.split("\t", len(columns) - 1) if last_is_description else line.split("\t")
    required = 1 + max(columns.index(c) for c in ("commit", "val_bpb", "status"))
    if len(cells) < required:
        raise TsvError(f"line {lineno}: expected {len(columns)} tab-separated columns ({', '.join(columns)}), "
                       f"got {len(cells)}")
    cell = dict(zip(columns, (c.strip() for c in cells)))
    status, val, memory = cell["status"].lower(), cell["val_bpb"], cell.get("memory_gb", "")
    if status not in (TSV_KEEP, TSV_DISCARD, TSV_CRASH):
        raise TsvError(f"line {lineno}: status must be keep, discard or crash, not {status!r}")
    try:
        value = float(val)
        memory_gb = float(memory) if memory else 0.0
    except ValueError:
        raise TsvError(f"line {lineno}: val_bpb and memory_gb must be numbers, got {val!r} and {memory!r}")
    if status != TSV_CRASH and not (math.isfinite(value) and value > 0):
        raise TsvError(f"line {lineno}: a {status} row needs a positive val_bpb, got {val!r}")
    extra = {k: _number_or_text(v) for k, v in cell.items() if k not in TSV_COLUMNS and k}
    return {"commit": cell["commit"], "val_bpb": None if status == TSV_CRASH else value, "memory_gb": memory_gb,
            "status": status, "description": cell.get("description", ""), "extra": extra}


def _number_or_text(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text
