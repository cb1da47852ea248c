"""Stage index-rag and the retriever that reads its index.

    dyag index-rag corpus.jsonl --index outputs/rag_index

Index: a ChromaDB store (cosine), `index_manifest.json` and the corpus
profile in one directory; a document's fields are stored as one assembled
sheet, each chunk with the hash of its embedded text, so re-indexing embeds
only what changed. The update is built in a staging copy and swapped in by
renames (a crash keeps the old index); on a ChromaDB server, upserts in place.
Retrieval: misspelt words are read as the corpus writes them; a question that
names a document is searched within it; one that names only things the index
does not hold retrieves nothing (the grounded answer is then the refusal).
Ranking: lexical (BM25 first, the default), fused or dense. docs/rag.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dyag_mlops.config import RANKINGS, IndexConfig
from dyag_mlops.data.corpus import Chunk, corpus_digest, corpus_rows, demo_corpus_path, load_corpus
from dyag_mlops.retrieval.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    EMBED_BATCH,
    embed_remembered,
    embedding_dimension,
    load_embedder,
    model_key,
    resolve_embedding_model,
    single_thread,
)
from dyag_mlops.data.files import atomic_write_json, exclusive_lock, staging_dir, swap_in
from dyag_mlops.errors import DyagError
from dyag_mlops.retrieval.embeddings import embed as _embed
from dyag_mlops.data.inventory import (
    SHIPPED_SCHEMAS, Profile, build_profile, cached_schema, documents, render_sheet,
)
from dyag_mlops.data.text import normalise
from dyag_mlops.retrieval.names import Catalogue
from dyag_mlops.tracking import NullTracker

MANIFEST = "index_manifest.json"
PROFILE = "corpus_profile.json"
# A user's schema file is copied in here: the index needs it wherever it goes
# (another machine, a logged model's artifacts).
SCHEMA_COPY = "schema"
MANIFEST_FORMAT = 2  # 2: documents stored as assembled sheets, with the corpus profile
RRF_K = 60  # the usual reciprocal-rank-fusion constant: flattens the top ranks


# ---------------------------------------------------------------- chunks


@dataclass(frozen=True)
class IndexedChunk:
    id: str
    content: str
    doc_id: str
    title: str
    text: str  # what is embedded (content, or title + content for a continuation part)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def split_text(text: str, size: int) -> list[str]:
    """Pieces of at most `size` characters, cut on paragraphs, then lines,
    then spaces; only a single word longer than `size` is cut mid-word."""
    if size <= 0 or len(text) <= size:
        return [text]
    for sep in ("\n\n", "\n", " "):
        if sep in text:
            parts = [p for p in text.split(sep) if p.strip()]
            break
    else:
        return [text[i : i + size] for i in range(0, len(text), size)]
    pieces: list[str] = []
    current = ""
    for part in parts:
        for sub in split_text(part, size):
            if current and len(current) + len(sep) + len(sub) <= size:
                current += sep + sub
            else:
                if current:
                    pieces.append(current)
                current = sub
    if current:
        pieces.append(current)
    return pieces


def assemble(chunks: list[Chunk], profile: Profile) -> list[Chunk]:
    """Each document with fields as one sheet (id: the document's id), then
    the text of its chunks that holds no field; documents without fields
    keep their chunks."""
    out = []
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    for doc in documents(chunks):
        if not doc.fields:
            out += by_doc[doc.doc_id]
            continue
        out.append(Chunk(doc.doc_id, render_sheet(doc, profile.name_label), doc.doc_id, doc.title, {"sheet": True}))
        out += [Chunk(f"{doc.doc_id}#text{n}", text, doc.doc_id, doc.title) for n, text in enumerate(doc.free_text)]
    return out


def index_chunks(chunks: list[Chunk], chunk_size: int) -> list[IndexedChunk]:
    """Corpus chunks -> stored chunks: long ones split into ID#p0, ID#p1...
    (never a sheet: narrowing needs all its fields)."""
    out = []
    for chunk in chunks:
        pieces = [chunk.content] if chunk.metadata.get("sheet") else split_text(chunk.content, chunk_size)
        if len(pieces) == 1:
            out.append(IndexedChunk(chunk.id, chunk.content, chunk.doc_id, chunk.title, chunk.content))
            continue
        for n, piece in enumerate(pieces):
            # A continuation part has lost the heading that names its document;
            # embedding the title with it keeps it findable by document name.
            text = piece if n == 0 else f"{chunk.title}\n{piece}"
            out.append(IndexedChunk(f"{chunk.id}#p{n}", piece, chunk.doc_id, chunk.title, text))
    return out


# ---------------------------------------------------------------- chroma


def _chroma_client(path: str | Path = "", host: str = "") -> Any:
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host:
        hostname, _, port = host.rpartition(":")
        if not hostname or not port.isdigit():
            raise DyagError(f"--chroma-host must be host:port, not {host!r}")
        return chromadb.HttpClient(host=hostname, port=int(port), settings=settings)
    return chromadb.PersistentClient(path=str(path), settings=settings)


def _close(client: Any) -> None:
    # Releases the sqlite files: needed before the directory is renamed.
    with contextlib.suppress(Exception):
        client.close()


def collection_name(config: IndexConfig, digest: str) -> str:
    """The collection an index writes: --collection, else "dyag" in the
    index's own store and "dyag-<corpus digest>" on a server, where indexes of
    other corpora live beside it (the same corpus shares one)."""
    if config.collection:
        return config.collection
    return f"dyag-{digest}" if config.chroma_host else "dyag"


def _where(config: IndexConfig, name: str) -> str:
    return f"collection {name!r} on {config.chroma_host}" if config.chroma_host else f"collection {name!r} of {config.index}"


def _open_collection(client: Any, name: str, *, create: bool) -> Any:
    if create:
        return client.get_or_create_collection(
            name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
    try:
        return client.get_collection(name, embedding_function=None)
    except Exception as exc:  # chromadb raises NotFoundError or ValueError depending on version
        raise DyagError(f"collection {name!r} not found ({exc}); run `dyag index-rag` to build it") from None


def _stored_hashes(collection: Any) -> dict[str, str]:
    """chunk id -> hash of the embedded text, for every chunk in the collection."""
    hashes: dict[str, str] = {}
    total = collection.count()
    for offset in range(0, total, 5000):
        page = collection.get(include=["metadatas"], limit=5000, offset=offset)
        for chunk_id, meta in zip(page["ids"], page["metadatas"]):
            hashes[chunk_id] = (meta or {}).get("content_hash", "")
    return hashes


# ---------------------------------------------------------------- stage


@dataclass
class IndexResult:
    index_dir: str
    collection: str
    chunks_total: int
    chunks_embedded: int
    chunks_reused: int
    chunks_removed: int
    seconds: float
    corpus_digest: str


def read_manifest(index_dir: str | Path) -> dict:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir():
        raise DyagError(f"{index_dir}: no such index directory; run `dyag index-rag --index {index_dir}` first")
    if not path.is_file():
        raise DyagError(f"{path}: index manifest missing; run `dyag index-rag --index {index_dir}` to (re)build it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DyagError(f"{path}: unreadable index manifest ({exc}); run `dyag index-rag` to rebuild it") from None


def read_profile(index_dir: str | Path) -> Profile:
    """The corpus profile an index was built with."""
    path = Path(index_dir) / PROFILE
    if not path.is_file():
        read_manifest(index_dir)  # names a missing index first
        raise DyagError(f"{index_dir}: built by an older dyag (no corpus profile); rebuild it with `dyag index-rag`")
    profile = Profile.from_dict(json.loads(path.read_text("utf-8")))
    copy = Path(index_dir) / SCHEMA_COPY / Path(profile.schema).name
    if profile.schema not in SHIPPED_SCHEMAS and copy.is_file():
        profile = dataclasses.replace(profile, schema=str(copy))  # the user's file may be gone: its copy is here
    return profile


# What a collection's metadata says of its writer: the embedding model and the corpus.
OWNER_MODEL, OWNER_CORPUS = "dyag_embedding_model", "dyag_corpus_digest"


def _update_collection(
    client: Any, config: IndexConfig, name: str, chunks: list[IndexedChunk], previous: dict | None, digest: str
) -> tuple[int, int, int, int]:
    """Bring collection `name` in line with `chunks`. Returns (embedded, reused, removed, dimension)."""
    from tqdm import tqdm

    embedder = load_embedder(config.embedding_model)
    dimension = embedding_dimension(embedder)
    same_model = previous is not None and (
        model_key(previous.get("embedding_model", "")) == model_key(config.embedding_model)
        and previous.get("embedding_dimension") == dimension
    )
    if previous is not None and not same_model and not config.rebuild:
        raise DyagError(
            f"{config.index}: built with embedding model {previous.get('embedding_model')!r}; "
            f"--embedding-model {config.embedding_model!r} needs --rebuild (every chunk is embedded again)"
        )
    collection = _open_collection(client, name, create=True)
    owner = collection.metadata or {}
    if owner.get(OWNER_MODEL) and not config.rebuild:
        # Another writer's collection (a shared server): never replace it unasked.
        if owner[OWNER_MODEL] != model_key(config.embedding_model):
            raise DyagError(
                f"{_where(config, name)} holds vectors of embedding model {owner[OWNER_MODEL]!r}, not "
                f"{config.embedding_model!r}; choose another --collection, or --rebuild to replace it"
            )
        ours = previous is not None and previous.get("corpus_digest") == owner.get(OWNER_CORPUS)
        if owner.get(OWNER_CORPUS) not in (digest, None) and not ours:
            raise DyagError(
                f"{_where(config, name)} holds another corpus (digest {owner[OWNER_CORPUS]}, this one {digest}); "
                "choose another --collection, or --rebuild to replace it"
            )
        same_model = True
    stored = _stored_hashes(collection)
    if config.rebuild or (stored and not same_model):
        # Vectors from another model are not comparable: start the collection
        # over. (A new, empty one is kept: another writer may be filling it.)
        client.delete_collection(name)
        collection = _open_collection(client, name, create=True)
        removed = [chunk_id for chunk_id in stored if chunk_id not in {c.id for c in chunks}]
        todo = list(chunks)
    else:
        wanted = {c.id for c in chunks}
        removed = [chunk_id for chunk_id in stored if chunk_id not in wanted]
        todo = [c for c in chunks if stored.get(c.id) != c.hash]
        for start in range(0, len(removed), 5000):
            collection.delete(ids=removed[start : start + 5000])

    with tqdm(total=len(todo), desc="embedding", unit="chunk", disable=not todo) as bar:
        for start in range(0, len(todo), EMBED_BATCH):
            batch = todo[start : start + EMBED_BATCH]
            collection.upsert(
                ids=[c.id for c in batch],
                embeddings=_embed(embedder, [c.text for c in batch]),
                documents=[c.content for c in batch],
                metadatas=[
                    {"doc_id": c.doc_id, "title": c.title, "chunk_id": c.id, "content_hash": c.hash} for c in batch
                ],
            )
            bar.update(len(batch))
    collection.modify(metadata={OWNER_MODEL: model_key(config.embedding_model), OWNER_CORPUS: digest})
    return len(todo), len(chunks) - len(todo), len(removed), dimension


def _recover(index_dir: Path) -> None:
    """Tidy what a killed run left next to the index: staging copies go; a
    previous index caught between the two renames of `swap_in` comes back."""
    for leftover in index_dir.parent.glob(f".{index_dir.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    olds = sorted(index_dir.parent.glob(f".{index_dir.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not index_dir.exists():
        os.rename(olds.pop(), index_dir)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def run(config: IndexConfig, tracker: NullTracker = NullTracker()) -> IndexResult:
    started = time.perf_counter()
    corpus = load_corpus(config.corpus)
    profile = build_profile(documents(corpus), config.schema)
    chunks = index_chunks(assemble(corpus, profile), config.chunk_size)
    digest = corpus_digest(corpus)
    index_dir = Path(config.index)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    # One writer at a time: a second index-rag on the same index waits for the first.
    with exclusive_lock(index_dir.parent / f".{index_dir.name}.lock", f"index {index_dir}"):
        return _index(config, corpus, profile, chunks, digest, index_dir, started, tracker)


def _index(
    config: IndexConfig, corpus: list, profile: Profile, chunks: list[IndexedChunk], digest: str, index_dir: Path,
    started: float, tracker: NullTracker,
) -> IndexResult:
    _recover(index_dir)

    previous = None
    if index_dir.is_dir() and any(index_dir.iterdir()):
        if not (index_dir / MANIFEST).is_file():
            # Refuse to write into (and later delete) a directory we did not make.
            raise DyagError(f"{index_dir}: exists and is not a dyag index (no {MANIFEST}); choose another --index")
        previous = read_manifest(index_dir)
    elif index_dir.exists() and not index_dir.is_dir():
        raise DyagError(f"{index_dir}: exists and is not a directory; choose another --index")

    name = collection_name(config, digest)
    if config.chroma_host:
        client = _chroma_client(host=config.chroma_host)
        embedded, reused, removed, dimension = _update_collection(client, config, name, chunks, previous, digest)
        workdir = index_dir
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = staging_dir(index_dir)
        try:
            if previous is not None:
                shutil.copytree(index_dir, workdir, dirs_exist_ok=True)
            client = _chroma_client(path=workdir)
            try:
                embedded, reused, removed, dimension = _update_collection(client, config, name, chunks, previous, digest)
            finally:
                _close(client)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "format": MANIFEST_FORMAT,
        "embedding_model": config.embedding_model,
        "embedding_model_resolved": resolve_embedding_model(config.embedding_model),
        "embedding_dimension": dimension,
        "collection": name,
        "chroma_host": config.chroma_host,
        "chunks": len(chunks),
        "corpus_chunks": len(corpus),
        "corpus_digest": digest,
        "chunk_size": config.chunk_size,
        "ranking": config.ranking,
        "schema": profile.schema,
        "created": (previous or {}).get("created", now),
        "updated": now,
    }
    try:
        if profile.schema not in SHIPPED_SCHEMAS:
            (workdir / SCHEMA_COPY).mkdir(exist_ok=True)
            shutil.copyfile(profile.schema, workdir / SCHEMA_COPY / Path(profile.schema).name)
        atomic_write_json(workdir / PROFILE, profile.to_dict())
        atomic_write_json(workdir / MANIFEST, manifest)
        if not config.chroma_host:
            swap_in(workdir, index_dir)
    except BaseException:
        if workdir != index_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started

    result = IndexResult(str(index_dir), name, len(chunks), embedded, reused, removed, seconds, digest)
    tracker.log_metrics(
        {
            "chunks_total": len(chunks),
            "chunks_embedded": embedded,
            "chunks_reused": reused,
            "chunks_removed": removed,
            "index_seconds": seconds,
            "chunks_per_second": embedded / seconds if seconds > 0 else 0.0,
        }
    )
    tracker.set_tags({"dyag.embedding_model": config.embedding_model, "dyag.corpus_digest": digest, "dyag.schema": profile.schema})
    # The corpus as this run's input: its chunks, as read, whatever their files' layout.
    corpus_path = Path(config.corpus or demo_corpus_path())
    tracker.log_dataset(corpus_path, "corpus", name=corpus_path.name, rows=corpus_rows(corpus), digest=digest)
    tracker.log_artifact(index_dir / MANIFEST)
    tracker.log_artifact(index_dir / PROFILE)
    tracker.log_artifacts(index_dir, "index")
    return result


# ---------------------------------------------------------------- retrieval


@functools.lru_cache(maxsize=4)
def _router(profile_json: str, schema_source: str, embedding_model: str) -> Any:
    from dyag_mlops.retrieval.focus import FieldRouter

    return FieldRouter(Profile.from_dict(json.loads(profile_json)), cached_schema(schema_source), embedding_model)


def field_router(profile: Profile, schema: Any, embedding_model: str = DEFAULT_EMBEDDING_MODEL) -> Any:
    """The router of a corpus profile, built once per process (a few seconds
    with word vectors); `embedding_model` is the index's."""
    return _router(json.dumps(profile.to_dict(), sort_keys=True), schema.source, model_key(embedding_model))


@dataclass(frozen=True)
class Retrieved:
    chunk_id: str
    doc_id: str
    title: str
    content: str
    score: float  # lexical: BM25 score (0: no word shared); fused: RRF score; dense: cosine similarity
    field: str = ""  # the field a sheet was narrowed to (focus.narrow_hits); "" when whole


class Retriever:
    """Top-k chunks of a built index for a batch of questions."""

    def __init__(
        self,
        index_dir: str,
        embedding_model: str | None = None,
        chroma_host: str = "",
        *,
        ranking: str = "",
        doc_filter: bool = True,
    ):
        """`ranking` (RANKINGS) overrides the one the index was built with."""
        self.index_dir = str(index_dir)
        self.manifest = read_manifest(index_dir)
        built_with = self.manifest.get("embedding_model") or DEFAULT_EMBEDDING_MODEL
        if embedding_model and model_key(embedding_model) != model_key(built_with):
            raise DyagError(
                f"{index_dir}: index built with {built_with}, asked for {embedding_model}; "
                f"query it with {built_with} or rebuild it with `dyag index-rag --embedding-model {embedding_model}`"
            )
        self.embedding_model = built_with
        self.profile = read_profile(index_dir)
        self.schema = cached_schema(self.profile.schema)
        self.ranking = ranking or self.manifest.get("ranking", "lexical")
        if self.ranking not in RANKINGS:
            raise DyagError(f"{index_dir}: ranking must be one of {', '.join(RANKINGS)}, not {self.ranking!r}")
        self.doc_filter = doc_filter
        host = chroma_host or self.manifest.get("chroma_host", "")
        self._client = _chroma_client(path=index_dir, host=host)
        name = self.manifest.get("collection", "dyag")
        self.collection = _open_collection(self._client, name, create=False)
        owner = self.collection.metadata or {}
        if owner.get(OWNER_CORPUS, self.manifest.get("corpus_digest")) != self.manifest.get("corpus_digest") or (
            self.collection.count() != self.manifest.get("chunks", self.collection.count())
        ):
            raise DyagError(
                f"{index_dir}: collection {name!r}{' on ' + host if host else ''} no longer holds the corpus this index was "
                f"built from ({self.collection.count()} chunks, {self.manifest.get('chunks')} expected): another "
                "writer changed it; run `dyag index-rag` again"
            )
        self.embedder = load_embedder(built_with)
        if embedding_dimension(self.embedder) != self.manifest.get("embedding_dimension", embedding_dimension(self.embedder)):
            raise DyagError(f"{index_dir}: index vectors and model {built_with} differ in dimension; rebuild the index")
        self._load_catalogue()

    # -- setup

    def _load_catalogue(self) -> None:
        """The names and words of the index (names.Catalogue: titles from the
        collection, aliases from the corpus profile), and the chunks for BM25
        when asked for."""
        vocab = self.embedder.tokenizer.get_vocab() if hasattr(self.embedder, "tokenizer") else {}
        self.catalogue = Catalogue(self.profile, self.schema, vocab)
        self._chunks: list[Retrieved] = []
        total = self.collection.count()
        for offset in range(0, total, 5000):
            page = self.collection.get(include=["metadatas", "documents"], limit=5000, offset=offset)
            texts = page.get("documents") or [""] * len(page["ids"])
            for chunk_id, meta, text in zip(page["ids"], page["metadatas"], texts):
                meta = meta or {}
                self.catalogue.add_chunk(meta.get("doc_id", ""), meta.get("title", ""), text or "")
                if self.ranking != "dense":
                    self._chunks.append(Retrieved(chunk_id, meta.get("doc_id", ""), meta.get("title", ""), text or "", 0.0))
        self._bm25 = None
        if self.ranking != "dense" and self._chunks:
            from rank_bm25 import BM25Okapi

            self._bm25 = BM25Okapi([normalise(f"{c.title} {c.content}").split() or [""] for c in self._chunks])

    @functools.cached_property
    def router(self) -> Any:
        """The field router of this index's corpus (focus.FieldRouter)."""
        return field_router(self.profile, self.schema, self.embedding_model)

    def close(self) -> None:
        _close(self._client)

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- queries

    def spelled(self, question: str) -> str:
        return self.catalogue.spelled(question)

    def named_documents(self, question: str) -> list[str]:
        return self.catalogue.named_documents(question)

    def unknown_names(self, question: str) -> list[str]:
        return self.catalogue.unknown_names(question)

    def chunks_of(self, doc_id: str) -> list[Retrieved]:
        """Every stored chunk of one document, in id order."""
        page = self.collection.get(where={"doc_id": doc_id}, include=["metadatas", "documents"])
        found = [
            Retrieved(cid, doc_id, (m or {}).get("title", ""), d or "", 0.0)
            for cid, m, d in zip(page["ids"], page["metadatas"], page["documents"])
        ]
        return sorted(found, key=lambda hit: hit.chunk_id)

    def retrieve(self, questions: list[str], top_k: int = 3, doc_filter: bool | None = None) -> list[list[Retrieved]]:
        """Top-k chunks per question. `doc_filter` overrides the retriever's
        setting: restrict to the documents a question names, and retrieve
        nothing for a question that names only applications the index does not
        hold (`unknown_names`), or that names none and shares no word with the
        document found (`shares_a_word`)."""
        doc_filter = self.doc_filter if doc_filter is None else doc_filter
        if not questions:
            return []
        with single_thread() if len(questions) <= 8 else contextlib.nullcontext():
            vectors = [v.tolist() for v in embed_remembered(self.embedding_model, list(questions))]
        fetch = max(top_k * 4, 20) if self._bm25 is not None else top_k
        # One Chroma query per distinct document filter (the filter is per call).
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, question in enumerate(questions):
            docs = tuple(self.named_documents(question)) if doc_filter else ()
            if doc_filter and not docs and self.unknown_names(question) and not self.catalogue.distinctive_words(question):
                continue  # about something the index does not hold: no context
            groups.setdefault(docs, []).append(i)
        results: list[list[Retrieved]] = [[] for _ in questions]
        for docs, indices in groups.items():
            hits = self._query([vectors[i] for i in indices], fetch, docs)
            for i, found in zip(indices, hits):
                if not found and docs:
                    # The filter found nothing: the name matched by accident.
                    found = self._query([vectors[i]], fetch, ())[0]
                    docs_used: tuple[str, ...] = ()
                else:
                    docs_used = docs
                if self._bm25 is not None:
                    found = self._rank_lexically(questions[i], found, docs_used)
                if doc_filter and not docs and found and not self.catalogue.shares_a_word(questions[i], f"{found[0].title} {found[0].content}"):
                    found = []  # names nothing and shares no word with the closest document
                results[i] = found[:top_k]
        return results

    def _query(self, vectors: list[list[float]], n: int, docs: tuple[str, ...]) -> list[list[Retrieved]]:
        where = None
        if docs:
            where = {"doc_id": docs[0]} if len(docs) == 1 else {"doc_id": {"$in": list(docs)}}
        reply = self.collection.query(
            query_embeddings=vectors, n_results=n, where=where, include=["metadatas", "documents", "distances"]
        )
        out = []
        for ids, metas, texts, distances in zip(
            reply["ids"], reply["metadatas"], reply["documents"], reply["distances"]
        ):
            out.append(
                [
                    Retrieved(cid, (m or {}).get("doc_id", ""), (m or {}).get("title", ""), d or "", 1.0 - float(dist))
                    for cid, m, d, dist in zip(ids, metas, texts, distances)
                ]
            )
        return out

    def _rank_lexically(self, question: str, dense: list[Retrieved], docs: tuple[str, ...]) -> list[Retrieved]:
        """The dense hits and the BM25 ranking, fused (RRF) or BM25 first."""
        # The language's stop words say nothing of a document ("the", "de").
        stop = set(self.schema.stop_words)
        scores = self._bm25.get_scores([w for w in normalise(question).split() if w not in stop])
        allowed = set(docs)
        ranked = sorted(
            (j for j in range(len(scores)) if scores[j] > 0 and (not allowed or self._chunks[j].doc_id in allowed)),
            key=lambda j: -scores[j],
        )
        if self.ranking == "lexical":
            # BM25's order; the dense hits it does not score (no word in common) after it.
            lexical = [dataclasses.replace(self._chunks[j], score=float(scores[j])) for j in ranked]
            seen = {hit.chunk_id for hit in lexical}
            return lexical + [dataclasses.replace(hit, score=0.0) for hit in dense if hit.chunk_id not in seen]
        lexical = [self._chunks[j] for j in ranked][: len(dense) or 20]
        fused: dict[str, float] = {}
        by_id: dict[str, Retrieved] = {}
        for ranking in (dense, lexical):
            for rank, hit in enumerate(ranking):
                fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
                by_id.setdefault(hit.chunk_id, hit)
        best = sorted(fused, key=lambda cid: -fused[cid])
        return [dataclasses.replace(by_id[c], score=fused[c]) for c in best]


def retrieval_metrics(retrieved: list[list[Retrieved]], expected_doc_ids: list[str | None], k: int) -> dict:
    """recall_at_k: share of questions whose expected document is among the
    top k chunks; mrr: mean of 1/rank of its first chunk (0 when absent).
    Only questions with an expected doc id count; {} when there are none."""
    reciprocal = []
    for hits, expected in zip(retrieved, expected_doc_ids):
        if not expected:
            continue
        ranks = [rank for rank, hit in enumerate(hits[:k], start=1) if hit.doc_id == expected]
        reciprocal.append(1.0 / ranks[0] if ranks else 0.0)
    if not reciprocal:
        return {}
    return {
        "recall_at_k": sum(r > 0 for r in reciprocal) / len(reciprocal),
        "mrr": sum(reciprocal) / len(reciprocal),
    }
