"""index-rag and the Retriever, on a six-chunk corpus with the bundled MiniLM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from dyag_mlops.config import IndexConfig  # noqa: E402
from dyag_mlops.errors import DyagError  # noqa: E402
from dyag_mlops.retrieval import embeddings  # noqa: E402
from dyag_mlops.retrieval import rag  # noqa: E402
from dyag_mlops.tracking import NullTracker  # noqa: E402

APPS = [
    ("app-a", "ORBITA", "Système de Suivi des Satellites", "Hébergement : Datacenter Nord\nTechnologie : Rust"),
    ("app-b", "GéoVert", "Plateforme des Espaces Verts", "Hébergement : Cloud Nubo\nTechnologie : Python/Django"),
    ("app-c", "e-Pass", "Passeport Numérique des Lycéens", "Hébergement : Datacenter Sud\nTechnologie : PHP"),
    ("app-d", "MAREA", "Observatoire des Marées", "Hébergement : Cloud Nubo\nTechnologie : Java"),
    ("app-e", "FISCA", "Gestion de la Fiscalité Locale", "Hébergement : Datacenter Nord\nTechnologie : COBOL"),
    ("app-f", "VELO-R", "Location de Vélos Régionaux", "Hébergement : Datacenter Est\nTechnologie : Go"),
]


def corpus_rows() -> list[dict]:
    return [
        {
            "id": app_id,
            "content": f"Nom : {name}\nNom complet : {full}\n{body}\nStatut : En production",
            "metadata": {"id": app_id, "nom": name},
        }
        for app_id, name, full, body in APPS
    ]


def write_corpus(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


class RecordingTracker(NullTracker):
    def __init__(self) -> None:
        self.metrics: dict = {}
        self.tags: dict = {}
        self.artifacts: list = []

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))

    def log_artifacts(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))


@pytest.fixture()
def built(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", corpus_rows())
    config = IndexConfig(corpus=corpus, index=str(tmp_path / "index"))
    tracker = RecordingTracker()
    result = rag.run(config, tracker)
    return config, result, tracker


def test_build_and_retrieve_named_document(built):
    config, result, tracker = built
    assert (result.chunks_total, result.chunks_embedded, result.chunks_reused) == (6, 6, 0)
    manifest = json.loads((Path(config.index) / rag.MANIFEST).read_text())
    assert manifest["embedding_model"] == "all-minilm-l6-v2"
    assert manifest["embedding_dimension"] == 384
    assert manifest["chunks"] == 6 and manifest["corpus_digest"] == result.corpus_digest
    assert tracker.metrics["chunks_embedded"] == 6 and "chunks_per_second" in tracker.metrics
    assert tracker.tags["dyag.corpus_digest"] == result.corpus_digest
    assert (config.index, "index") in tracker.artifacts

    with rag.Retriever(config.index) as retriever:
        # Names found from the collection itself: titles, squashed titles, full names.
        assert retriever.named_documents("Quelle techno pour GEOVERT ?") == ["app-b"]
        assert retriever.named_documents("epass est hébergé où") == ["app-c"]
        assert retriever.named_documents("le Passeport numérique des lycéens, statut ?") == ["app-c"]
        hits = retriever.retrieve(["Où est hébergé MAREA ?", "Quelle technologie utilise FISCA ?"], top_k=3)
    assert hits[0][0].doc_id == "app-d" and hits[0][0].title == "MAREA"
    assert hits[1][0].doc_id == "app-e"
    assert hits[0][0].score > 0, "lexical ranking: the BM25 score"


def test_a_corrected_word_is_written_as_the_corpus_writes_it(built):
    # The router's word vectors know "fiscalité", not "fiscalite".
    config, _, _ = built
    with rag.Retriever(config.index) as retriever:
        assert retriever.spelled("Qui gère la fiscalitee locale ?") == "Qui gère la fiscalité locale ?"


def test_unnamed_question_is_not_filtered(built):
    config, _, _ = built
    with rag.Retriever(config.index) as retriever:
        hits = retriever.retrieve(["Quelle application loue des vélos ?"], top_k=3)[0]
    assert len(hits) == 3
    assert hits[0].doc_id == "app-f"


def test_question_naming_an_unknown_application_retrieves_nothing(built):
    config, _, _ = built
    with rag.Retriever(config.index) as retriever:
        assert retriever.unknown_names("Quel est le statut de PEGASE ?") == ["PEGASE"]
        # In the corpus, a misspelling of a document name, too short, or one capital: known or not a name.
        assert retriever.unknown_names("Quelle appli est écrite en COBOL ?") == []
        assert retriever.unknown_names("Où est hébergé MAERA ?") == []
        assert retriever.unknown_names("Quel CMS ? Quelle Application ?") == []
        hits = retriever.retrieve(["Quel est le statut de PEGASE ?", "Où est hébergé MAERA ?", "Où est hébergé PEGASE ou MAREA ?"], top_k=2)
        assert hits[0] == []
        assert len(hits[1]) == 2, "a misspelt name is searched as usual"
        assert hits[2][0].doc_id == "app-d", "a question that also names a known application is searched as usual"
        assert retriever.retrieve(["Quel est le statut de PEGASE ?"], top_k=2, doc_filter=False)[0], "no guard without the name filter"


PACKAGES = [
    ("logrota3", "Version: 1.34.0\nSummary: Rotates the log files of a server\nHomepage: https://logrota.example.org"),
    ("cipherkit", "Version: 42.0.5\nSummary: Recipes and primitives for developers\nHomepage: https://cipherkit.example.org"),
    ("tessellate", "Version: 3.0.1\nSummary: The comprehensive tiling library\nHomepage: https://tiles.example.org"),
]


@pytest.fixture()
def english_index(tmp_path):
    rows = [{"id": name, "content": f"Name: {name}\n{body}", "metadata": {"id": name, "title": name}} for name, body in PACKAGES]
    config = IndexConfig(corpus=write_corpus(tmp_path / "packages.jsonl", rows), index=str(tmp_path / "index"))
    rag.run(config)
    return config.index


def test_misspelt_words_are_read_as_the_corpus_writes_them(english_index):
    with rag.Retriever(english_index) as retriever:
        assert retriever.spelled("which verison of cipherkti is that") == "which version of cipherkit is that"
        assert retriever.spelled("tesselate homepge?") == "tessellate homepage?"
        # English words are no misspellings, even close to a word of the corpus ("released"/"related").
        assert retriever.spelled("Under which terms is it released?") == "Under which terms is it released?"
        # A word of the corpus with a suffix is another form of it, not a misspelling.
        assert retriever.spelled("What makes its comprehensiveness?") == "What makes its comprehensiveness?"
        # Neighbouring words glued name a document.
        assert retriever.named_documents("logrota 3 version") == ["logrota3"]


def test_an_abbreviated_label_word_is_read_as_the_label_says_it(english_index):
    with rag.Retriever(english_index) as retriever:
        assert retriever.spelled("cipherkit ver?") == "cipherkit version?"
        assert retriever.spelled("logrota3 summ pls") == "logrota3 summary pls"
        # Only the letters of a label word, in order, from its first two: no other word is expanded.
        assert retriever.spelled("zenquard hmpg") == "zenquard hmpg"


def test_a_lowercase_name_neither_the_corpus_nor_the_language_holds_is_unknown(english_index):
    with rag.Retriever(english_index) as retriever:
        assert retriever.unknown_names("Which release of zenquard is out?") == ["zenquard"]
        assert retriever.unknown_names("Which version does the tiling library have?") == []
        # Ordinary English words the embedding model's tokenizer splits are no names.
        assert retriever.unknown_names("Which homepage does the log rotator list?") == []
        assert retriever.retrieve(["Which release of zenquard is out?"], top_k=1) == [[]]
        # A word only one document holds speaks of it, whatever unknown name comes with it.
        assert retriever.catalogue.distinctive_words("Which release of zenquard is out?") == []
        hits = retriever.retrieve(["Which zenquard release does the tiling library have?"], top_k=1)
        assert [h.doc_id for h in hits[0]] == ["tessellate"]


def test_a_frequent_word_one_document_holds_does_not_name_it(tmp_path):
    # "latest" is on one sheet, but says nothing of that package: a
    # question naming an unknown package with it gets no context. A rarer
    # word ("tiling") still names its document.
    rows = [{"id": n, "content": f"Name: {n}\n{b}", "metadata": {"id": n, "title": n}} for n, b in PACKAGES]
    rows[0]["content"] += "\nDescription: Keeps the latest logs"
    config = IndexConfig(corpus=write_corpus(tmp_path / "packages.jsonl", rows), index=str(tmp_path / "index"))
    rag.run(config)
    with rag.Retriever(config.index) as retriever:
        assert retriever.catalogue.distinctive_words("What is the latest version of zenquard?") == []
        assert retriever.retrieve(["What is the latest version of zenquard?"], top_k=1) == [[]]
        assert retriever.catalogue.distinctive_words("What is the latest tiling zenquard?") == ["tiling"]


def test_a_language_without_a_word_list_reads_questions_as_before(english_index):
    # A user's schema may name a language wordfreq has no list of: its
    # tokenizer vocabulary alone then says which words are the language's.
    from dataclasses import replace

    from dyag_mlops.retrieval.names import Catalogue

    with rag.Retriever(english_index) as retriever:
        catalogue = retriever.catalogue
        unlisted = Catalogue(catalogue.profile, replace(catalogue.schema, language="xx"), catalogue._vocab)
        unlisted.add_chunk("logrota3", "logrota3", "Summary: Rotates the log files of a server")
        assert unlisted.unknown_names("Which homepage does the log rotator list?") == ["rotator"]
        assert unlisted.spelled("cipherkit ver?") == "cipherkit version?"


def test_a_question_naming_nothing_and_sharing_no_word_with_the_closest_document_retrieves_nothing(english_index):
    # "nano" is an English word, not a name; no document holds it.
    with rag.Retriever(english_index) as retriever:
        assert retriever.unknown_names("Which version is nano at?") == []
        assert retriever.retrieve(["Which version is nano at?"], top_k=1) == [[]]
        assert retriever.retrieve(["Which version is nano at?"], top_k=1, doc_filter=False)[0], "no guard without the name filter"
        # Named by words of its summary, a document is found as before.
        assert [h.doc_id for h in retriever.retrieve(["Which version does the tiling library have?"], top_k=1)[0]] == ["tessellate"]


def test_stop_words_rank_no_document(english_index):
    # "the", "and", "for" are in two summaries; the English stop words are
    # left out of the lexical query, so no document scores on them.
    with rag.Retriever(english_index) as retriever:
        hits = retriever.retrieve(["the and for"], top_k=3)[0]
        assert hits and all(h.score == 0.0 for h in hits)
        assert retriever.retrieve(["the tiling library"], top_k=1)[0][0].score > 0


@pytest.mark.parametrize("ranking", ["lexical", "fused"])
def test_ranking_with_bm25(built, ranking):
    config, _, _ = built
    with rag.Retriever(config.index, ranking=ranking) as retriever:
        hits = retriever.retrieve(["Quelle application est écrite en COBOL ?"], top_k=2)[0]
    assert hits[0].doc_id == "app-e"


def test_lexical_ranking_is_bm25_order_then_dense(built):
    config, _, _ = built
    with rag.Retriever(config.index) as retriever:
        assert retriever.ranking == "lexical", "the index's own setting (IndexConfig's default)"
        hits = retriever.retrieve(["Datacenter Nord ?", "zzz qqq"], top_k=6, doc_filter=False)
    first = hits[0]
    assert {h.doc_id for h in first[:2]} == {"app-a", "app-e"}, "the two sheets holding both words come first"
    assert all(a.score >= b.score for a, b in zip(first, first[1:])), "BM25 scores, best first"
    assert len(hits[1]) == 6 and all(h.score == 0.0 for h in hits[1]), "no word in common: the dense hits"


def test_ranking_is_recorded_and_checked(built, tmp_path):
    config, _, _ = built
    manifest_path = Path(config.index) / rag.MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["ranking"] == IndexConfig.ranking
    with rag.Retriever(config.index, ranking="dense") as retriever:
        assert retriever.ranking == "dense", "asked for: overrides the index's"
    with pytest.raises(DyagError, match="ranking must be one of"):
        rag.Retriever(config.index, ranking="bm42")
    with pytest.raises(ValueError, match="--ranking"):
        IndexConfig(index=str(tmp_path / "i"), ranking="bm42")


def test_incremental_reindex(built, tmp_path):
    config, _, _ = built
    again = rag.run(config)
    assert (again.chunks_embedded, again.chunks_reused, again.chunks_removed) == (0, 6, 0)

    rows = corpus_rows()
    rows[3]["content"] += "\nContacts : Jeanne Martin"
    del rows[5]
    write_corpus(Path(config.corpus), rows)
    changed = rag.run(config)
    assert (changed.chunks_total, changed.chunks_embedded, changed.chunks_reused, changed.chunks_removed) == (5, 1, 4, 1)
    with rag.Retriever(config.index) as retriever:
        assert retriever.collection.count() == 5
        assert "Jeanne Martin" in retriever.retrieve(["Contacts de MAREA"], top_k=1)[0][0].content
    assert not [p for p in tmp_path.glob(".index.*") if p.name != ".index.lock"], "staging copies must not be left behind"


def test_long_chunks_are_split_and_sheets_never(tmp_path):
    from dyag_mlops.data.inventory import build_profile, documents

    rows = corpus_rows()
    rows[0]["content"] = "\n".join(f"La ligne {n} donne la valeur numéro {n}." for n in range(40))  # free text
    rows[1]["content"] += "".join(f"\nChamp {n}: valeur numéro {n}" for n in range(20))  # a long sheet
    config = IndexConfig(corpus=write_corpus(tmp_path / "c.jsonl", rows), index=str(tmp_path / "i"), chunk_size=200)
    result = rag.run(config)
    corpus = rag.load_corpus(config.corpus)
    parts = rag.index_chunks(rag.assemble(corpus, build_profile(documents(corpus))), 200)
    assert result.chunks_total == len(parts) > 6
    assert [c.id for c in parts if c.doc_id == "app-a"][:2] == ["app-a#p0", "app-a#p1"]
    assert all(len(c.content) <= 200 for c in parts if c.doc_id == "app-a")
    (sheet,) = [c for c in parts if c.doc_id == "app-b"]  # narrowing needs every field of a sheet
    assert sheet.id == "app-b" and len(sheet.content) > 200 and "Champ 19: valeur numéro 19" in sheet.content


def test_a_document_of_several_chunks_is_stored_as_one_sheet_with_the_corpus_profile(tmp_path):
    """dyag's original layout: one field per chunk, the document named by
    metadata.id; the index stores the document's assembled sheet."""
    rows = [
        {"id": f"chunk_{app_id}_{n}", "content": f"Application: {name}\n{line}", "metadata": {"id": app_id, "nom": name}}
        for app_id, name, full, body in APPS
        for n, line in enumerate([f"Nom complet: {full}", *body.replace(" : ", ": ").splitlines(), "Statut: En production"])
    ]
    config = IndexConfig(corpus=write_corpus(tmp_path / "c.jsonl", rows), index=str(tmp_path / "i"))
    assert rag.run(config).chunks_total == len(APPS)
    profile = rag.read_profile(config.index)
    assert profile.schema == "fr" and profile.documents == len(APPS) and profile.name_label == "Application"
    with rag.Retriever(config.index) as retriever:
        assert retriever.profile == profile and retriever.schema.unknown_answer == "Je ne sais pas"
        assert retriever.router.entries(retriever.chunks_of("app-d")[0].content) is not None
        (hit,) = retriever.retrieve(["Où est hébergé MAREA ?"], top_k=1)[0]
        assert hit.chunk_id == hit.doc_id == "app-d"
        assert hit.content == (
            "Application: MAREA\nNom complet: Observatoire des Marées\nHébergement: Cloud Nubo\n"
            "Technologie: Java\nStatut: En production"
        )
        # the full name (an alias field) names the document too
        assert retriever.named_documents("l'observatoire des marées, statut ?") == ["app-d"]
    # an index built before the corpus profile existed is refused, not misread
    (Path(config.index) / rag.PROFILE).unlink()
    with pytest.raises(DyagError, match="built by an older dyag.*dyag index-rag"):
        rag.Retriever(config.index)


