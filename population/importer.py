"""Import an autoresearch results.tsv as a (greedy) search, so an existing run can be reported and compared.

What an imported search is: a normal search folder whose store holds one trial per row
and whose population repository is empty, because a results.tsv has no genomes. So
`evo status`, `evo report`, `evo export` and `evo compare` work on it; `evo run` refuses
it (there is nothing to breed from); the report has no diffs.

How the rows become trials, in file order:
- the first row is the seed;
- a later row whose commit an earlier successful row already had is a re-evaluation of it;
- every other row is a mutation whose parent is the last `keep` row before it (autoresearch
  advances its branch on keep and resets it on discard, so that row is what it edited);
- keep and discard rows are successful trials with their val_bpb, crash rows failed ones;
  `kept` is the file's own keep flag; memory_gb becomes peak_vram_mb, and any other numeric
  column of a fork's wider file a metric of its own name;
- the genome identity (tree) is the commit, so re-evaluations group with their genome;
- device time is not in the file: every trial is taken to have used `seconds_per_trial`.

>>> search = import_results_tsv("results.tsv", "overnight", budget=300)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from population.results_tsv import TSV_CRASH, TSV_KEEP, parse_results_tsv
from population.search import Search, SearchConfig, SearchError, check_name
from population.store import IMPORTED_ATTR, OK, TrialStatus

IMPORTED_PROFILE = "imported"


def import_results_tsv(path: str | Path, name: str, *, root: str | Path = "runs", budget: float = 300.0,
                       seconds_per_trial: float | None = None, storage: str | None = None) -> Search:
    """Create search `name` from a results.tsv and return it open.

    Args:
        path: the results.tsv to read.
        name: the new search's name (must not exist yet).
        root: the folder holding the searches.
        budget: the training budget per trial of the run the file came from, in seconds
            (autoresearch's is 300); recorded as the search's budget.
        seconds_per_trial: device time to assume per trial (default: `budget`); only
            used for device-hour axes and totals.
        storage: an Optuna storage URL (default: SQLite in the search folder).

    Raises:
        SearchError: for a bad name, an existing search, or a file that cannot be read.
    """
    check_name(name)
    if Search.exists(name, root=root):
        raise SearchError(f"search {name!r} already exists in {Path(root).resolve()}; pick another name")
    if budget <= 0:
        raise SearchError(f"`budget` must be a positive number of seconds, not {budget:g}")
    path = Path(path)
    try:
        rows = parse_results_tsv(path.read_text())
    except OSError as e:
        raise SearchError(f"cannot read {path}: {e.strerror or e}")
    except ValueError as e:
        raise SearchError(f"{path}: {e}")
    if not rows:
        raise SearchError(f"{path} has no result rows")
    seconds = float(seconds_per_trial if seconds_per_trial is not None else budget)

    config = SearchConfig(name=name, profile=IMPORTED_PROFILE, budget=float(budget), mutable=["train.py"],
                          data="imported", storage=storage or "")
    search = Search.create(root, config, seed_files=None, study_attrs={
        IMPORTED_ATTR: {"source": str(path.resolve()), "rows": len(rows), "seconds_per_trial": seconds}})
    _record_rows(search.store, rows, seconds)
    return search


def _record_rows(store, rows: list[dict], seconds: float) -> None:
    """One trial per row, in file order, with the parents and operators the module docstring describes."""
    first_ok: dict[str, int] = {}
    tip: int | None = None  # the last kept row: what autoresearch's branch pointed at
    for i, row in enumerate(rows):
        commit = row["commit"]
        # A missing commit ("-------" in our own exports) must not make rows one genome.
        tree = commit if commit.strip("-") else f"imported-row-{i}"
        if i == 0:
            operator, parents = "seed", []
        elif tree in first_ok:
            operator, parents = "reeval", [first_ok[tree]]
        else:
            operator, parents = "mutate", [tip if tip is not None else 0]
        attrs = {"operator": operator, "parents": parents, "commit": commit, "tree": tree,
                 "description": row["description"], "proposer": "seed" if i == 0 else "imported",
                 "strategy": "greedy", "seed": 0, "island": 0, "imported_row": i + 1}
        number = store.start(attrs)
        # A fork's extra numeric columns (tokens, params, a second score) come along as metrics.
        metrics = {**{k: v for k, v in row.get("extra", {}).items() if isinstance(v, float)},
                   "peak_vram_mb": row["memory_gb"] * 1024}
        if row["status"] == TSV_CRASH:
            store.finish(number, status=TrialStatus.CRASH, metrics=metrics, error="crashed (imported row)",
                         wall_seconds=seconds, kept=False)
            continue
        metrics["val_bpb"] = row["val_bpb"]
        kept = row["status"] == TSV_KEEP
        store.finish(number, status=OK, value=row["val_bpb"], metrics=metrics, wall_seconds=seconds, kept=kept)
        first_ok.setdefault(tree, number)
        if kept:
            tip = number


def is_imported(search: Search) -> bool:
    """Whether a search was made by `import_results_tsv` (it has no genomes to run).

    Args:
        search: an open search.
    """
    return bool(search.store.attr(IMPORTED_ATTR))


def check_runnable(search: Search) -> None:
    """Raise SearchError when `search` has no genomes to run (it was imported from a results.tsv)."""
    if is_imported(search):
        raise SearchError(f"search {search.config.name!r} was imported from a results.tsv and has no genomes to run; "
                          "report it (evo report) or compare it (evo compare --searches)")
