#!/usr/bin/env python3
"""Validate eval_dev.jsonl + eval_test.jsonl + eval_fresh.jsonl + eval_fresh2.jsonl + eval_fresh3.jsonl + eval_fresh4.jsonl against corpus_md/ and print counts by kind and field."""
import json
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
docs = {p.stem: p.read_text(encoding="utf-8") for p in (HERE / "corpus_md").glob("*.md")}
KINDS = {"paraphrase", "informal", "typo", "alias", "unanswerable"}
problems, kinds, fields, per_doc, seen = [], Counter(), Counter(), Counter(), set()

for n, line in enumerate("".join((HERE / f"eval_{h}.jsonl").read_text(encoding="utf-8") for h in ("dev", "test", "fresh", "fresh2", "fresh3", "fresh4")).splitlines(), 1):
    try:
        rec = json.loads(line)
        q, a, md = rec["question"], rec["expected_answer"], rec["metadata"]
        doc, field, kind = md["doc_id"], md["field"], md["kind"]
    except Exception as e:  # noqa: BLE001
        problems.append(f"line {n}: does not parse ({e})")
        continue
    if q.lower() in seen:
        problems.append(f"line {n}: duplicate question")
    seen.add(q.lower())
    if kind not in KINDS:
        problems.append(f"line {n}: unknown kind {kind!r}")
    kinds[kind] += 1
    fields[field] += 1
    if doc is not None and doc not in docs:
        problems.append(f"line {n}: doc_id {doc!r} not in corpus")
        continue
    per_doc[doc] += 1
    if kind == "unanswerable":
        if a != "I don't know" or field is not None:
            problems.append(f"line {n}: unanswerable needs answer \"I don't know\" and field null")
        continue
    if doc is None or field is None:
        problems.append(f"line {n}: answerable question needs doc_id and field")
        continue
    text = docs[doc]
    if a not in text:
        problems.append(f"line {n}: answer not verbatim in {doc}.md")
    elif f"- **{field}**: {a}\n" not in text:
        problems.append(f"line {n}: answer is not the whole value of {field} in {doc}.md")

total = sum(kinds.values())
print(f"{total} questions, {len(per_doc)} distinct doc_ids (incl. None) of {len(docs)} docs")
print("by kind:", dict(sorted(kinds.items())))
print("by field:", {str(k): v for k, v in sorted(fields.items(), key=lambda kv: str(kv[0]))})
print("docs never asked about:", sorted(set(docs) - set(per_doc)) or "none")
print("problems:", len(problems))
for p in problems:
    print("  ", p)
