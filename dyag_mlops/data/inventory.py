"""What a corpus holds: documents, their fields, and the language it speaks.

A document is every chunk that shares its id; its facts are the "Label: value"
pairs of all its chunks, whatever the layout (`Label: value`, `Label : value`,
`- **Label**: value`, or a `## Label` heading with the value below it). Every
label the corpus uses is a field. A schema (shipped: fr, en) is optional help:
it names the language (refusal phrase, prompt wording, generic question
templates) and, for labels it knows, synonyms and question templates. The
corpus profile (`Profile`) is what the platform understood; it travels with
the index, so retrieval, narrowing and prompts agree with generation.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from dyag_mlops.data.files import read_text
from dyag_mlops.data.text import normalise
from dyag_mlops.errors import DyagError

SHIPPED_SCHEMAS = ("fr", "en")
DOC_PLACEHOLDER = "{doc}"
LABEL_PLACEHOLDER = "{label}"
# How an assembled sheet writes a field: "Statut: En production".
SEPARATOR = ": "

HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
# "Label: value", "Label : value", "- **Label**: value", "**Label** : value".
FIELD_LINE = re.compile(
    r"^\s*(?:[-*+]\s+)?(?:\*\*|__)?(?P<label>[^:\n*_#][^:\n*]{0,59}?)(?:\*\*|__)?\s*:(?:\*\*|__)?\s+(?P<value>\S.*?)\s*$"
)
# Markdown a value may be written in, read as its text (`plain_text`).
LIST_ITEM = re.compile(r"^(?:[-*+]|\d{1,2}[.)])\s+")
THEMATIC_BREAK = re.compile(r"^(?:(?:-\s*){3,}|(?:\*\s*){3,}|(?:_\s*){3,})$")
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
# Emphasis opens after a space or "(" and closes before one or a punctuation
# mark: "!=3.0.*, !=3.1.*" and "2**8" are no emphasis.
BOLD = re.compile(r"(?<![^\s(])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![^\s).,;:!?])")
ITALIC = re.compile(r"(?<![^\s(])\*(?=[^\s*])([^*]+?)(?<=\S)\*(?![^\s).,;:!?])")
# Words are compared by their first letters ("saisies" meets "saisi",
# "inventoriés" meets "inventaire"): here and in the field router (focus.py).
STEM = 5
# A label is a short name, not a sentence that happens to hold a colon.
MAX_LABEL_WORDS = 6


# ---------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    combined_with: tuple[str, ...] = ()
    # Its value is another name of the document ("Nom complet").
    alias: bool = False


@dataclass(frozen=True)
class Schema:
    """A language pack and, optionally, known fields with their wordings."""

    language: str
    fields: tuple[FieldSpec, ...] = ()
    unknown_answer: str = "I don't know"
    system_prompt: str = "Answer briefly with the exact value from the records, otherwise “I don't know”."
    context_heading: str = "Context:"
    question_heading: str = "Question: "
    name_label: str = "Name"
    # llm-based generation: how a model is asked for pairs ({n}, {chunk}).
    llm_instruction: str = (
        "Here is a record. Write {n} question/answer pairs whose answer is found word for word in the record. "
        "Format, one pair per line: Q: <question> || A: <answer>\n\nRecord:\n{chunk}"
    )
    # Templates with {label} and {doc}: how any field is asked about.
    generic_templates: tuple[str, ...] = ()
    # Kind of value (VALUE_KINDS) -> templates with {doc} (and maybe {label}):
    # how a field the schema does not know is asked about, from what its
    # values look like ("Who maintains {doc}?" for a field of e-mail addresses).
    kind_templates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Common words of the language: how a corpus's language is recognised.
    stop_words: frozenset[str] = frozenset()
    # Phrases that ask for what is written in figures, a quantity ("how
    # many"), normalised: no line without a digit answers them.
    figure_phrases: tuple[str, ...] = ()
    # Phrases that ask for a date ("when", "since when", "quelle année"),
    # normalised: no line without a year or a date answers them.
    date_phrases: tuple[str, ...] = ()
    # Words of a label that names a document's identifier ("id", "code"),
    # normalised: such a field of one-word values is asked for as a
    # reference ("What is the ID of {doc}?"), not as a quantity.
    identifier_words: frozenset[str] = frozenset()
    # Words that ask for a number that is no quantity ("phone number",
    # "numéro"), normalised: like a figure, it is written in digits, so no
    # line without a digit answers them.
    number_words: frozenset[str] = frozenset()
    # A question asking which document holds what it says ("Quelle
    # application est en développement ?"): one of `which_words`, then, past
    # short words only, one of `document_words` or the corpus's name label.
    which_words: frozenset[str] = frozenset()
    document_words: frozenset[str] = frozenset()
    # Words that ask for something (who, when, quel, où), lower case with
    # their accents ("où" is not "ou"): a question with none of them asks
    # yes or no ("Is X in production?"), about the field whose value it says.
    question_words: frozenset[str] = frozenset()
    # Those that ask who ("qui", "who"): such a question the router cannot
    # place is answered by a field whose templates ask who (the contacts).
    who_words: frozenset[str] = frozenset()
    # Those that ask why ("pourquoi", "why"): a reason is told in prose, so
    # such a question is answered by the corpus's text field (focus.py).
    reason_words: frozenset[str] = frozenset()
    # A spaCy package whose word vectors help the field router ("" for none).
    word_vectors: str = ""
    # Or a sentence-transformers model whose embeddings do (bundled: all-minilm-l6-v2).
    sentence_encoder: str = ""
    source: str = ""

    @functools.cached_property
    def _by_key(self) -> dict[tuple[str, ...], FieldSpec]:
        return {label_key(label): spec for spec in reversed(self.fields) for label in spec.labels}

    def field_for_label(self, label: str) -> FieldSpec | None:
        return self._by_key.get(label_key(label))

    def asks_figures(self, question: str) -> bool:
        """Whether `question` asks for figures: a quantity or a date."""
        return _says(question, self.figure_phrases) or self.asks_date(question)

    def asks_number(self, question: str) -> bool:
        """Whether `question` says one of `number_words` ("phone number")."""
        return bool(set(normalise(question).split()) & self.number_words)

    def asks_date(self, question: str) -> bool:
        """Whether `question` asks for a date: says one of `date_phrases`,
        and neither asks for a quantity nor asks who ("How many kilobytes
        does X take when installed?", "Who do I call when X is down?"). A
        date phrase that is a question word ("when") after another question
        word joins a clause to the question, it does not ask: "Which
        packages does X pull in when you install it?"."""
        # Question words are compared with their accents ("où" is not "ou").
        first_asking = next((w for w in re.findall(r"\w+", question.lower()) if w in self.question_words), None)
        phrases = [p for p in self.date_phrases if p not in self.question_words or p == first_asking]
        return (
            _says(question, phrases)
            and not _says(question, self.figure_phrases)
            and not set(normalise(question).split()) & self.who_words
        )


def _says(question: str, phrases: Iterable[str]) -> bool:
    """Whether `question` says one of `phrases` (normalised) as whole words."""
    said = f" {normalise(question)} "
    return any(f" {phrase} " in said for phrase in phrases)


def load_schema(name_or_path: str) -> Schema:
    """A shipped schema (`fr`, `en`) or a user's JSON file of the same shape."""
    if name_or_path in SHIPPED_SCHEMAS:
        text = (resources.files("dyag_mlops") / "resources" / "schemas" / f"{name_or_path}.json").read_text("utf-8")
        where = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise DyagError(f"--schema {name_or_path}: not {', '.join(SHIPPED_SCHEMAS)}, auto or an existing JSON file")
        text = read_text(path)
        where = str(path)
    try:
        data = json.loads(text)
        specs = tuple(
            FieldSpec(
                f["name"], tuple(f["labels"]), tuple(f.get("templates", ())), tuple(f.get("combined_with", ())),
                bool(f.get("alias", False)),
            )
            for f in data.get("fields", ())
        )
        language = str(data["language"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DyagError(f"{where}: not a valid field schema ({exc})") from None
    for spec in specs:
        if any(DOC_PLACEHOLDER not in t for t in spec.templates):
            raise DyagError(f"{where}: every template of field {spec.name!r} must contain {DOC_PLACEHOLDER}")
    generic = tuple(data.get("generic_templates", ()))
    if any(DOC_PLACEHOLDER not in t or LABEL_PLACEHOLDER not in t for t in generic):
        raise DyagError(f"{where}: every generic template must contain {DOC_PLACEHOLDER} and {LABEL_PLACEHOLDER}")
    kinds = data.get("kind_templates", {})
    if not isinstance(kinds, dict) or set(kinds) - set(VALUE_KINDS):
        raise DyagError(f"{where}: kind_templates must map some of {', '.join(VALUE_KINDS)} to templates")
    if any(DOC_PLACEHOLDER not in t for templates in kinds.values() for t in templates):
        raise DyagError(f"{where}: every kind template must contain {DOC_PLACEHOLDER}")
    word_vectors = data.get("word_vectors", "")
    if word_vectors and importlib.util.find_spec(word_vectors) is None:
        raise DyagError(f"{where}: word_vectors {word_vectors!r} is not installed (pip install {word_vectors})")
    defaults = Schema(language)
    return Schema(
        language=language,
        fields=specs,
        unknown_answer=data.get("unknown_answer", defaults.unknown_answer),
        system_prompt=data.get("system_prompt", defaults.system_prompt),
        context_heading=data.get("context_heading", defaults.context_heading),
        question_heading=data.get("question_heading", defaults.question_heading),
        name_label=data.get("name_label", defaults.name_label),
        llm_instruction=data.get("llm_instruction", defaults.llm_instruction),
        generic_templates=generic,
        kind_templates={kind: tuple(templates) for kind, templates in kinds.items()},
        stop_words=frozenset(normalise(" ".join(data.get("stop_words", ()))).split()),
        figure_phrases=tuple(normalise(phrase) for phrase in data.get("figure_phrases", ())),
        date_phrases=tuple(normalise(phrase) for phrase in data.get("date_phrases", ())),
        identifier_words=frozenset(normalise(" ".join(data.get("identifier_words", ()))).split()),
        number_words=frozenset(normalise(" ".join(data.get("number_words", ()))).split()),
        which_words=frozenset(normalise(" ".join(data.get("which_words", ()))).split()),
        document_words=frozenset(normalise(" ".join(data.get("document_words", ()))).split()),
        question_words=frozenset(" ".join(data.get("question_words", ())).lower().split()),
        who_words=frozenset(" ".join(data.get("who_words", ())).lower().split()),
        reason_words=frozenset(" ".join(data.get("reason_words", ())).lower().split()),
        word_vectors=word_vectors,
        sentence_encoder=data.get("sentence_encoder", ""),
        source=name_or_path,
    )


@functools.lru_cache(maxsize=8)
def cached_schema(name_or_path: str) -> Schema:
    return load_schema(name_or_path)


def detect_schema(texts: Iterable[str]) -> str:
    """The shipped schema whose language's common words the texts use most."""
    words = Counter(w for text in texts for w in normalise(text).split())
    scores = {name: sum(words[w] for w in cached_schema(name).stop_words) for name in SHIPPED_SCHEMAS}
    return max(SHIPPED_SCHEMAS, key=lambda name: scores[name])


def resolve_schema(name: str, texts: Iterable[str]) -> str:
    """`auto` (or empty) -> the detected shipped schema; anything else as given."""
    return detect_schema(texts) if name in ("", "auto") else name


# ---------------------------------------------------------------- fields of a chunk

# What a field's values look like, tested in this order; a field takes the
# kind of most of its values (KIND_SHARE). Language-neutral: the wording of
# the questions for each kind is the schema's (`kind_templates`).
VALUE_KINDS = {
    "url": re.compile(r"^(?:https?://|www\.)\S+$", re.I),
    "person": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "date": re.compile(r"^(?:\d{4}-\d{1,2}(?:-\d{1,2})?|\d{1,2}/\d{1,2}/\d{2,4})$"),
    # "18062", "6 200", "3,5 Go"; not "0.9" (versions outnumber decimal points).
    "number": re.compile(r"^[<>~≈]?\s*\d[\d\s]*(?:,\d+)?\s*(?:%|[^\W\d]{1,4}\.?)?$"),
    # Two items or more, each of at most four words, separated by commas:
    # "idna, urllib3, certifi", "libc6 (>= 2.34), libacl1 (>= 2.2.23)".
    "list": re.compile(r"^\S+(?:\s+\S+){0,3}(?:,\s*\S+(?:\s+\S+){0,3})+$"),
    # "text": not a pattern; the kind of the corpus's wordiest field (`_text_field`).
    "text": None,
    # "identifier": not a pattern; one-word values under a label the schema
    # takes for an identifier's (`_identifier_fields`).
    "identifier": None,
}
KIND_SHARE = 0.6
# Items each qualified by words in brackets, however long: "Observatoire
# régional de la santé (Utilisateur), ARS/DSI (Maîtrise d'œuvre)". A list
# to copy whole or by items, though its items are too long for the "list" kind.
QUALIFIED_ITEMS = re.compile(r"^[^,()]+\([^\W\d_][^()]*\)(?:,\s*[^,()]+\([^\W\d_][^()]*\))+$")
# The wordiest field is a description when its values average this many words.
TEXT_WORDS = 4


def value_kind(values: Sequence[str]) -> str:
    """The kind (VALUE_KINDS) of most of `values`, or "" when none has KIND_SHARE of them."""
    kinds = Counter(
        next((kind for kind, pattern in VALUE_KINDS.items() if pattern is not None and pattern.search(v.strip())), "")
        for v in values
    )
    kind, count = kinds.most_common(1)[0] if kinds else ("", 0)
    return kind if count >= KIND_SHARE * len(values) else ""


# A shared value is short: a category, not a sentence two documents happen to repeat.
SHARED_VALUE_WORDS = 3
# A field's categories are a handful; in a large corpus the long tail of
# values two documents happen to share (versions, authors, section names)
# would outnumber the field's own questions in the router.
SHARED_VALUES_KEPT = 5


# Where whole values differ, the words in brackets that qualify their items
# may recur ("DGPR (Maîtrise d'ouvrage), SCHAPI (Maîtrise d'œuvre)"): a
# field's own vocabulary, which questions use ("Qui assure la maîtrise
# d'ouvrage de X ?"). Only words: a version in brackets ("(>= 2.34)") is none.
QUALIFIER = re.compile(r"\((?P<words>[^\W\d_][^()]*)\)")


def shared_values(values: Sequence[str]) -> tuple[str, ...]:
    """The SHARED_VALUES_KEPT short values, or qualifiers of their items
    (QUALIFIER), found most often, in two values or more."""
    counts: Counter = Counter()
    for value in values:
        value = " ".join(value.split())
        parts = {value} | {m.group("words").strip() for m in QUALIFIER.finditer(value)}
        counts.update(p for p in parts if len(p.split()) <= SHARED_VALUE_WORDS)
    return tuple(v for v, n in counts.most_common() if n >= 2)[:SHARED_VALUES_KEPT]


def _text_field(values: dict[str, list[str]], kinds: dict[str, str]) -> str:
    """The field whose values hold the most words (on average, TEXT_WORDS at
    least) among those of no other kind: what "what is X?" asks for."""
    words = {
        name: sum(len(v.split()) for v in vs) / len(vs) for name, vs in values.items() if vs and not kinds.get(name)
    }
    best = max(words, key=words.__getitem__, default="")
    return best if best and words[best] >= TEXT_WORDS else ""


def _identifier_fields(
    spellings: dict[str, Counter], values: dict[str, list[str]], kinds: dict[str, str], schema: Schema
) -> list[str]:
    """The fields whose label says a word of the schema's `identifier_words`
    ("Identifiant", "Package ID") and whose values are one word each, a
    figure or a code ("4107", "APP-0042"), not an address or a date."""
    return [
        name
        for name, labels in spellings.items()
        if kinds.get(name) in ("", "number")
        and any(set(normalise(label).split()) & schema.identifier_words for label in labels)
        and all(len(v.split()) == 1 for v in values[name])
    ]


def label_key(label: str) -> tuple[str, ...]:
    """What makes two labels the same field: their words, case, accents and a
    final plural s/x ignored ("Sites web" = "Site web")."""
    return tuple(w[:-1] if len(w) > 3 and w[-1] in "sx" else w for w in normalise(label).split())


def plain_text(text: str) -> str:
    """A value's Markdown read as its text: bold and italic markers dropped,
    a link as its address, after its text when that says something else
    ("[Documentation](https://…)" → "Documentation (https://…)")."""

    def link(match: re.Match) -> str:
        said, address = match.group(1).strip(), match.group(2)
        return address if normalise(said) in ("", normalise(address)) else f"{said} ({address})"

    if "[" in text:
        text = LINK.sub(link, text)
    if "*" in text:
        text = ITALIC.sub(r"\1", BOLD.sub(r"\1", text))
    return text


def _continued(value: str, line: str) -> str:
    """A value with one more line: a list item after ", " (as a list is
    written on one line), its marker dropped; any other line after a space."""
    marker = LIST_ITEM.match(line)
    if marker:
        line = line[marker.end():]
    return f"{value}{', ' if marker else ' '}{line}" if value else line


def _is_label(label: str) -> bool:
    words = label.split()
    return (
        0 < len(words) <= MAX_LABEL_WORDS
        and any(c.isalpha() for c in label)  # "02/09/2016 : Mise en production" is an event, not a field
        and not label.lower().startswith(("http", "www."))
        and not any(c in label for c in "<>@|=[]{}")  # an address or markup, not a name
    )


# A field line marked up as one: a bold label.
MARKED_FIELD = re.compile(r"^(?:\*\*|__)")


def _grouping_headings(lines: list[str]) -> set[int]:
    """Indexes of the headings that group "Label: value" lines: two or more
    of them below, or one marked up ("**Statut:** …"). Under any other
    heading, a line that reads "GNU C Library: Shared libraries …" is the
    heading's text, not a field of its own; so are list items, whatever they
    look like: "- **Chef de projet** : MARTIN Julie" is one item of a list of
    contacts, "- **Production** : https://…" one of a list of sites."""
    groups, heading, fields, marked = set(), None, 0, False
    for number, line in enumerate([*lines, "# end"]):
        if HEADING.match(line):
            if heading is not None and (fields >= 2 or marked):
                groups.add(heading)
            heading, fields, marked = number, 0, False
        elif not LIST_ITEM.match(line) and (match := FIELD_LINE.match(line)) and _is_label(match.group("label")):
            fields += 1
            marked = marked or bool(MARKED_FIELD.match(line))
    return groups


def parse_fields(content: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(label, value) pairs of a chunk, and its lines that belong to no field.

    A `## Label` heading holds the text written below it, its list items
    joined by ", ", unless that text is "Label: value" lines the heading
    groups (`_grouping_headings`); a `Label: value` line holds its value,
    continued by unlabelled lines up to a blank line. Markdown is read as
    text (`plain_text`). A top-level `# Title` heading names the document,
    not a field."""
    pairs: list[list[str]] = []
    loose: list[str] = []
    current: list[str] | None = None  # the field that unlabelled lines continue
    under_heading = False  # current is a heading's field, still waiting for or collecting its text
    grouping = False  # current's heading groups "Label: value" lines
    lines = [raw.strip() for raw in content.splitlines()]
    groups = _grouping_headings(lines)
    for number, line in enumerate(lines):
        heading = HEADING.match(line)
        if heading:
            current, under_heading = None, False
            if len(heading.group(1)) > 1:
                current, under_heading = [heading.group(2).strip(" *_:"), ""], True
                pairs.append(current)
                grouping = number in groups
            continue
        if THEMATIC_BREAK.match(line):
            current, under_heading = None, False  # "---" ends any field's text, a heading's too
            continue
        if not line:
            if not under_heading:
                current = None
            continue
        match = FIELD_LINE.match(line)
        is_field = bool(match) and _is_label(match.group("label"))
        if under_heading and current is not None and not current[1] and is_field and grouping:
            pairs.remove(current)  # a heading over "Label: value" lines groups them
            under_heading = False
        if is_field and not under_heading:
            current = [match.group("label").strip(), match.group("value").strip()]
            pairs.append(current)
        elif current is not None:
            current[1] = _continued(current[1], line)
        else:
            loose.append(line)
    return [(label, plain_text(value)) for label, value in pairs if value], loose


# ---------------------------------------------------------------- documents


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    fields: tuple[tuple[str, str], ...]  # (label as written, value), in corpus order; the name line left out
    chunk_ids: tuple[str, ...]
    free_text: tuple[str, ...] = ()  # chunks (or their lines) that hold no field
    name_label: str = ""  # the label of the line that names the document ("Application"), if any


def documents(chunks: Sequence[Any]) -> list[Document]:
    """Chunks (corpus.Chunk) grouped into documents, in corpus order."""
    grouped: dict[str, list[Any]] = defaultdict(list)
    for chunk in chunks:
        grouped[chunk.doc_id].append(chunk)
    parsed = {doc_id: [parse_fields(chunk.content) for chunk in members] for doc_id, members in grouped.items()}
    name_labels = _name_labels(grouped, parsed)
    docs = []
    for doc_id, members in grouped.items():
        title = members[0].title
        fields: dict[tuple[str, ...], tuple[str, str]] = {}
        free: list[str] = []
        name_label = ""
        for chunk, (pairs, loose) in zip(members, parsed[doc_id]):
            for label, value in pairs:
                if label_key(label) in name_labels and normalise(value) == normalise(title) and (not name_label or label == name_label):
                    name_label = label  # "Application: Marégraphe", "Nom : SIRENA": the name, not a fact
                    continue
                fields.setdefault(label_key(label), (label, value))
            if loose and not pairs:
                free.append(chunk.content)
            elif loose:
                free.append("\n".join(loose))
        docs.append(Document(doc_id, title, tuple(fields.values()), tuple(c.id for c in members), tuple(free), name_label))
    return docs


# A label names the documents when more than this share of them give it their title as value.
NAME_LABEL_SHARE = 0.5


def _name_labels(grouped: dict[str, list[Any]], parsed: dict[str, list[tuple[list, list]]]) -> set[tuple[str, ...]]:
    """The labels (label_key) whose line names the document ("Application:
    Marégraphe" in every chunk): those more than NAME_LABEL_SHARE of the
    documents give their title. In a corpus without such lines, a package
    whose section is its own name ("Section: perl") keeps that fact."""
    naming: Counter = Counter()
    for doc_id, members in grouped.items():
        title = normalise(members[0].title)
        naming.update({label_key(label) for pairs, _ in parsed[doc_id] for label, value in pairs if normalise(value) == title})
    return {key for key, count in naming.items() if count > NAME_LABEL_SHARE * len(grouped)}


# ---------------------------------------------------------------- profile


@dataclass(frozen=True)
class FieldInfo:
    name: str  # the schema's field name when it knows the label, else the corpus's label
    labels: tuple[str, ...]  # the corpus's spellings first, then the schema's
    templates: tuple[str, ...] = ()  # the schema's templates (generic ones are added when asking)
    documents: int = 0  # how many documents have it; 0 for a schema field the corpus lacks
    alias: bool = False
    kind: str = ""  # what its values look like (VALUE_KINDS), "" when they share no kind
    # Short values several documents share ("optional", "En production"), for
    # a field of no kind (a category): a question that says one asks about it.
    shared_values: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.labels[0]


@dataclass(frozen=True)
class Profile:
    """What the platform understood of a corpus."""

    schema: str  # the schema (language pack) used: fr, en or a path
    language: str
    documents: int
    name_label: str
    fields: tuple[FieldInfo, ...]
    aliases: dict[str, list[str]] = field(default_factory=dict)  # doc id -> its other names
    # A document of the corpus asked about field by field: shown to the
    # untrained base model before the real question (predictor.Predictor).
    example: dict = field(default_factory=dict)
    # Word stems found in the values of many documents ("package", "région"):
    # a question saying them points to no detail of one sheet (focus.py).
    common_words: list[str] = field(default_factory=list)

    @functools.cached_property
    def _by_key(self) -> dict[tuple[str, ...], FieldInfo]:
        return {label_key(label): info for info in reversed(self.fields) for label in info.labels}

    def field_for_label(self, label: str) -> FieldInfo | None:
        return self._by_key.get(label_key(label))

    @property
    def corpus_fields(self) -> list[FieldInfo]:
        return [f for f in self.fields if f.documents]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fields"] = [asdict(f) for f in self.fields]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        fields = tuple(
            FieldInfo(
                f["name"], tuple(f["labels"]), tuple(f["templates"]), f["documents"], f.get("alias", False),
                f.get("kind", ""), tuple(f.get("shared_values", ())),
            )
            for f in data["fields"]
        )
        return cls(
            data["schema"], data["language"], data["documents"], data["name_label"], fields,
            dict(data.get("aliases", {})), dict(data.get("example", {})), list(data.get("common_words", [])),
        )


def build_profile(docs: Sequence[Document], schema_name: str = "auto") -> Profile:
    """Fields from the corpus (every label it uses), helped by the schema."""
    schema_name = resolve_schema(schema_name, (f"{label} {value}" for d in docs for label, value in d.fields))
    schema = cached_schema(schema_name)
    spellings: dict[str, Counter] = defaultdict(Counter)  # field name -> corpus labels
    holders: dict[str, set[str]] = defaultdict(set)
    values: dict[str, list[str]] = defaultdict(list)
    for doc in docs:
        for label, value in doc.fields:
            spec = schema.field_for_label(label)
            name = spec.name if spec else _corpus_field_name(label, spellings)
            spellings[name][label] += 1
            holders[name].add(doc.doc_id)
            values[name].append(value)
    kinds = {name: value_kind(vs) for name, vs in values.items()}
    if text := _text_field(values, kinds):
        kinds[text] = "text"
    kinds.update(dict.fromkeys(_identifier_fields(spellings, values, kinds, schema), "identifier"))
    fields = []
    for name, labels in spellings.items():
        spec = next((s for s in schema.fields if s.name == name), None)
        corpus_labels = [label for label, _ in labels.most_common()]
        extra = [label for label in (spec.labels if spec else ()) if label_key(label) not in {label_key(c) for c in corpus_labels}]
        fields.append(
            FieldInfo(
                name, tuple(corpus_labels + extra), spec.templates if spec else (), len(holders[name]),
                # A list's whole value may be a category too ("Finances, RH").
                bool(spec and spec.alias), kinds[name], () if kinds[name] not in ("", "list") else shared_values(values[name]),
            )
        )
    # Fields the schema knows and the corpus lacks stay in the profile, held
    # by no document: their wording counts as known words when questions
    # are spelt (names.Catalogue); the router's classes and inspect-corpus
    # are the corpus's own fields (`corpus_fields`).
    known = {f.name for f in fields}
    fields += [FieldInfo(s.name, s.labels, s.templates, 0, s.alias) for s in schema.fields if s.name not in known]
    name_labels = Counter(d.name_label for d in docs if d.name_label)
    aliases = {
        d.doc_id: [value for label, value in d.fields if _alias_field(fields, label) is not None]
        for d in docs
    }
    profile = Profile(
        schema=schema_name,
        language=schema.language,
        documents=len(docs),
        name_label=name_labels.most_common(1)[0][0] if name_labels else schema.name_label,
        fields=tuple(fields),
        aliases={doc_id: names for doc_id, names in aliases.items() if names},
    )
    return dataclasses.replace(profile, example=worked_example(docs, profile, schema), common_words=common_words(docs))


# A word in the values of at least this share of the documents says nothing
# about one of them.
COMMON_SHARE = 0.25


def common_words(docs: Sequence[Document]) -> list[str]:
    """Stems (first STEM letters) of the words in the values of COMMON_SHARE or more of the documents."""
    with_fields = [d for d in docs if d.fields]
    counts: Counter = Counter()
    for doc in with_fields:
        counts.update({w[:STEM] for _, value in doc.fields for w in normalise(value).split()})
    least = max(2, COMMON_SHARE * len(with_fields))
    return sorted(w for w, n in counts.items() if n >= least)


# A worked example asks about short values: long ones would cost prompt tokens
# on every question.
EXAMPLE_VALUE_CHARS = 80
EXAMPLE_ANSWERS = 4
REFUSAL_AT = 3  # the refusal comes between answers, never last (it would prime the next answer)


def worked_example(docs: Sequence[Document], profile: Profile, schema: Schema) -> dict:
    """Turns {question, answer, title, sheet}: the corpus's fullest document
    asked about some of its short fields (answered with the whole line, label
    first), and another document asked about a field it lacks (answered with
    the refusal). Empty when no document has a field."""
    candidates = [d for d in docs if d.fields]
    if not candidates:
        return {}
    doc = max(candidates, key=lambda d: len(d.fields))  # the first of the fullest

    def turn(document: Document, info: FieldInfo, answer: str) -> dict:
        question = field_questions(info, schema)[0].replace(DOC_PLACEHOLDER, document.title)
        return {"question": question, "answer": answer, "title": document.title, "sheet": render_sheet(document, profile.name_label)}

    turns = []
    for label, value in doc.fields:
        info = profile.field_for_label(label)
        # (A field with no question: a user's schema without generic templates.)
        if info is not None and not info.alias and len(value) <= EXAMPLE_VALUE_CHARS and field_questions(info, schema):
            turns.append(turn(doc, info, f"{label}{SEPARATOR}{value}"))
        if len(turns) == EXAMPLE_ANSWERS:
            break
    for other in candidates:
        has = {info.name for label, _ in other.fields if (info := profile.field_for_label(label)) is not None}
        lacking = [f for f in profile.corpus_fields if f.name not in has and not f.alias and field_questions(f, schema)]
        if lacking:
            turns.insert(min(REFUSAL_AT, len(turns)), turn(other, max(lacking, key=lambda f: f.documents), schema.unknown_answer))
            break
    return {"turns": turns}


def _corpus_field_name(label: str, seen: dict[str, Counter]) -> str:
    """A label the schema does not know names its own field; its variants join it."""
    key = label_key(label)
    return next((name for name, labels in seen.items() if any(label_key(l) == key for l in labels)), label)


def _alias_field(fields: list[FieldInfo], label: str) -> FieldInfo | None:
    key = label_key(label)
    return next((f for f in fields if f.alias and any(label_key(l) == key for l in f.labels)), None)


def render_sheet(doc: Document, name_label: str) -> str:
    """A document's fields as one sheet: its name line, then one line per field."""
    lines = [f"{doc.name_label or name_label}{SEPARATOR}{doc.title}"]
    lines += [f"{label}{SEPARATOR}{' '.join(value.split())}" for label, value in doc.fields]
    return "\n".join(lines)


def spoken_labels(info: FieldInfo) -> list[str]:
    """A field's labels as a question says them: lower case (acronyms kept),
    and "installed size" for "Installed-Size"."""
    spoken = []
    for label in info.labels:
        said = label if label.isupper() else label.lower()
        spoken += [said, " ".join(re.split(r"[-_]+", said))]
    return list(dict.fromkeys(spoken))


def field_questions(info: FieldInfo, schema: Schema) -> list[str]:
    """Every template that asks for a field, taken in turn so the first few
    hold both the schema's wording and the corpus's own label: the schema's
    (or, for a field it does not know, those of its values' kind) and the
    generic ones filled with each of its labels."""
    labels = spoken_labels(info)
    own = info.templates or tuple(
        t.replace(LABEL_PLACEHOLDER, labels[i % len(labels)]) for i, t in enumerate(schema.kind_templates.get(info.kind, ()))
    )
    generic = [t.replace(LABEL_PLACEHOLDER, label) for label in labels for t in schema.generic_templates]
    mixed = [t for pair in itertools.zip_longest(own, generic) for t in pair if t is not None]
    return list(dict.fromkeys(mixed))
