"""The lab notebook: one row per finished idea of every search, so the next search can learn from them.

An idea is a child trial (a mutation or a crossover) once its result is known: what it changed
(for UPPERCASE constants, which one and from what to what, read from the trials' Optuna params;
for code, the description and a normalised diff against the parent), the parent's score, the
child's, their difference in the search's direction (`effect`: positive helped), the search's
noise floor then, and the facts that make two searches comparable (task, profile, budget).

The notebook is *derived* from the studies and never written by the loop: every use first adds
the rows of trials that finished since (`sync`, keyed by search and trial number, so adding a
row twice is harmless). So a search killed with -9 loses nothing (its next reader adds what is
missing), searches made before the notebook existed are read into it on first use, and two
hosts of a shared search fill one table. Where it lives:

- beside local searches: `notebook.db` (SQLite) in the folder that holds the search folders;
- for a shared search: the table `evo_ideas` in the search's own PostgreSQL database.

>>> book = Notebook.for_search(search)          # doctest: +SKIP
>>> book.sync(search); book.ideas(task=task_of(search.config))   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import sqlalchemy as sa

from population.lineage import CHILD_OPERATORS, Lineage, gain
from population.search import Search, SearchError
from population.store import TrialRecord, is_postgres, with_driver

FILE = "notebook.db"
TABLE = "evo_ideas"
DIFF_CAP = 4000      # characters of normalised diff kept per idea (enough to recognise an idea, not to replay it)


@dataclass(frozen=True)
class Change:
    """One UPPERCASE constant a child changed: `name` from `old` to `new` (as the params record them)."""

    name: str
    old: object
    new: object

    @property
    def direction(self) -> str:
        """"up", "down" or "set" (not comparable: a bool, a new or removed constant)."""
        if isinstance(self.old, bool) or isinstance(self.new, bool) or self.old is None or self.new is None:
            return "set"
        return "up" if self.new > self.old else "down"

    def __str__(self) -> str:
        return f"{self.name} {_text(self.old)} -> {_text(self.new)}"


@dataclass(frozen=True)
class Idea:
    """One row of the notebook (see the module docstring)."""

    search_id: str          # the search's name and creation time: a search made again under a name is another
    trial: int
    search: str
    task: str               # what makes searches comparable: the harness's hash (or project) and the metric
    profile: str
    budget: float
    metric: str
    direction: str
    operator: str
    proposer: str
    parents: tuple[int, ...]
    description: str
    changes: tuple[Change, ...] = ()
    diff: str = ""
    parent_score: float | None = None
    score: float | None = None
    effect: float | None = None      # gain of the child over its parent in the search's direction (None: no score)
    noise_sd: float | None = None    # the search's noise floor when the row was made (None: not measured)
    status: str = ""
    feasible: bool = True
    kept: bool = False

    @property
    def move(self) -> str:
        """The constants changed, as `NAME old -> new` (joined with ", "); "" for an idea in code only."""
        return ", ".join(str(c) for c in self.changes)


def _text(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".e") else text + ".0"
    return "?" if value is None else str(value)


def task_of(config) -> str:
    """What makes two searches comparable: the same harness (or project, for a command target) and metric."""
    return f"{config.harness_sha256 or config.project or config.name}|{config.metric}"


def search_id_of(config) -> str:
    return f"{config.name}@{config.created}"


def changes_between(parent: dict, child: dict) -> tuple[Change, ...]:
    """The constants whose values differ between two trials' params (tuples split as NAME_0, NAME_1, ...)."""
    return tuple(Change(n, parent.get(n), child.get(n)) for n in sorted(set(parent) | set(child))
                 if parent.get(n) != child.get(n))


def normalised_diff(diff: str) -> str:
    """The changed lines of a unified diff, whitespace collapsed, headers and context dropped (capped)."""
    lines = [line[0] + " ".join(line[1:].split()) for line in diff.splitlines()
             if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()]
    return "\n".join(lines)[:DIFF_CAP]


