"""The `model-opt` command line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which registers the
subcommand and sets ``func`` (taking the parsed arguments, returning an exit status). Exit statuses:
0 success, 1 no plan fits the capacity, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model_opt import cli_bench, cli_demo, cli_placement, cli_plot, cli_reorder, cli_snapshot

#: Modules that contribute subcommands, in the order `--help` lists them.
SUBCOMMAND_MODULES = [cli_placement, cli_reorder, cli_demo, cli_bench, cli_plot, cli_snapshot]

EXIT_OK = 0
EXIT_NO_FIT = 1
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one clear line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


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
        return int(args.func(args))
    except KeyboardInterrupt:
        print("model-opt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
