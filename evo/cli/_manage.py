"""`evo reseed` and `evo rm`: the ways out of a search that went wrong at its start."""

from __future__ import annotations

from pathlib import Path

from evo.cli._common import UsageError, add_root, resolve_name
from evo.search import reseed
from population.search import Search


def add_parsers(sub) -> None:
    p = sub.add_parser("reseed", help="replace a failed seed genome", description="Replace the seed genome of a search "
                       "whose seed never ran successfully (a bug in train.py found by its first trial) with the "
                       "project's mutable files as they are now. The failed trials stay on record; `evo run NAME` "
                       "then trains the new seed. Refused once any trial has succeeded: its genomes descend from the "
                       "old seed (start a new search instead).")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--project", default=".", help="folder with the fixed seed's files (default: .)")
    add_root(p)
    p.set_defaults(handler=cmd_reseed)

    p = sub.add_parser("rm", help="delete a search for good", description="Delete a search: its folder (genomes, "
                       "trials, logs, report) and, when it lives in a shared database, its study. Without --yes it "
                       "only says what would go.")
    p.add_argument("name", help="name of the search")
    p.add_argument("--yes", action="store_true", help="really delete it")
    add_root(p)
    p.set_defaults(handler=cmd_rm)


def cmd_reseed(args) -> int:
    name = resolve_name(args.name, args.root)
    project = Path(args.project).resolve()
    with Search.open(name, root=args.root) as search:
        commit = reseed(search, project)
        files = ", ".join(search.config.mutable)
    print(f"search {name}: the seed genome is now {files} from {project} (commit {commit[:10]}); "
          f"`evo run {name}` trains it")
    return 0


def cmd_rm(args) -> int:
    with Search.open(args.name, root=args.root) as search:
        trials = len(search.trials())
        where = search.folder
        if not args.yes:
            raise UsageError(f"this deletes search {args.name!r} for good ({where}, {trials} trial(s)); add --yes "
                             "to do it")
        search.delete()
    print(f"deleted search {args.name} ({where}, {trials} trial(s))")
    return 0