def test_crash_during_reindex_keeps_previous_index(built, tmp_path, monkeypatch):
    config, _, _ = built
    rows = corpus_rows()
    for row in rows:
        row["content"] += "\nRévision : 2"
    write_corpus(Path(config.corpus), rows)

    real_embed = rag._embed
    calls = {"n": 0}

    def flaky_embed(embedder, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_embed(embedder, texts)

    monkeypatch.setattr(rag, "EMBED_BATCH", 2)
    monkeypatch.setattr(rag, "_embed", flaky_embed)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rag.run(config)
    monkeypatch.setattr(rag, "_embed", real_embed)

    with rag.Retriever(config.index) as retriever:
        assert retriever.collection.count() == 6
        hit = retriever.retrieve(["Où est hébergé ORBITA ?"], top_k=1)[0][0]
    assert hit.doc_id == "app-a" and "Révision" not in hit.content
    assert not [p for p in tmp_path.glob(".index.*") if p.name != ".index.lock"]
    # The next run picks up where things are: every chunk changed, so all re-embedded.
    assert rag.run(config).chunks_embedded == 6


def test_embedding_model_mismatch(built):
    config, _, _ = built
    rag.Retriever(config.index, embedding_model="sentence-transformers/all-MiniLM-L6-v2").close()
    with pytest.raises(DyagError, match="built with all-minilm-l6-v2, asked for other/model"):
        rag.Retriever(config.index, embedding_model="other/model")


def test_missing_index(tmp_path):
    with pytest.raises(DyagError, match="dyag index-rag"):
        rag.Retriever(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DyagError, match="manifest missing"):
        rag.Retriever(str(tmp_path / "empty"))


def test_refuses_foreign_directory(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", corpus_rows())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DyagError, match="not a dyag index"):
        rag.run(IndexConfig(corpus=corpus, index=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DyagError, match="empty"):
        rag.run(IndexConfig(corpus=str(empty), index=str(tmp_path / "i")))


def test_resolve_embedding_model():
    bundled = embeddings.resolve_embedding_model("all-minilm-l6-v2")
    assert Path(bundled).is_dir()
    assert embeddings.resolve_embedding_model("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert embeddings.resolve_embedding_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_a_text_is_embedded_once_per_process_whatever_the_batch(monkeypatch):
    import numpy as np

    encoded: list[str] = []

    class Counting:
        def encode(self, texts, **kwargs):
            encoded.extend(texts)
            return np.array([[float(len(t)), 1.0] for t in texts])

    monkeypatch.setattr(embeddings, "load_embedder", lambda name: Counting())
    monkeypatch.setattr(embeddings, "_remembered", {})
    first = embeddings.embed_remembered("some-model", ["a", "bb", "a"])
    again = embeddings.embed_remembered("some-model", ["bb", "ccc"])
    assert encoded == ["a", "bb", "ccc"]
    assert [v[0] for v in first] == [1.0, 2.0, 1.0] and [v[0] for v in again] == [2.0, 3.0]
    embeddings.embed_remembered("another-model", ["a"])  # vectors are the model's own
    assert encoded[-1] == "a"


def test_retrieval_metrics():
    def hits(*doc_ids):
        return [rag.Retrieved(f"{d}-c", d, d, "", 0.0) for d in doc_ids]

    retrieved = [hits("a", "b", "c"), hits("x", "b", "y"), hits("x", "y", "z"), hits("a")]
    metrics = rag.retrieval_metrics(retrieved, ["a", "b", "c", None], k=3)
    assert metrics["recall_at_k"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    # k cuts the list: "b" at rank 2 no longer counts.
    assert rag.retrieval_metrics(retrieved, ["a", "b", "c", None], k=1)["recall_at_k"] == pytest.approx(1 / 3)
    assert rag.retrieval_metrics(retrieved, [None] * 4, k=3) == {}


def test_split_text():
    text = "para un\nligne deux\n\npara deux " + "mot " * 30
    pieces = rag.split_text(text, 40)
    assert all(len(p) <= 40 for p in pieces)
    assert rag.split_text("court", 40) == ["court"] and rag.split_text("x" * 50, 0) == ["x" * 50]
    assert rag.split_text("x" * 50, 20) == ["x" * 20, "x" * 20, "x" * 10]
