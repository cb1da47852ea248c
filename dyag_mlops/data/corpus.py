"""Corpus readers: JSONL chunks or a folder of Markdown files -> chunks.

JSONL: one `{"id", "content", "metadata": {...}}` per line; the document is
named by `metadata.nom`/`metadata.id` or `metadata.title`/`metadata.doc_id`.
Markdown: every `.md` file below the folder, split on headings; the document
is the file, its title the first heading (or the file name). A single
Markdown file given as the corpus holds one document per top-level `# Title`
section (dyag's parkjson2md writes a whole inventory so).
JSON: a list of such chunk objects, or of records (an inventory exported as
JSON: one object per document, a key per field, lists and objects as
values), or an object holding that list ("applications": […]).
CSV: a spreadsheet export, one record per row, its header naming the fields.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dyag_mlops.data.files import read_jsonl, read_text
from dyag_mlops.data.text import normalise
from dyag_mlops.errors import DyagError

HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
MARKDOWN_SUFFIXES = (".md", ".markdown")
# The keys that name a JSON record and that identify it, in order of preference.
NAME_KEYS = ("nom", "name", "title", "titre", "label", "libelle")
ID_KEYS = ("id", "doc id", "identifiant", "identifier")
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


def corpus_digest(chunks: list[Chunk]) -> str:
    """Short sha256 of the chunk ids and contents: the identity of the corpus."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.id.encode("utf-8") + b"\0" + chunk.content.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def corpus_rows(chunks: list[Chunk]) -> list[dict]:
    """The chunks as read, whatever their files' layout: a run's corpus input."""
    return [{"id": c.id, "content": c.content, "metadata": {"doc_id": c.doc_id, "title": c.title}} for c in chunks]


def demo_corpus_path() -> Path:
    return Path(str(resources.files("dyag_mlops") / "resources" / "demo_corpus.jsonl"))


def load_corpus(path: str | Path = "") -> list[Chunk]:
    """Read a corpus (empty path: the bundled demo corpus). Never returns an empty list."""
    path = Path(path) if path else demo_corpus_path()
    if path.is_dir():
        chunks = _load_markdown(path)
    elif path.is_file() and path.suffix.lower() in MARKDOWN_SUFFIXES:
        chunks = _load_markdown_file(path)
    elif path.is_file() and path.suffix.lower() == ".json":
        chunks = _load_json(path)
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        chunks = _load_csv(path)
    elif path.is_file():
        chunks = _load_jsonl(path)
    else:
        raise DyagError(f"{path}: corpus not found (give a JSONL, JSON or CSV file, a Markdown file or a folder of Markdown files)")
    if not chunks:
        raise DyagError(f"{path}: the corpus is empty (no chunk with content)")
    seen: set[str] = set()
    for chunk in chunks:
        if chunk.id in seen:
            raise DyagError(f"{path}: chunk id {chunk.id!r} appears more than once")
        seen.add(chunk.id)
    return chunks


def _load_jsonl(path: Path) -> list[Chunk]:
    return [chunk for lineno, obj in read_jsonl(path) if (chunk := _chunk(obj, f"{path}:{lineno}", f"{path.stem}-{lineno}"))]


def _chunk(obj: dict, where: str, fallback_id: str) -> Chunk | None:
    """A chunk object ({"id", "content", "metadata"}); None when it is blank."""
    content = obj.get("content", obj.get("text"))
    if not isinstance(content, str):
        raise DyagError(f"{where}: a chunk needs a string 'content'")
    if not content.strip():
        return None
    _check_length(content, where)
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise DyagError(f"{where}: 'metadata' must be an object")
    chunk_id = str(obj.get("id") or meta.get("chunk_id") or fallback_id)
    doc_id = str(meta.get("id") or meta.get("doc_id") or chunk_id)
    title = str(meta.get("nom") or meta.get("title") or meta.get("name") or doc_id)
    return Chunk(chunk_id, content, doc_id, title, meta)


def _load_json(path: Path) -> list[Chunk]:
    """A JSON file: chunk objects, or records written as Markdown sheets
    (`# name`, then `## key` over each value) so that they are read as any
    sheet is. A file of one object per line is JSONL under another name."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return _load_jsonl(path)
        raise DyagError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)), [data])
    if not isinstance(data, list):
        raise DyagError(f"{path}: expected a list of objects, or an object holding one")
    for n, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DyagError(f"{path} (item {n}): expected a JSON object, got {type(record).__name__}")
    if all(isinstance(r.get("content", r.get("text")), str) for r in data):
        found = [_chunk(r, f"{path} (item {n})", f"{path.stem}-{n}") for n, r in enumerate(data, start=1)]
        return [chunk for chunk in found if chunk]
    return _record_chunks(data, path)


def _load_csv(path: Path) -> list[Chunk]:
    """A spreadsheet export: the header names the fields, each row is a record.
    The delimiter is the one the header uses most (",", ";" or a tab)."""
    text = read_text(path)
    header = text.lstrip().split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=header.count)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))  # a quoted cell may hold line breaks
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return []
    labels = [label.strip() for label in rows[0]]
    if len(set(labels)) < len(labels) or not all(labels):
        raise DyagError(f"{path}:1: the header needs a distinct, non-empty name per column")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) > len(labels):
            raise DyagError(f"{path}: row {number} has {len(row)} cells, the header {len(labels)}")
    return _record_chunks([dict(zip(labels, row)) for row in rows[1:]], path)


def _record_chunks(data: list[dict], path: Path) -> list[Chunk]:
    """Each record as one Markdown sheet: `# name`, then `## key` over each value."""
    name_key, id_key = _key_of(data, NAME_KEYS, name=True), _key_of(data, ID_KEYS)
    chunks = []
    for n, record in enumerate(data, start=1):
        name, doc_id = _flat(record.get(name_key)), _flat(record.get(id_key)) or f"{path.stem}/{n}"
        sections = [f"## {' '.join(key.replace('_', ' ').split())}\n\n{value}" for key, raw in record.items() if (value := _flat(raw))]
        if sections:
            content = f"# {name or doc_id}\n\n" + "\n\n".join(sections)
            _check_length(content, f"{path} (item {n})")
            chunks.append(Chunk(doc_id, content, doc_id, name or doc_id, {"id": doc_id, "title": name or doc_id}))
    return chunks


def _key_of(records: list[dict], known: tuple[str, ...], name: bool = False) -> str:
    """The key that names (or identifies) the records: the first of `known`
    they use; for a name, failing that, the first key whose values are short
    texts, no two alike ("Application", "Package")."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    by_word = {normalise(key): key for key in keys}
    found = next((by_word[k] for k in known if k in by_word), "")
    if found or not name:
        return found
    for key in keys:
        values = [record.get(key) for record in records]
        if all(isinstance(v, str) and 0 < len(v.split()) <= 8 and not v.strip().isdigit() for v in values) and len(set(values)) == len(values):
            return key
    return ""


def _flat(value: object) -> str:
    """A JSON value as one line of text: a list's items joined by ", ", an
    object's values by " : " (a contact {"role", "name", "mail"} reads
    "role : name : mail"), true/false and numbers as JSON writes them."""
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list):
        return ", ".join(text for text in map(_flat, value) if text)
    if isinstance(value, dict):
        return " : ".join(text for text in map(_flat, value.values()) if text)
    return json.dumps(value)


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
