"""Ideas across searches ranked by what they measured (`evo ideas`, and a section of the report).

An idea is what a child changed: for constants the moves (`DEPTH 4 -> 5`), for code its
description. The same idea tried several times (in one search from several parents, or in
several searches of the same task) is one row: its effect is the child's score minus its
parent's in the search's direction (positive helped), as a mean with a bootstrap interval
over the tries that were scored, how many tries there were, how many failed, and how many
made a new best.

>>> from population.notebook import Notebook      # doctest: +SKIP
>>> book = Notebook.at_root("runs"); book.sync_root("runs")
>>> print(render_ideas(rank_ideas(book.ideas(like="warmup"))))
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from analysis.stats import bootstrap_ci
from population.lineage import MIX_WEIGHTS_ATTR
from population.notebook import Idea

RESAMPLES = 2000   # per row: enough for a 95% interval to two digits, cheap for hundreds of rows


@dataclass(frozen=True)
class IdeaRow:
    """One idea with what its tries measured (see the module docstring)."""

    idea: str                   # the moves of constants, else the description
    kind: str                   # "constants" or "code"
    metric: str
    tries: int                  # children that tried it, failed ones included
    scored: int                 # tries with a score and a scored parent
    mean: float | None          # mean effect (positive helped)
    low: float | None           # 95% bootstrap interval of the mean (None with fewer than two scored)
    high: float | None
    failed: int
    kept: int                   # tries that made a new best
    searches: tuple[str, ...]
    noise_sd: float | None      # the largest noise floor of the searches it was tried in


def key_of(idea: Idea) -> tuple[str, str, str]:
    """(what the idea is, its kind, the metric): ideas with the same key are one row."""
    if idea.changes:
        return idea.move, "constants", idea.metric
    return " ".join(idea.description.split()) or "(no description)", "code", idea.metric


def rank_ideas(ideas: list[Idea]) -> list[IdeaRow]:
    """One row per idea, the best measured first (then the ones never scored, most tried first)."""
    groups: dict[tuple[str, str, str], list[Idea]] = {}
    for i in ideas:
        groups.setdefault(key_of(i), []).append(i)
    rows = [_row(key, tries) for key, tries in groups.items()]
    return sorted(rows, key=lambda r: (r.mean is None, -(r.mean or 0.0), -r.tries, r.idea))


def _row(key: tuple[str, str, str], tries: list[Idea]) -> IdeaRow:
    effects = [i.effect for i in tries if i.effect is not None]
    interval = bootstrap_ci(effects, resamples=RESAMPLES)
    floors = [i.noise_sd for i in tries if i.noise_sd]
    return IdeaRow(idea=key[0], kind=key[1], metric=key[2], tries=len(tries), scored=len(effects),
                   mean=statistics.fmean(effects) if effects else None,
                   low=interval[0] if interval else None, high=interval[1] if interval else None,
                   failed=sum(1 for i in tries if i.score is None), kept=sum(1 for i in tries if i.kept),
                   searches=tuple(sorted({i.search for i in tries})), noise_sd=max(floors) if floors else None)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def render_ideas(rows: list[IdeaRow], *, limit: int | None = None) -> str:
    """The rows as a text table (the first `limit` of them)."""
    if not rows:
        return "no ideas in the lab notebook yet (finished children of a search become ideas)"
    shown = rows[:limit] if limit else rows
    table = [("effect", "95% interval", "tries", "scored", "failed", "kept", "searches", "idea")]
    for r in shown:
        interval = f"[{_num(r.low)}, {_num(r.high)}]" if r.low is not None else "-"
        searches = ",".join(r.searches) if len(r.searches) <= 2 else f"{len(r.searches)} searches"
        table.append((_num(r.mean), interval, str(r.tries), str(r.scored), str(r.failed), str(r.kept), searches,
                      r.idea[:90]))
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table]
    more = f"\n... {len(rows) - len(shown)} more (--limit)" if len(shown) < len(rows) else ""
    return ("effect: the child's score minus its parent's, positive helped\n" + "\n".join(lines) + more)


def as_json(rows: list[IdeaRow]) -> list[dict]:
    return [{**asdict(r), "searches": list(r.searches)} for r in rows]


def notebook_rows(search) -> list[IdeaRow]:
    """The ranked ideas of every search of `search`'s task in its notebook, after adding its own (none when
    the notebook cannot be read: the report goes on without that section)."""
    import sqlalchemy as sa

    from population.notebook import Notebook, task_of
    try:
        book = Notebook.for_search(search)
        try:
            book.sync(search)
            return rank_ideas(book.ideas(task=task_of(search.config)))
        finally:
            book.close()
    except sa.exc.SQLAlchemyError:
        return []


def weights_over_time(trials, *, rows: int = 12) -> list[tuple[int, dict[str, float]]]:
    """(trial number, the adaptive mix's weights when it was proposed), for about `rows` trials spread
    over the search (first and last included); empty for a search without an adaptive mix."""
    weighed = [(t.number, t.attrs[MIX_WEIGHTS_ATTR]) for t in sorted(trials, key=lambda t: t.number)
               if isinstance(t.attrs.get(MIX_WEIGHTS_ATTR), dict)]
    if len(weighed) <= rows:
        return weighed
    step = (len(weighed) - 1) / (rows - 1)
    return [weighed[round(i * step)] for i in range(rows)]
