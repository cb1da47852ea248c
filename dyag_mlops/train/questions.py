"""Facts of a corpus and the training questions asked about them.

A fact is one field of one document; rule-based questions ask it with its
field's templates (augmented: every template and every name of the
document, and two fields asked together); `hurried` rewrites a question as
people type it. Examples are kept as columns (`Examples`): on a large corpus
building millions of example dicts would be most of generate-training's time.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from dyag_mlops.config import GenerateConfig
from dyag_mlops.data.evalset import split_messages
from dyag_mlops.data.files import jsonl_lines
from dyag_mlops.data.inventory import SEPARATOR, Document, Profile, Schema, field_questions
from dyag_mlops.data.text import normalise, strip_accents
from dyag_mlops.systems.prompts import build_messages



# ---------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    doc_id: str
    title: str
    field: str
    label: str
    value: str
    chunk_id: str

    @functools.cached_property
    def key(self) -> str:
        # Cached: one string shared by every phrasing of the fact, hashed once.
        return f"{self.doc_id}::{self.field}"


def extract_facts(docs: list[Document], profile: Profile) -> list[Fact]:
    """One fact per (document, field) of the corpus; a document is its sheet (chunk id = its id)."""
    facts: dict[str, Fact] = {}
    for doc in docs:
        for label, value in doc.fields:
            info = profile.field_for_label(label)
            if info is not None:
                fact = Fact(doc.doc_id, doc.title, info.name, label, value, doc.doc_id)
                facts.setdefault(fact.key, fact)
    return list(facts.values())


def missing_facts(facts: list[Fact], docs: list[Document], profile: Profile, unknown_answer: str) -> list[Fact]:
    """For each document, the corpus's fields it lacks: answered with the
    refusal, so a model learns to admit it rather than invent."""
    present = {f.key for f in facts}
    unknown = []
    for doc in docs:
        if not doc.fields:
            continue
        for info in profile.corpus_fields:
            if f"{doc.doc_id}::{info.name}" not in present:
                unknown.append(Fact(doc.doc_id, doc.title, info.name, info.label, unknown_answer, doc.doc_id))
    return unknown


# ---------------------------------------------------------------- examples


def make_metadata(fact: Fact, method: str, fact_id: str | None = None) -> dict:
    return {
        "doc_id": fact.doc_id,
        "title": fact.title,
        "field": fact.field,
        "method": method,
        "chunk_id": fact.chunk_id,
        "fact_id": fact_id or fact.key,
    }


def make_example(question: str, answer: str, fact: Fact, method: str, schema: Schema, fact_id: str | None = None) -> dict:
    return {"messages": build_messages(question, answer=answer, schema=schema), "metadata": make_metadata(fact, method, fact_id)}


@dataclass
class Examples:
    """Generated examples as columns. The phrasings of one fact share its
    answer and metadata (a *group*), so an example is a question and a group
    number: on a large corpus, building, shuffling and serialising millions
    of example dicts would be most of the time. `example(i)` gives the usual
    dict, in the language of `schema`."""

    schema: Schema
    questions: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # each question normalised: the dedupe key
    group_of: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # per group
    metadata: list[dict] = field(default_factory=list)  # per group; shared, so read-only
    _tails: list[bytes | None] = field(default_factory=list, repr=False)  # per group: see jsonl()

    def add(self, questions: list[str], keys: list[str], answer: str, metadata: dict) -> None:
        """The phrasings of one fact."""
        self.group_of += [len(self.answers)] * len(questions)
        self.answers.append(answer)
        self.metadata.append(metadata)
        self.questions += questions
        self.keys += keys

    @classmethod
    def from_dicts(cls, rows: list[dict], schema: Schema) -> Examples:
        examples = cls(schema)
        for row in rows:
            question, answer = split_messages(row["messages"])
            examples.add([question], [normalise(question)], answer, row["metadata"])
        return examples

    def __len__(self) -> int:
        return len(self.questions)

    def example(self, i: int) -> dict:
        group = self.group_of[i]
        return {
            "messages": build_messages(self.questions[i], answer=self.answers[group], schema=self.schema),
            "metadata": self.metadata[group],
        }

    def codes(self, keys: tuple[str, ...], positions: list[int]) -> list[tuple[Any, list[str]]]:
        """For each key: each example's metadata[key] as codes (numpy array)
        into a list of the distinct values."""
        import numpy as np

        groups = np.asarray(self.group_of, dtype=np.int64)[positions]
        coded = []
        for key in keys:
            index: dict[str, int] = {}
            group_codes = np.array([index.setdefault(m[key], len(index)) for m in self.metadata], dtype=np.int64)
            coded.append((group_codes[groups], list(index)))
        return coded

    def jsonl(self, positions: Iterable[int]) -> Iterator[bytes]:
        """The JSON line of each example at `positions`, byte for byte what
        `files.jsonl_lines` writes for `example(i)`, without building it: an
        example serialised with markers in place of its question, answer and
        metadata gives the text around them, and a line is that text with the
        three serialised in their places (answer and metadata once per group)."""
        import orjson

        dumps = orjson.dumps
        marked = {
            "messages": build_messages(_MARK["question"], answer=_MARK["answer"], schema=self.schema),
            "metadata": _MARK["metadata"],
        }
        pieces = _split_on(dumps(marked) + b"\n", [dumps(_MARK[k]) for k in ("question", "answer", "metadata")])
        if pieces is None:  # a system prompt holding a marker: the plain way
            yield from jsonl_lines([self.example(i) for i in positions])
            return
        head, between, before_metadata, end = pieces
        if len(self._tails) != len(self.answers):
            self._tails = [None] * len(self.answers)
        tails, questions, group_of = self._tails, self.questions, self.group_of
        for i in positions:
            group = group_of[i]
            tail = tails[group]
            if tail is None:
                tail = tails[group] = between + dumps(self.answers[group]) + before_metadata + dumps(self.metadata[group]) + end
            yield head + dumps(questions[i]) + tail


# Strings no data holds, serialised in place of an example's question, answer
# and metadata to cut its JSON line into the text around them.
_MARK = {k: f"\x00dyag-{k}\x00" for k in ("question", "answer", "metadata")}


def _split_on(text: bytes, separators: list[bytes]) -> list[bytes] | None:
    """text cut at each separator in turn; None unless each occurs exactly once, in order."""
    pieces = []
    for sep in separators:
        if text.count(sep) != 1:
            return None
        piece, _, text = text.partition(sep)
        pieces.append(piece)
    return pieces + [text]


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


@functools.lru_cache(maxsize=4096)
def _template_parts(template: str) -> tuple[str, str, str, str] | None:
    """(text before {doc}, text after, and the same normalised, with the
    space that joins them to a name) when {doc} appears once and stands alone
    (no letter or digit touching it). Then a question is before + name +
    after, and its normalised form is the normalised parts around the
    normalised name: millions of questions need not be normalised one by
    one. None when that shortcut would not be exact."""
    before, sep, after = template.partition("{doc}")
    if not sep or "{doc}" in after:
        return None
    if (before and _is_word_char(before[-1])) or (after and _is_word_char(after[0])):
        return None
    key_before, key_after = normalise(before), normalise(after)
    return before, after, key_before + " " if key_before else "", " " + key_after if key_after else ""


def question_key(template: str, name: str, normalised_name: str) -> str:
    """normalise(template with {doc} replaced by name), computed from parts."""
    parts = _template_parts(template)
    if parts is None or not normalised_name:
        return normalise(template.replace("{doc}", name))
    return parts[2] + normalised_name + parts[3]


def rule_based_examples(
    facts: list[Fact], profile: Profile, schema: Schema, *, augmented: bool, phrasings: int = GenerateConfig.phrasings
) -> Examples:
    """Each fact asked with the first `phrasings` templates of its field
    (rule-based), or all of them (augmented, which also names each document
    by its aliases)."""
    method = "augmented" if augmented else "rule-based"
    examples = Examples(schema)
    every = {info.name: field_questions(info, schema) for info in profile.fields}
    templates_of = {name: templates if augmented else templates[:phrasings] for name, templates in every.items()}
    parts_of = {name: [_template_parts(t) for t in templates] for name, templates in templates_of.items()}
    names_of: dict[tuple[str, str], list[tuple[str, str]]] = {}  # a document's names serve all its facts
    for fact in facts:
        templates, parts = templates_of[fact.field], parts_of[fact.field]
        names = names_of.get((fact.doc_id, fact.title))
        if names is None:
            raw = [fact.title]
            if augmented:
                # Not the lowercased title as well: its questions normalise to the
                # title's, so dedupe would drop every one of them.
                raw += profile.aliases.get(fact.doc_id, [])
            names = names_of[(fact.doc_id, fact.title)] = [(name, normalise(name)) for name in dict.fromkeys(raw)]
        questions: list[str] = []
        keys: list[str] = []
        for name, normalised_name in names:
            if normalised_name and None not in parts:
                questions += [p[0] + name + p[1] for p in parts]  # type: ignore[index]
                keys += [p[2] + normalised_name + p[3] for p in parts]  # type: ignore[index]
            else:
                questions += [t.replace("{doc}", name) for t in templates]
                keys += [question_key(t, name, normalised_name) for t in templates]
        examples.add(questions, keys, fact.value, make_metadata(fact, method))
    if augmented:
        add_combined_examples(examples, facts, schema, every)
    return examples


def add_combined_examples(examples: Examples, facts: list[Fact], schema: Schema, templates: dict[str, list[str]]) -> None:
    """Two questions about one document asked together (the pairs of fields
    the schema names as `combined_with`), answered field by field."""
    by_key = {f.key: f for f in facts}
    normalised_titles: dict[str, str] = {}
    for fact in facts:
        spec = next((s for s in schema.fields if s.name == fact.field), None)
        if spec is None or fact.value == schema.unknown_answer:
            continue
        for other_name in spec.combined_with:
            other = by_key.get(f"{fact.doc_id}::{other_name}")
            if other is None or other.value == schema.unknown_answer:
                continue
            if fact.title not in normalised_titles:
                normalised_titles[fact.title] = normalise(fact.title)
            name = normalised_titles[fact.title]
            questions, keys = [], []
            for first, second in zip(templates[fact.field][:2], templates[other_name][:2]):
                questions.append(f"{first.replace('{doc}', fact.title)} {second.replace('{doc}', fact.title)}")
                # normalise() works character by character and joins words with
                # single spaces, so two questions joined by a space normalise
                # to their keys joined by a space (when neither is empty).
                halves = question_key(first, fact.title, name), question_key(second, fact.title, name)
                keys.append(" ".join(halves) if all(halves) else normalise(questions[-1]))
            answer = f"{fact.label}{SEPARATOR}{fact.value} ; {other.label}{SEPARATOR}{other.value}"
            metadata = make_metadata(fact, "augmented", f"{fact.key}+{other_name}")
            examples.add(questions, keys, answer, metadata)


def first_occurrences(keys: list[str]) -> list[int]:
    """Positions of the first example of each distinct key (dedupe), in order."""
    if len(set(keys)) == len(keys):  # the usual case, and the cheapest test
        return list(range(len(keys)))
    # dict(zip(...)) runs in C: later keys overwrite earlier ones, so going
    # backwards leaves each key with its first position.
    return sorted(dict(zip(reversed(keys), range(len(keys) - 1, -1, -1))).values())


def hurried(question: str, rng: random.Random) -> str:
    """The question as people type it in a hurry: mostly lowercase, often
    without accents or the final question mark, sometimes a typo (a letter
    dropped, doubled or swapped with the next in a word of five or more).
    At least one of these where one changes something; the words and their
    order stay."""
    for _attempt in range(8):  # bounded: a question may offer nothing to change
        text = question
        if rng.random() < 0.7:
            text = text.lower()
        if rng.random() < 0.4:
            text = strip_accents(text)
        if rng.random() < 0.5:
            text = text.rstrip(" ?")
        if rng.random() < 0.4:
            text = _typo(text, rng)
        if text != question:
            break
    return text


def _typo(text: str, rng: random.Random) -> str:
    words = [(m.start(), m.end()) for m in re.finditer(r"[^\W\d_]{5,}", text)]
    if not words:
        return text
    start, end = rng.choice(words)
    at = rng.randrange(start + 1, end - 1)  # never the first or last letter
    kind = rng.randrange(3)
    if kind == 0:
        return text[:at] + text[at + 1 :]
    if kind == 1:
        return text[:at] + text[at] + text[at:]
    return text[:at] + text[at + 1] + text[at] + text[at + 2 :]
