"""Small file helpers shared by every stage: atomic writes, digests, JSONL reading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from dyag_mlops.errors import DyagError


def file_digest(path: str | Path) -> str:
    """Short sha256 of a file's bytes: the identity of a dataset across runs."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file through a temp file + rename: never a half-written output."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path: str | Path, chunks: Iterable[bytes]) -> None:
    """atomic_write_bytes of the chunks one after the other, streamed: a
    gigabyte of JSON lines need not be joined in memory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # A 1 MiB buffer: a gigabyte of short lines in 8 KiB writes was
        # 100,000 system calls.
        with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
            fh.writelines(chunks)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def jsonl_lines(rows: list[dict]) -> list[bytes]:
    """Each row as one JSON line, UTF-8 unescaped. orjson, not json: datasets
    run to hundreds of thousands of rows, and json.dumps was most of the time
    of generate-training on a large corpus (docs/performance.md)."""
    import orjson

    return [orjson.dumps(r) + b"\n" for r in rows]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a malformed line is
    a DyagError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DyagError(f"{path}: no such file")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DyagError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DyagError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    """An existing output is never replaced unless the user asked for it."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise DyagError(f"output exists: {', '.join(existing)} (pass --overwrite to replace it)")
