"""How often retrieval and narrowing hand the model the asked field, per corpus.

    HF_HUB_OFFLINE=1 python bench/bench_fields.py [--half dev|test] [--json out.json]

For each evaluation corpus (the demo, corpora/debian, corpora/pydist) an
index is built in a temporary directory with the default settings, and each
question of the chosen half (dev by default: tune on it) is spelled,
retrieved (top 1) and narrowed (focus.narrow_hits), as rag and hybrid do. Counted: answerable
questions whose context is the right document, keeps the asked field, and
holds the expected answer; unanswerable questions whose context is empty (the
only grounded answer is then the refusal). No model generates anything: this
isolates what the retriever and the router decide.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CORPORA = {
    "demo": ("", "dyag_mlops/resources/demo_eval_{half}.jsonl"),
    "debian": ("corpora/debian/corpus.jsonl", "corpora/debian/eval_{half}.jsonl"),
    "pydist": ("corpora/pydist/corpus_md", "corpora/pydist/eval_{half}.jsonl"),
}


from dyag_mlops.config import IndexConfig  # noqa: E402


def measure(corpus: str, eval_file: Path, workdir: Path, show_misses: bool = False) -> dict:
    from dyag_mlops.data.text import normalise
    from dyag_mlops.evaluation.evaluate import says_unknown
    from dyag_mlops.retrieval import rag
    from dyag_mlops.retrieval.focus import narrow_hits

    index = workdir / "index"
    rag.run(IndexConfig(corpus=str(ROOT / corpus) if corpus else "", index=str(index)))
    rows = [json.loads(line) for line in eval_file.read_text("utf-8").splitlines() if line.strip()]
    counts = dict.fromkeys(("answerable", "right_document", "field_kept", "answer_in_context", "unanswerable", "empty_context"), 0)
    with rag.Retriever(str(index)) as retriever:
        questions = [retriever.spelled(r["question"]) for r in rows]
        narrowed = narrow_hits(retriever.router, questions, retriever.retrieve(questions, top_k=1))
        for row, found in zip(rows, narrowed):
            meta = row.get("metadata") or {}
            context = " ".join(h.content for h in found)
            kept = ", ".join(h.chunk_id.rsplit("#", 1)[-1] for h in found) or "-"
            if says_unknown(row["expected_answer"]):
                counts["unanswerable"] += 1
                counts["empty_context"] += not context.strip()
                if show_misses and context.strip():
                    print(f"  not refused: {row['question']!r} kept {kept}")
                continue
            counts["answerable"] += 1
            if not found or found[0].doc_id != meta.get("doc_id"):
                if show_misses:
                    got = found[0].doc_id if found else "nothing"
                    print(f"  wrong document: {row['question']!r} got {got}, wanted {meta.get('doc_id')}")
                continue
            counts["right_document"] += 1
            info = retriever.profile.field_for_label(meta.get("field") or "") or next(
                (f for f in retriever.profile.fields if f.name == meta.get("field")), None
            )
            counts["field_kept"] += info is not None and found[0].chunk_id.endswith(f"#{info.name}")
            in_context = normalise(row["expected_answer"]) in normalise(context)
            counts["answer_in_context"] += in_context
            if show_misses and not in_context:
                print(f"  answer lost: {row['question']!r} ({meta.get('field')}) kept {kept}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=("dev", "test"), default="dev")
    parser.add_argument("--json", default="")
    parser.add_argument("--misses", action="store_true", help="print the dev half's misses (never the test half's)")
    parser.add_argument("--corpus", choices=sorted(CORPORA), action="append", help="only these corpora")
    args = parser.parse_args()
    if args.misses and args.half != "dev":
        parser.error("--misses reads the dev half only: the test half's misses must not shape the rules")
    results = {}
    for name, (corpus, eval_pattern) in CORPORA.items():
        if args.corpus and name not in args.corpus:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if args.misses:
                print(f"== {name}")
            results[name] = measure(corpus, ROOT / eval_pattern.format(half=args.half), Path(tmp), args.misses)
    columns = list(next(iter(results.values())))
    print(f"{args.half} half: " + " ".join(f"{c:>17}" for c in ["corpus"] + columns))
    for name, r in results.items():
        print(f"{'':>{len(args.half) + 7}}{name:>17} " + " ".join(f"{r[c]:>17}" for c in columns))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
