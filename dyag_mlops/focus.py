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
1.5B model, which reads whole sheets, loses by it (rag 80.1 -> 70.8 %).

The classifier is a character n-gram logistic regression trained on the field
schema's question templates (the ones generate-training phrases questions
with), document name left out: no corpus, eval set or model is needed to build
it, and it takes under a second. Character n-grams keep it robust to typos and
missing accents. It names the asked field for 83 % of the hand-written set's
answerable questions; what it misses (questions on a detail of a description,
unusual wordings) is lost for rag and hybrid alike.

Chunks that are not sheets (free text: fewer than half of their lines carry a
label of the schema) pass through whole. Training (RAFT contexts), query and
evaluation all narrow through `narrow_hits`, so an adapter sees the prompt it
will be asked with.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from dyag_mlops.prompts import FIELD_SEPARATOR

# A chunk is a sheet when at least this share of its lines carries a label of the schema.
SHEET_SHARE = 0.5
DOC_PLACEHOLDER = "{doc}"


class FieldRouter:
    """Question -> the schema field it asks about; sheet -> that field's lines."""

    def __init__(self, schema: Any):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.schema = schema
        questions = [t.replace(DOC_PLACEHOLDER, "") for spec in schema.fields for t in spec.templates]
        fields = [spec.name for spec in schema.fields for _ in spec.templates]
        # Measured on the hand-written set: word n-grams 80 %, character
        # n-grams 83-84 %, whatever the regularisation (C 1-100).
        self.classifier = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, strip_accents="unicode"),
            LogisticRegression(C=10, max_iter=2000),
        ).fit(questions, fields)

    def fields(self, questions: Sequence[str]) -> list[str]:
        """The most likely field of each question."""
        return [str(f) for f in self.classifier.predict(list(questions))] if questions else []

    def narrow(self, content: str, field: str) -> str | None:
        """The lines of `content` labelled with `field` ("" if none), or None
        when `content` is not a sheet (keep it whole). A line without a
        "Label : " belongs to the labelled line above it (a value written on
        several lines)."""
        entries: list[tuple[Any, list[str]]] = []  # (field spec or None, lines)
        for line in content.strip().splitlines():
            label, separator, _ = line.partition(FIELD_SEPARATOR)
            if separator or not entries:
                entries.append((self.schema.field_for_label(label.strip()) if separator else None, [line]))
            else:
                entries[-1][1].append(line)
        if not entries or sum(spec is not None for spec, _ in entries) < SHEET_SHARE * len(entries):
            return None
        return "\n".join(line for spec, lines in entries if spec is not None and spec.name == field for line in lines)


@functools.lru_cache(maxsize=4)
def field_router(schema_name: str) -> FieldRouter:
    """The router of a schema (fr, en or a path), built once per process."""
    from dyag_mlops.generate import load_schema

    return FieldRouter(load_schema(schema_name))


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
    for field, found in zip(router.fields(questions), hits):
        narrowed = []
        for hit in found:
            content = router.narrow(hit.content, field)
            narrowed.append(hit if content is None else dataclasses.replace(hit, chunk_id=f"{hit.chunk_id}#{field}", content=content))
        result.append(narrowed)
    return result
