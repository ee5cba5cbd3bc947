"""`evo ideas`: the lab notebook's ideas across searches, ranked by their measured effect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import sqlalchemy as sa

from analysis.ideas import as_json, rank_ideas, render_ideas
from evo.cli._common import UsageError, add_root, positive_int
from population.notebook import Notebook
from population.store import is_postgres, redact


def add_parsers(sub) -> None:
    p = sub.add_parser("ideas", help="what every search learned, idea by idea",
                       description="The lab notebook: every finished child of every search in --root (or in the "
                       "PostgreSQL database of --storage), grouped by idea (the constants moved, else the description) "
                       "and ranked by measured effect: the child's score minus its parent's, positive helped, with a "
                       "95%% bootstrap interval and counts. Searches made before the notebook existed are read in on "
                       "first use.")
    p.add_argument("--search", help="only ideas of this search")
    p.add_argument("--profile", help="only ideas of searches with this profile")
    p.add_argument("--operator", choices=("mutate", "crossover"), help="only mutations or crossovers")
    p.add_argument("--like", metavar="TEXT", help="only ideas whose description, constants or diff contain TEXT")
    p.add_argument("--limit", type=positive_int, default=40, help="show this many ideas (default: 40)")
    p.add_argument("--storage", help="read the notebook of shared searches in this PostgreSQL database")
    p.add_argument("--json", action="store_true", help="machine-readable output (every idea, no limit)")
    add_root(p)
    p.set_defaults(handler=cmd_ideas)


def cmd_ideas(args) -> int:
    book = _notebook(args)
    try:
        ideas = book.ideas(search=args.search, profile=args.profile, operator=args.operator, like=args.like)
    finally:
        book.close()
    rows = rank_ideas(ideas)
    if args.json:
        json.dump(as_json(rows), sys.stdout, indent=2)
        print()
    else:
        print(render_ideas(rows, limit=args.limit))
    return 0


def _notebook(args) -> Notebook:
    """The notebook the flags name, with every search that belongs in it read in."""
    if args.storage:
        if not is_postgres(args.storage):
            raise UsageError(f"--storage names the PostgreSQL database of shared searches, not {redact(args.storage)}; "
                             "leave it out for the searches in --root")
        try:
            return Notebook(args.storage)
        except sa.exc.SQLAlchemyError as e:
            raise UsageError(f"cannot open the notebook in {redact(args.storage)} ({type(e).__name__}); check the URL "
                             "and that the database answers") from None
    if not Path(args.root).is_dir():
        raise UsageError(f"no folder {Path(args.root).resolve()}: give --root the folder holding the searches")
    book = Notebook.at_root(args.root)
    book.sync_root(args.root, warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    return book
