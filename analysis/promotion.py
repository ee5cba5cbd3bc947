"""The rungs of a search that promotes genomes to larger scales, and how well each predicted the next.

A cheap proxy (a short budget) is only worth searching with if its ranking of genomes
holds at the scale that matters. For every pair of adjacent rungs this computes Spearman's
rank correlation over the genomes scored at both: 1 means the small scale ranked them
exactly as the large one did, 0 that it told nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.stats import spearman
from population.lineage import Lineage, best_of


@dataclass(frozen=True)
class RungRow:
    rung: int
    label: str                 # how the rung differs from the search's own scale ("" for rung 0)
    genomes: int               # genomes with a score at this rung
    attempts: int              # trials run at this rung (failures included)
    best: float | None
    rho: float | None = None   # rank correlation with the rung below, over the genomes scored at both
    pairs: int = 0             # how many genomes that correlation rests on


def rung_rows(lineage: Lineage) -> list[RungRow]:
    """One row per rung that has trials, lowest first (empty for a search that never promoted)."""
    promoted = [t for t in lineage.trials if t.operator == "promote" and t.counts]
    if not promoted:
        return []
    labels = {int(t.attrs.get("rung", 1)): t.attrs.get("rung_label", "") for t in promoted}
    rows = []
    for rung in range(max(labels) + 1):
        scored = [i for i in lineage.individuals if i.score_at(rung) is not None]
        attempts = (sum(1 for t in lineage.trials if t.counts and t.operator != "promote") if rung == 0 else
                    sum(1 for t in promoted if int(t.attrs.get("rung", 1)) == rung))
        rho, pairs = None, 0
        if rung > 0:
            both = [i for i in scored if i.score_at(rung - 1) is not None]
            pairs = len(both)
            rho = spearman([i.score_at(rung - 1) for i in both], [i.score_at(rung) for i in both])
        rows.append(RungRow(rung=rung, label=labels.get(rung, "the search's own scale" if rung == 0 else ""),
                            genomes=len(scored), attempts=attempts,
                            best=best_of([i.score_at(rung) for i in scored], lineage.direction) if scored else None,
                            rho=rho, pairs=pairs))
    return rows


def describe_rho(row: RungRow) -> str:
    """The correlation in words, with the number of genomes it rests on."""
    if row.rung == 0:
        return ""
    if row.rho is None:
        return f"not measurable yet ({row.pairs} genome(s) scored at both rungs; 3 needed)"
    strength = ("strong" if row.rho >= 0.7 else "moderate" if row.rho >= 0.4 else "weak" if row.rho >= 0.1 else
                "none" if row.rho > -0.1 else "reversed: the cheaper rung ranked them the other way")
    return f"Spearman rho {row.rho:+.2f} over {row.pairs} genomes ({strength})"