def idea_of(t: TrialRecord, lineage: Lineage, config, *, diff: str = "", noise_sd: float | None = None) -> Idea:
    """The notebook row of child trial `t` of a search with configuration `config`."""
    parent_score = lineage.parent_score(t)
    score = t.value if t.finished_ok else None
    effect = gain(parent_score, score, config.direction) if parent_score is not None and score is not None else None
    parent = lineage.by_number.get(t.parents[0]) if t.parents else None
    changes = changes_between(parent.params, t.params) if parent is not None and t.params and parent.params else ()
    return Idea(search_id=search_id_of(config), trial=t.number, search=config.name, task=task_of(config),
                profile=config.profile, budget=float(config.budget), metric=config.metric, direction=config.direction,
                operator=t.operator, proposer=t.proposer, parents=tuple(t.parents),
                description=t.description.splitlines()[0] if t.description else "", changes=changes,
                diff=normalised_diff(diff), parent_score=parent_score, score=score,
                effect=effect if effect is None or math.isfinite(effect) else None, noise_sd=noise_sd,
                status=t.status, feasible=t.feasible, kept=lineage.kept(t.number))


def is_idea(t: TrialRecord) -> bool:
    """Whether a trial becomes a notebook row: a child whose result is known (failed ones too)."""
    return t.operator in CHILD_OPERATORS and t.counts


_metadata = sa.MetaData()
_table = sa.Table(
    TABLE, _metadata,
    sa.Column("search_id", sa.String(200), primary_key=True), sa.Column("trial", sa.Integer, primary_key=True),
    sa.Column("search", sa.String(100)), sa.Column("task", sa.String(300)), sa.Column("profile", sa.String(100)),
    sa.Column("budget", sa.Float), sa.Column("metric", sa.String(100)), sa.Column("direction", sa.String(20)),
    sa.Column("operator", sa.String(20)), sa.Column("proposer", sa.String(200)), sa.Column("parents", sa.Text),
    sa.Column("description", sa.Text), sa.Column("changes", sa.Text), sa.Column("diff", sa.Text),
    sa.Column("parent_score", sa.Float), sa.Column("score", sa.Float), sa.Column("effect", sa.Float),
    sa.Column("noise_sd", sa.Float), sa.Column("status", sa.String(40)), sa.Column("feasible", sa.Boolean),
    sa.Column("kept", sa.Boolean), sa.Column("recorded", sa.String(40)),
)


