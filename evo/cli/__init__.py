"""The `evo` command: a thin layer over the library (`evo`, `population`) and the views (`analysis`).

Every subcommand explains itself with --help; bad input ends with one line on stderr
and exit code 2, and never touches a finished trial. Each command module adds its
parsers and names its handler; this module only assembles and dispatches.
"""

from __future__ import annotations

import importlib
import sys

from evo.cli._common import EXIT_USAGE, Parser, as_flags, machine_failure, quiet_broken_pipe
from population.errors import ConfigError, EvoError

__all__ = ["build_parser", "main"]

COMMAND_MODULES = ("evo.cli._run", "evo.cli._views", "evo.cli._compare", "evo.cli._manage", "evo.cli._ideas")
# The read-only views (`evo status`, often run by scripts and --watch) need none of the engine: one of
# their commands is parsed by a parser of their module alone, so it starts without importing the loop.
VIEWS = "evo.cli._views"


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> Parser:
    from evo import __version__

    parser = Parser(prog="evo", description="Autonomous ML research as evolution: a population of train.py genomes "
                    "in git, every trial under the same time budget, every result in an Optuna study.")
    parser.add_argument("--version", action="version", version=f"evo (evoresearch) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).add_parsers(sub)
    parser.commands = frozenset(sub.choices)
    return parser


def _parser_for(argv: list[str]) -> Parser:
    command = next((a for a in argv if not a.startswith("-")), None)  # evo's own options take no value
    views = build_parser((VIEWS,))
    return views if command in views.commands else build_parser()


EXIT_FAILURE = 1
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser_for(argv).parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as e:   # how the command was asked for cannot work (a search, a flag, a trial number)
        print(f"evo {args.command}: error: {as_flags(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except EvoError as e:      # raised on purpose, with its one line: a study, a remote or a proposer that fails
        print(f"evo {args.command}: error: {as_flags(str(e))}", file=sys.stderr)
        return EXIT_FAILURE
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
