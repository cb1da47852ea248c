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


def shown_uri(uri: str) -> str:
    """`uri` without a password it may carry (user:secret@host)."""
    import re

    return re.sub(r"//([^/@:]+):[^/@]+@", r"//\1:***@", uri)


def lost_tracking_server(exc: BaseException) -> str:
    """The URI of the MLflow server (MLFLOW_TRACKING_URI) when `exc` says it
    could not be reached mid-run (after MLflow's own retries), else ''."""
    import re

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    host = re.sub(r"^https?://(?:[^/@]+@)?", "", uri).split("/")[0]
    if not uri.startswith(("http://", "https://")) or not host:
        return ""
    text = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
    gone = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection", "Connection aborted")
    return shown_uri(uri) if host.split(":")[0] in text and any(g in text for g in gone) else ""


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
    lost = lost_tracking_server(exc)
    if lost:
        print(
            f"Error: the tracking server {lost} stopped answering; when it answers again, run the same command "
            "again: finished stages are reused and finetune --resume continues from its last checkpoint",
            file=sys.stderr,
        )
        return 1
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"Error: {type(exc).__name__}: {detail} (DYAG_DEBUG=1 shows the traceback)".replace(":  (", " ("), file=sys.stderr)
    return 1
