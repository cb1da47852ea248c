"""Eval sets: hand-written questions with their expected answers, as chat
examples (`messages`) or flat rows (`question`, `expected_answer`), the
bundled demo halves, and cutting a set into a dev and a test half."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dyag_mlops.data.files import atomic_write_chunks, jsonl_lines, read_jsonl, refuse_overwrite
from dyag_mlops.errors import DyagError


def split_messages(messages: Sequence[dict]) -> tuple[str, str]:
    """(question, expected answer) of a chat example: last user turn, last assistant turn."""
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    answer = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), "")
    return question, answer


# The labels of an eval row, at its top level or in its metadata, by which
# `correct` is also reported: dyag's `category` and `difficulty`, this
# project's `kind` and `field`.
LABEL_KEYS = ("category", "difficulty", "kind", "field")


@dataclass(frozen=True)
class EvalItem:
    question: str
    expected: str
    doc_id: str | None
    lineno: int
    labels: tuple[tuple[str, str], ...] = ()  # (LABEL_KEYS key, value) of each label the row carries


def demo_eval_path(half: str = "test") -> Path:
    """The bundled hand-written questions on the demo corpus: the dev half
    (tune on it) or the test half (report it)."""
    from importlib import resources

    return Path(str(resources.files("dyag_mlops") / "resources" / f"demo_eval_{half}.jsonl"))


def split_eval_set(path: str | Path, output_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """An eval set cut into a dev half and a test half, stratified by kind
    (`metadata.kind`, or dyag's top-level `category`): within each kind,
    questions in a fixed pseudo-random order (a hash of the question)
    alternate between the halves. Writes STEM_dev.jsonl and STEM_test.jsonl."""
    import hashlib
    import json

    path = Path(path)
    rows = [obj for _, obj in read_jsonl(path)]
    load_eval_set(path)  # the same checks as evaluation
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        kind = (row.get("metadata") or {}).get("kind", row.get("kind", row.get("category", "")))
        by_kind.setdefault(str(kind), []).append(row)
    halves: dict[str, list[dict]] = {"dev": [], "test": []}
    for kind in sorted(by_kind):
        ordered = sorted(by_kind[kind], key=lambda r: hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest())
        for n, row in enumerate(ordered):
            halves["dev" if n % 2 == 0 else "test"].append(row)
    stem = path.stem.removesuffix("_handwritten").removesuffix("_all")
    outputs = {half: Path(output_dir) / f"{stem}_{half}.jsonl" for half in halves}
    refuse_overwrite(list(outputs.values()), overwrite)
    for half, chosen in halves.items():
        order = {id(r): i for i, r in enumerate(rows)}
        atomic_write_chunks(outputs[half], jsonl_lines(sorted(chosen, key=lambda r: order[id(r)])))
    return outputs


def load_eval_set(path: str | Path) -> list[EvalItem]:
    """Chat `messages` or {question, expected_answer} (aliases query, answer)."""
    path = Path(path) if path else demo_eval_path()
    items = []
    for lineno, obj in read_jsonl(path):
        meta = obj.get("metadata") or {}
        if "messages" in obj:
            if not isinstance(obj["messages"], list):
                raise DyagError(f"{path}:{lineno}: 'messages' must be a list")
            question, expected = split_messages(obj["messages"])
        else:
            question = obj.get("question", obj.get("query", ""))
            expected = obj.get("expected_answer", obj.get("answer", ""))
        if not isinstance(question, str) or not question.strip():
            raise DyagError(f"{path}:{lineno}: no question (need messages with a user turn, or 'question'/'query')")
        if not isinstance(expected, str) or not expected.strip():
            raise DyagError(f"{path}:{lineno}: empty expected answer (need an assistant turn, or 'expected_answer'/'answer')")
        # dyag's eval files name the document as `app_id` at the top level.
        doc_id = meta.get("doc_id", obj.get("doc_id", obj.get("app_id")))
        labels = tuple(
            (key, str(value).strip())
            for key in LABEL_KEYS
            for value in [obj.get(key, meta.get(key))]
            if isinstance(value, (str, int)) and str(value).strip()
        )
        items.append(EvalItem(question.strip(), expected.strip(), None if doc_id is None else str(doc_id), lineno, labels))
    if not items:
        raise DyagError(f"{path}: no usable question in the eval file")
    return items
