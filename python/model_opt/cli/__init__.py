"""The `model-opt` command line (entry point `main`; ``python -m model_opt.cli``).

One module per subcommand group (placement, reorder, demo, bench, plot, snapshot), each exposing
``add_parser(subparsers)``; `args` holds the shared argument types, `exit` the exit statuses.
"""

from model_opt.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
