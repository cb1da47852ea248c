"""Corpus readers: JSONL chunks or a folder of Markdown files -> chunks.

JSONL: one `{"id", "content", "metadata": {...}}` per line; the document is
named by `metadata.nom`/`metadata.id` or `metadata.title`/`metadata.doc_id`.
Markdown: every `.md` file below the folder, split on headings; the document
is the file, its title the first heading (or the file name). A single
Markdown file given as the corpus holds one document per top-level `# Title`
section (dyag's parkjson2md writes a whole inventory so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dyag_mlops.data.files import read_jsonl, read_text
from dyag_mlops.errors import DyagError

HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
MARKDOWN_SUFFIXES = (".md", ".markdown")
# A chunk is a passage of a document, not the document: longer than this, it
# would be copied whole into every dataset and prompt that cites it.
MAX_CHUNK_CHARS = 100_000


def _check_length(content: str, where: str) -> None:
    if len(content) > MAX_CHUNK_CHARS:
        raise DyagError(f"{where}: a chunk of {len(content):,} characters (at most {MAX_CHUNK_CHARS:,}); split the document into smaller chunks")


@dataclass(frozen=True)
class Chunk:
    id: str
    content: str
    doc_id: str
    title: str
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


def demo_corpus_path() -> Path:
    return Path(str(resources.files("dyag_mlops") / "resources" / "demo_corpus.jsonl"))


def load_corpus(path: str | Path = "") -> list[Chunk]:
    """Read a corpus (empty path: the bundled demo corpus). Never returns an empty list."""
    path = Path(path) if path else demo_corpus_path()
    if path.is_dir():
        chunks = _load_markdown(path)
    elif path.is_file() and path.suffix.lower() in MARKDOWN_SUFFIXES:
        chunks = _load_markdown_file(path)
    elif path.is_file():
        chunks = _load_jsonl(path)
    else:
        raise DyagError(f"{path}: corpus not found (give a JSONL file, a Markdown file or a folder of Markdown files)")
    if not chunks:
        raise DyagError(f"{path}: the corpus is empty (no chunk with content)")
    seen: set[str] = set()
    for chunk in chunks:
        if chunk.id in seen:
            raise DyagError(f"{path}: chunk id {chunk.id!r} appears more than once")
        seen.add(chunk.id)
    return chunks


def _load_jsonl(path: Path) -> list[Chunk]:
    chunks = []
    for lineno, obj in read_jsonl(path):
        content = obj.get("content", obj.get("text"))
        if not isinstance(content, str):
            raise DyagError(f"{path}:{lineno}: a chunk needs a string 'content'")
        if not content.strip():
            continue
        _check_length(content, f"{path}:{lineno}")
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise DyagError(f"{path}:{lineno}: 'metadata' must be an object")
        chunk_id = str(obj.get("id") or meta.get("chunk_id") or f"{path.stem}-{lineno}")
        doc_id = str(meta.get("id") or meta.get("doc_id") or chunk_id)
        title = str(meta.get("nom") or meta.get("title") or meta.get("name") or doc_id)
        chunks.append(Chunk(chunk_id, content, doc_id, title, meta))
    return chunks


def _load_markdown(folder: Path) -> list[Chunk]:
    chunks = []
    for md in sorted(folder.rglob("*.md")):
        chunks += _markdown_chunks(read_text(md).splitlines(), md, md.relative_to(folder).with_suffix("").as_posix(), md.stem)
    return chunks


def _load_markdown_file(path: Path) -> list[Chunk]:
    """One document per top-level `# Title` section of the file; the text
    before the first one, if any, is a document named after the file."""
    documents: list[list[str]] = [[]]
    for line in read_text(path).splitlines():
        match = HEADING.match(line)
        if match and len(match.group(1)) == 1 and "".join(documents[-1]).strip():
            documents.append([])
        documents[-1].append(line)
    chunks = []
    for n, lines in enumerate(d for d in documents if "".join(d).strip()):
        chunks += _markdown_chunks(lines, path, f"{path.stem}/{n + 1}", path.stem)
    return chunks


def _markdown_chunks(lines: list[str], source: Path, doc_id: str, default_title: str) -> list[Chunk]:
    """A Markdown document's sections as chunks; its title is its first
    top-level heading, else `default_title`."""
    title = default_title
    sections: list[list[str]] = [[]]
    for line in lines:
        match = HEADING.match(line)
        if match:
            if title == default_title and len(match.group(1)) == 1:
                title = match.group(2)
            sections.append([])
        sections[-1].append(line)
    chunks = []
    for n, section in enumerate(s for s in sections if "".join(s).strip()):
        content = "\n".join(section).strip()
        _check_length(content, f"{source} (section {n + 1})")
        chunks.append(Chunk(f"{doc_id}#{n}", content, doc_id, title, {"source": str(source), "title": title}))
    return chunks
