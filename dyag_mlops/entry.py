"""Shared shell of the MLproject entry points (entrypoints/*.py).

`mlflow run` calls `python entrypoints/STAGE.py --name value ...`; the values
become the stage's config (types from the dataclass), the run that `mlflow run`
opened is joined (MLFLOW_RUN_ID) and the stage's core runs inside it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from dyag_mlops.errors import DyagError


def parse_pairs(argv: list[str]) -> dict[str, str]:
    if len(argv) % 2:
        raise DyagError(f"expected --name value pairs, got {' '.join(argv)}")
    pairs = {}
    for flag, value in zip(argv[::2], argv[1::2]):
        if not flag.startswith("--"):
            raise DyagError(f"expected --name, got {flag!r}")
        pairs[flag[2:].replace("-", "_")] = value
    return pairs


def run_entrypoint(stage: str, config_cls: type, body: Callable[[Any, Any], Any], argv: list[str] | None = None) -> None:
    from dyag_mlops.config import from_strings

    try:
        try:
            config = from_strings(config_cls, parse_pairs(sys.argv[1:] if argv is None else argv))
        except ValueError as exc:
            raise DyagError(str(exc)) from None
        if stage == "main":
            body(config, None)  # the pipeline opens its own parent run
            return
        from dyag_mlops.tracking import stage_run

        with stage_run(stage, config) as tracker:
            body(config, tracker)
    except (Exception, KeyboardInterrupt) as exc:
        from dyag_mlops.errors import report

        sys.exit(report(exc))
