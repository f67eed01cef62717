"""The `model-opt` command line: the parser and the entry point.

Each subcommand lives in its own module of this package exposing ``add_parser(subparsers)``, which
registers the subcommand and sets ``func`` (taking the parsed arguments, returning an exit status). Exit
statuses (`model_opt.cli.exit`): 0 success, 1 no plan fits the capacity, 2 bad input, with one line on
stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from model_opt._native import ModelOptError
from model_opt.cli import bench, demo, fit, placement, plot, reorder, snapshot
from model_opt.cli.exit import EXIT_BAD_INPUT, EXIT_OK, error, exit_status_of, one_line, os_error_message

#: Modules that contribute subcommands, in the order `--help` lists them.
SUBCOMMAND_MODULES = [placement, reorder, demo, bench, fit, plot, snapshot]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one clear line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="model-opt", description="Memory optimizer for deep-learning training.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for module in SUBCOMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `model-opt`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be handled
        return status
    except KeyboardInterrupt:
        print("model-opt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout is gone (`model-opt bench-placement | head -1`): stop quietly, as
        # Unix tools do, with 0. Point stdout at /dev/null so the flush at exit does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except ModelOptError as e:
        return error(args.command, e, exit_status_of(e))
    except OSError as e:
        return error(args.command, os_error_message(e))


if __name__ == "__main__":
    sys.exit(main())
