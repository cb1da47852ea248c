"""The one error type users see, and the rule every shell applies: a message
that names the file, line or option and the way out, on one line, exit 2 for
bad input; other failures one line and exit 1. A traceback only with
DYAG_DEBUG=1 (`dyag --debug`)."""

from __future__ import annotations

import os
import sys

DEBUG_VARIABLE = "DYAG_DEBUG"


class DyagError(Exception):
    """A user-facing error (bad input, missing model, refused overwrite...)."""


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def report(exc: BaseException) -> int:
    """Print `exc` as one line on stderr and return the exit status; with
    DYAG_DEBUG set, re-raise it (the traceback is wanted)."""
    if isinstance(exc, KeyboardInterrupt):
        print("Interrupted: an open MLflow run is marked KILLED (finetune --resume continues from its last checkpoint).", file=sys.stderr)
        return 130
    if debugging():
        raise exc
    if isinstance(exc, DyagError):
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"Error: {where}{exc.strerror}", file=sys.stderr)
        return 1
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"Error: {type(exc).__name__}: {detail} (DYAG_DEBUG=1 shows the traceback)".replace(":  (", " ("), file=sys.stderr)
    return 1
