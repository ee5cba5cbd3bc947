"""autoresearch's results.tsv: the interchange format of one greedy line of experiments.

Columns: commit, val_bpb, memory_gb, status (keep, discard, crash), description. Written by
`evo export --tsv` and read by `evo import`, so an autoresearch run and a search can be
compared side by side.
"""

from __future__ import annotations

import math

from population.lineage import Lineage
from population.store import TrialRecord

TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")


def results_tsv(trials: list[TrialRecord]) -> str:
    """autoresearch's results.tsv: keep = improved the best so far, discard = did not, crash = no result."""
    trials = list(trials)
    lineage = Lineage(trials)
    rows = ["\t".join(TSV_COLUMNS)]
    for t in lineage.trials:
        if t.state == "RUNNING" or t.status == "interrupted":
            continue
        if t.finished_ok or (t.status == "duplicate" and t.value is not None):
            status = "keep" if lineage.kept(t.number) or t.operator == "seed" else "discard"
            val = f"{t.value:.6f}"
        else:
            status, val = "crash", "0.000000"
        memory = t.metrics.get("peak_vram_mb")
        memory_gb = f"{memory / 1024:.1f}" if memory is not None and math.isfinite(memory) else "0.0"
        description = (t.description or t.operator).replace("\t", " ").replace("\n", " ")
        rows.append("\t".join((t.commit[:7] or "-------", val, memory_gb, status, description)))
    return "\n".join(rows) + "\n"


class TsvError(ValueError):
    """A results.tsv that cannot be read; the message names the line and what is wrong."""


def parse_results_tsv(text: str) -> list[dict]:
    """Read autoresearch's results.tsv: one dict per row with commit, val_bpb, memory_gb, status, description.

    The header line is optional (columns are then taken in autoresearch's order); status
    must be keep, discard or crash; a crash's val_bpb is None whatever the file says. The
    description is everything after the fourth tab, so a stray tab in it survives.

    Args:
        text: the file's contents.

    Raises:
        TsvError: on a malformed line, with its line number.
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.rstrip("\r").split("\t", 4)
        if lineno == 1 and [c.strip().lower() for c in cells[:4]] == list(TSV_COLUMNS[:4]):
            continue
        if len(cells) < 4:
            raise TsvError(f"line {lineno}: expected 5 tab-separated columns ({', '.join(TSV_COLUMNS)}), got {len(cells)}")
        commit, val, memory, status = (c.strip() for c in cells[:4])
        description = cells[4].strip() if len(cells) > 4 else ""
        status = status.lower()
        if status not in ("keep", "discard", "crash"):
            raise TsvError(f"line {lineno}: status must be keep, discard or crash, not {status!r}")
        try:
            value = float(val)
            memory_gb = float(memory) if memory else 0.0
        except ValueError:
            raise TsvError(f"line {lineno}: val_bpb and memory_gb must be numbers, got {val!r} and {memory!r}")
        if status != "crash" and not (math.isfinite(value) and value > 0):
            raise TsvError(f"line {lineno}: a {status} row needs a positive val_bpb, got {val!r}")
        rows.append({"commit": commit, "val_bpb": None if status == "crash" else value, "memory_gb": memory_gb,
                     "status": status, "description": description})
    return rows