def _row(idea: Idea) -> dict:
    row = {f.name: getattr(idea, f.name) for f in fields(Idea)}
    row["parents"] = json.dumps(list(idea.parents))
    row["changes"] = json.dumps([[c.name, c.old, c.new] for c in idea.changes])
    row["recorded"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return row


def _idea(row) -> Idea:
    data = {f.name: row._mapping[f.name] for f in fields(Idea)}
    data["parents"] = tuple(json.loads(data["parents"] or "[]"))
    data["changes"] = tuple(Change(*c) for c in json.loads(data["changes"] or "[]"))
    data["feasible"], data["kept"] = bool(data["feasible"]), bool(data["kept"])
    return Idea(**data)


class Notebook:
    """The notebook at one database URL (see the module docstring). Safe to share between threads."""

    def __init__(self, url: str):
        self.url = url
        options = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = sa.create_engine(with_driver(url), **options)
        self._lock = threading.Lock()
        self._synced: dict[str, set[int]] = {}   # search id -> trials known to be in the table
        self._tasks: dict[str, dict[tuple[str, int], Idea]] = {}   # task -> its rows as last read (see `of_task`)
        try:
            _metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.IntegrityError:  # another host made the table at the same moment (PostgreSQL's catalog race)
            _metadata.create_all(self.engine, checkfirst=True)

    @staticmethod
    def url_for(search) -> str:
        """Where `search`'s ideas go: its PostgreSQL database when shared there, else beside its folder."""
        storage = search.config.storage
        return storage if is_postgres(storage) else f"sqlite:///{Path(search.folder).parent / FILE}"

    @classmethod
    def for_search(cls, search) -> "Notebook":
        return cls(cls.url_for(search))

    @classmethod
    def at_root(cls, root: str | Path) -> "Notebook":
        """The notebook of the local searches in `root` (created when missing)."""
        Path(root).mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{Path(root).resolve() / FILE}")

    def close(self) -> None:
        self.engine.dispose()

    def sync(self, search, lineage: Lineage | None = None) -> int:
        """Add the rows of `search`'s finished ideas not yet in the notebook; return how many were added."""
        lineage = lineage or search.lineage()
        sid = search_id_of(search.config)
        with self._lock:
            known = self._synced.get(sid)
            if known is None:
                with self.engine.connect() as c:
                    known = self._synced[sid] = set(c.execute(sa.select(_table.c.trial).where(_table.c.search_id == sid)).scalars())
            new = [t for t in lineage.trials if is_idea(t) and t.number not in known]
            if not new:
                return 0
            noise = lineage.noise_sd()
            ideas = [idea_of(t, lineage, search.config, diff=_diff_of(search, lineage, t), noise_sd=noise) for t in new]
            self._insert([_row(i) for i in ideas])
            known.update(t.number for t in new)
            cached = self._tasks.get(task_of(search.config))
            if cached is not None:
                cached.update(((i.search_id, i.trial), i) for i in ideas)
            return len(ideas)

    def of_task(self, task: str) -> list[Idea]:
        """The rows of one task, read again only when the table holds rows this process has not seen (rows are
        only ever added): a search that proposes thousands of times reads its notebook once, then counts it."""
        with self._lock:
            with self.engine.connect() as c:
                count = c.execute(sa.select(sa.func.count()).select_from(_table).where(_table.c.task == task)).scalar()
            cached = self._tasks.get(task)
            if cached is None or len(cached) != count:
                cached = self._tasks[task] = {(i.search_id, i.trial): i for i in self.ideas(task=task)}
            return list(cached.values())

    def sync_root(self, root: str | Path, *, warn=None) -> int:
        """Sync every search whose folder is in `root` (those that cannot be opened are skipped, said to
        `warn`); return how many rows were added."""
        added = 0
        for config in sorted(Path(root).glob("*/search.json")):
            try:
                with Search.open(config.parent.name, root=root) as search:
                    added += self.sync(search)
            except (SearchError, sa.exc.SQLAlchemyError) as e:
                if warn is not None:
                    warn(f"the notebook skips search {config.parent.name!r}: {e}")
        return added

    def _insert(self, rows: list[dict]) -> None:
        """Insert rows, skipping those another process or host added first."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        with self.engine.begin() as c:
            c.execute(insert(_table).values(rows).on_conflict_do_nothing(index_elements=["search_id", "trial"]))

    def ideas(self, *, task: str | None = None, search: str | None = None, profile: str | None = None,
              operator: str | None = None, like: str | None = None) -> list[Idea]:
        """The rows matching every filter given (`like`: a case-insensitive piece of the description,
        the constants changed or the diff), in search then trial order."""
        query = sa.select(_table)
        for column, value in ((_table.c.task, task), (_table.c.search, search), (_table.c.profile, profile),
                              (_table.c.operator, operator)):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as c:
            found = [_idea(row) for row in c.execute(query.order_by(_table.c.search_id, _table.c.trial))]
        if like:
            needle = like.lower()
            found = [i for i in found if needle in f"{i.description}\n{i.move}\n{i.diff}".lower()]
        return found


def _diff_of(search, lineage: Lineage, t: TrialRecord) -> str:
    """The child's diff against its parent(s): the one its trial folder keeps, else git's against its first
    parent (a trial another host ran); empty without genomes (an imported search)."""
    kept = search.paths.trial(t.number).diff
    try:
        return kept.read_text(errors="replace")
    except OSError:
        pass
    parent = lineage.by_number.get(t.parents[0]) if t.parents else None
    if not (t.commit and parent is not None and parent.commit) or t.commit == parent.commit:
        return ""
    try:
        return search.repo.diff(parent.commit, t.commit)
    except Exception:  # a genome this host has not fetched yet: the row keeps its description and constants
        return ""


@dataclass
class Recall:
    """What a proposer may learn from the notebook: the rows of searches of the same task, this one included.

    noise_sd: the noise floor to judge an effect by (the largest of the rows' floors; None: unknown)."""

    ideas: list[Idea] = field(default_factory=list)
    noise_sd: float | None = None

    @classmethod
    def of(cls, ideas: list[Idea]) -> "Recall":
        floors = [i.noise_sd for i in ideas if i.noise_sd]
        return cls(list(ideas), max(floors) if floors else None)

    def scored(self) -> list[Idea]:
        return [i for i in self.ideas if i.effect is not None]


def as_dict(idea: Idea) -> dict:
    """An idea as JSON-ready data (`evo ideas --json`)."""
    data = asdict(idea)
    data["changes"] = [{"name": c.name, "old": c.old, "new": c.new} for c in idea.changes]
    data["move"] = idea.move
    return data
