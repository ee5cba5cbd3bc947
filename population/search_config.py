"""What stays fixed for the life of a search, as search.json and the study record it.

Split out of `population.search`: the search's layout (`population._laying_out`) and its
handle (`population.search.Search`) both build on it. `population.search` re-exports every
name here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from population.errors import ConfigError
from population.folder import SearchFolder
from population.genomes import RemoteError
from population.lineage import MINIMIZE
from population.store import StoreUnreachable, redact

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Fields search.json holds only when they say something (an old reader ignores them; see SearchConfig).
OPTIONAL_FIELDS = ("objectives", "constraints")
# `storage` value meaning "the study.db in the search's own folder" (relocatable).
LOCAL_STORAGE = ""


class SearchError(ConfigError):
    """A problem with how a search was asked for; the message says what to change."""


def check_name(name: str, what: str = "search") -> None:
    if not NAME.match(name):
        raise SearchError(f"bad {what} name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")


@dataclass
class SearchConfig:
    """What stays fixed for the life of a search (changing any of it means a new search)."""

    name: str
    profile: str
    budget: float
    mutable: list[str]
    data: str
    seed: int = 0
    seq_len: int = 0
    startup_grace: float = 60.0
    harness_sha256: str = ""
    seed_commit: str = ""
    storage: str = LOCAL_STORAGE     # an Optuna URL, or "" for the folder's own study.db
    cache_dir: str | None = None
    direction: str = MINIMIZE         # whether the metric is minimised (val_bpb) or maximised
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    # How trials run. A search made before these existed reads as: sandboxed where bwrap works,
    # scored by its own summary block (its harness has no scorer), no network.
    sandbox: str = "auto"              # bwrap, none, or auto (bwrap where a probe run works)
    allow_network: bool = False
    evaluation: str = "self-reported"  # harness: scored by the harness's scorer; self-reported: by the summary
    eval_limit: float = 300.0          # seconds the scoring of one trial may take
    # What the search evolves: empty for a project with evoresearch's own harness (prepare.py and
    # train.py, what every search before targets evolved), else {"kind": "command", "run": ...}.
    target: dict = field(default_factory=dict)
    metric: str = "val_bpb"            # the name of the score, as the project prints it
    read: list[str] = field(default_factory=list)  # folders besides the harness that trials may read
    remote: str = ""                  # git URL of the shared population ("" for a search on one host)
    heartbeat: int = 10               # shared searches: seconds between a running trial's heartbeats
    grace: int = 60                   # shared searches: seconds of silence before another worker re-runs a trial
    project: str = ""                 # the folder the search was created from ("" in searches made before it was kept)
    # Several objectives (see population.objectives): [{"name", "direction"}], the first being `metric`; and
    # constraints [{"metric", "op", "bound"}]. Empty in a single-objective search, and then not written at all,
    # so such a search's search.json and study are what they were before objectives existed.
    objectives: list[dict] = field(default_factory=list)
    constraints: list[dict] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        """Whether several hosts work on this search (a PostgreSQL study and a git remote)."""
        return bool(self.remote)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        """Read a search.json of this or an earlier version (keys no longer used are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def storage_url(self, folder: SearchFolder) -> str:
        """The Optuna URL of this search's study when its folder is `folder`.

        Searches made before folders were relocatable name their own study.db by an absolute
        path: when that path is some other folder's `<name>/study.db`, the folder was moved
        or copied, and its own study.db is the one to open."""
        if self.storage == LOCAL_STORAGE:
            return folder.local_storage
        prefix = "sqlite:///"
        if self.storage.startswith(prefix):
            path = Path(self.storage[len(prefix):])
            if path.name == "study.db" and path.parent.name == self.name and path != folder.study_db:
                return folder.local_storage
        return self.storage


def recorded(config: SearchConfig) -> dict:
    """The configuration as search.json and the study record it: the database URL without its password,
    which lives only in the memory of the process given it (a user gives it again, or PGPASSWORD / ~/.pgpass)."""
    recorded = {**asdict(config), "storage": redact(config.storage)}
    return {k: v for k, v in recorded.items() if k not in OPTIONAL_FIELDS or v}


def shield(action):
    """Run `action`, turning an unreachable database or remote into a SearchError (one line, no traceback)."""
    try:
        return action()
    except (StoreUnreachable, RemoteError) as e:
        raise SearchError(str(e)) from None
    except KeyError as e:
        raise SearchError(f"{e.args[0] if e.args else e}; create it with `evo init` and `storage`/`remote`") from None
