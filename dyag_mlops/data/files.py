"""Small file helpers shared by every stage: atomic writes, digests, JSONL reading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from dyag_mlops.errors import DyagError

UTF8_BOM = b"\xef\xbb\xbf"


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
        # mkstemp makes the file private (0600); an output gets the permissions
        # any new file of the user gets.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a directory, or a file created if
    needed) for the block; when another process holds it, say so on stderr
    and wait. The lock goes with the process that held it, killed or not."""
    import fcntl
    import sys

    fd = os.open(path, os.O_RDONLY if Path(path).is_dir() else os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another process is writing {what} (lock {path})", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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


def decoded_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 text file; a byte-order mark is
    skipped, and bytes that are not UTF-8 (or a NUL: binary data) are a
    DyagError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DyagError(f"{path}: no such file")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            try:
                if b"\0" in raw:  # valid UTF-8, but no text file holds a NUL byte
                    raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DyagError(f"{path}:{lineno}: not UTF-8 text (convert it, e.g. `iconv -f latin1 -t utf-8`)") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content (decoded_lines' rules)."""
    return "".join(line for _, line in decoded_lines(path))


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a malformed line is
    a DyagError naming the file and line."""
    for lineno, line in decoded_lines(path):
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


def staging_dir(target: Path) -> Path:
    """An empty directory next to `target` (same filesystem, so renames are
    atomic), with normal permissions rather than mkdtemp's private 0700."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    staging.chmod(0o777 & ~current_umask())
    return staging


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging` with two renames (a directory cannot be
    replaced in one); the old one is deleted only once the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
