"""Exit statuses of the `model-opt` command line, and its one-line error messages.

Every subcommand returns one of these; `model_opt.cli.main` maps what escapes a subcommand onto
them, so that bad input never ends in a traceback:

* ``EXIT_OK`` (0): success. A closed standard output (``model-opt bench-placement | head -1``) also
  ends quietly with 0, as ``head``'s reader asked for no more.
* ``EXIT_NO_FIT`` (1): no plan fits ``--capacity`` (`model_opt.CapacityError`). ``demo`` also uses
  1 when one of its checks fails (``EXIT_CHECKS_FAILED``).
* ``EXIT_BAD_INPUT`` (2): bad input: a malformed or unreadable file, an output that cannot be
  written, a bad argument (`model_opt.InputError`, `OSError`, argparse errors), with exactly one line
  on stderr naming the file, the line and what is wrong.
* ``EXIT_INTERNAL`` (3): model_opt itself failed (a plan that did not validate: please report it).

The status of a failure of a file pipeline (plan, validate) is decided in Rust
(``placement::files::FileError::exit_status``) and carried by the exception as ``exit_status``;
`exit_status_of` reads it, and maps the other errors by their class.
"""

from __future__ import annotations

import sys

from model_opt._native import CapacityError, InputError

EXIT_OK = 0
EXIT_NO_FIT = 1
EXIT_CHECKS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def exit_status_of(e: BaseException) -> int:
    """The exit status for an error that ended a subcommand (see the module doc)."""
    status = getattr(e, "exit_status", None)
    if isinstance(status, int):
        return status
    if isinstance(e, CapacityError):
        return EXIT_NO_FIT
    if isinstance(e, (InputError, OSError)):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


def one_line(message: object) -> str:
    """The message on one line: line breaks (a quoted id may hold one) are shown as ``\\n``."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


def error(command: str, message: object, status: int = EXIT_BAD_INPUT) -> int:
    """Prints ``model-opt COMMAND: MESSAGE`` as one line on stderr; returns ``status``."""
    print(f"model-opt {command}: {one_line(message)}", file=sys.stderr)
    return status


def os_error_message(e: OSError) -> str:
    """``PATH: reason`` for an I/O error, without Python's ``[Errno n]`` prefix."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename is not None else reason
