"""A search's trials as a pandas DataFrame, for notebooks and statistics.

>>> df = trials_frame(search.trials())          # doctest: +SKIP
>>> df[df.kept][["number", "val_bpb", "description"]]   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from analysis.progress import device_seconds
from population.lineage import MINIMIZE, Lineage
from population.store import TrialRecord

COLUMNS = ("number", "operator", "parents", "status", "value", "genome_score", "kept", "proposer", "description",
           "seed", "started", "finished", "device_seconds")


def trials_frame(trials: Iterable[TrialRecord], *, metric: str = "val_bpb", direction: str = MINIMIZE) -> pd.DataFrame:
    """One row per trial: its record, its genome's mean score, whether it was kept, and every metric it reported.

    The score's column is named after the metric (`val_bpb` unless the search says otherwise).
    Metrics become columns named `metric.<key>` (e.g. `metric.peak_vram_mb`); a trial without
    one has NaN there. Rows are ordered by trial number.

    Args:
        trials: the trials of one search.
    """
    lineage = Lineage(list(trials), direction=direction)
    rows = []
    for t in lineage.trials:
        row = {"number": t.number, "operator": t.operator, "parents": tuple(t.parents), "status": t.status,
               metric: t.value, "genome_score": lineage.score_of(t.number) if t.finished_ok else None,
               "kept": lineage.kept(t.number), "proposer": t.proposer, "description": t.description, "seed": t.seed,
               "started": t.started, "finished": t.finished, "device_seconds": device_seconds(t)}
        row.update({f"metric.{k}": v for k, v in t.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else [metric if c == "value" else c for c in COLUMNS])
    return frame.astype({metric: float, "genome_score": float}) if rows else frame
