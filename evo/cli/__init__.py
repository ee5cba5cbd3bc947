"""The `evo` command: a thin layer over the library (`evo`, `population`) and the views (`analysis`).

Every subcommand explains itself with --help; bad input ends with one line on stderr
and exit code 2, and never touches a finished trial. Each command module adds its
parsers and names its handler; this module only assembles and dispatches.
"""

from __future__ import annotations

import sys

from evo.cli import _compare, _ideas, _manage, _run, _views
from evo.cli._common import EXIT_USAGE, Parser, UsageError, machine_failure, quiet_broken_pipe
from population.search import SearchError

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    from evo import __version__

    parser = Parser(prog="evo", description="Autonomous ML research as evolution: a population of train.py genomes "
                    "in git, every trial under the same time budget, every result in an Optuna study.")
    parser.add_argument("--version", action="version", version=f"evo (evoresearch) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for module in (_run, _views, _compare, _manage, _ideas):
        module.add_parsers(sub)
    return parser


EXIT_FAILURE = 1
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (SearchError, UsageError, LookupError) as e:
        print(f"evo {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        quiet_broken_pipe()
        return EXIT_PIPE
    except Exception as e:
        line = machine_failure(e)
        if line is None:
            raise  # a bug: its traceback is what a report needs
        print(f"evo {args.command}: error: {line}", file=sys.stderr)
        return EXIT_FAILURE
