"""Whether a corpus's layout changes what rag answers.

    HF_HUB_OFFLINE=1 python bench/bench_layouts.py [--corpus PATH] [--eval-file EVAL]

The corpus (the demo by default) is written again, document by document, in
dyag's other layouts: one field per chunk (`Application: <name>` then
`Label: value`, `metadata.id` naming the document), one Markdown sheet per
document (`# Name`, then `## Label` headings with the value below), and
sheets the way dyag's parkjson2md writes them (short values as
`**Label:** value` lines under the title, lists as `- item` lines under their
heading, the rest under `## Label`), and a JSON file of records (one object
per document, `"Label": value`, lists as JSON lists). Each layout is indexed
with the default settings and answers the eval file (the demo's dev half by
default) with rag, as the pipeline does, in one process: the model loads
once. Prints each layout's `correct` and how many of its answers are those
of the corpus as given, case and punctuation aside.
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


def write_layouts(corpus: str, folder: Path) -> dict[str, str]:
    """The corpus as given, as one field per chunk and as Markdown sheets: layout -> path."""
    from dyag_mlops.data.corpus import load_corpus
    from dyag_mlops.data.inventory import documents

    docs = documents(load_corpus(corpus))
    chunks = folder / "one_field_per_chunk.jsonl"
    with open(chunks, "w", encoding="utf-8") as out:
        for doc in docs:
            for k, (label, value) in enumerate(doc.fields):
                row = {"id": f"chunk_{doc.doc_id}_{k}", "content": f"Application: {doc.title}\n{label}: {value}",
                       "metadata": {"id": doc.doc_id, "nom": doc.title}}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    sheets = folder / "markdown"
    sheets.mkdir()
    for doc in docs:
        body = "".join(f"## {label}\n\n{value}\n\n" for label, value in doc.fields)
        (sheets / f"{doc.doc_id}.md").write_text(f"# {doc.title}\n\n{body}", encoding="utf-8")
    parkjson = folder / "parkjson2md"
    parkjson.mkdir()
    for doc in docs:
        (parkjson / f"{doc.doc_id}.md").write_text(parkjson2md_sheet(doc.title, doc.fields), encoding="utf-8")
    records = folder / "records.json"
    records.write_text(json.dumps([json_record(doc.name_label or "name", doc.title, doc.fields) for doc in docs], ensure_ascii=False), encoding="utf-8")
    return {"as given": corpus, "one field per chunk": str(chunks), "markdown sheets": str(sheets),
            "parkjson2md sheets": str(parkjson), "JSON records": str(records)}


def list_items(value: str) -> list[str]:
    """A value's items when it is a comma-separated list of short ones, else []."""
    items = value.split(", ")
    return items if len(items) > 1 and all(len(item.split()) <= 6 and ". " not in item for item in items) else []


def json_record(name_label: str, title: str, fields: tuple[tuple[str, str], ...]) -> dict:
    """A sheet as a JSON record: its name, then a key per field, lists as JSON lists."""
    return {name_label: title, **{label: list_items(value) or value for label, value in fields}}


def parkjson2md_sheet(title: str, fields: tuple[tuple[str, str], ...]) -> str:
    """A sheet as dyag's parkjson2md lays one out: values of four words or
    fewer as bold label lines, comma-separated lists of short items as list
    items under their heading, any other value under its heading."""
    head, sections = [f"# {title}", ""], []
    for label, value in fields:
        items = list_items(value)
        if len(value.split()) <= 4 and ", " not in value:
            head.append(f"**{label}:** {value}")
        elif items:
            sections += [f"## {label}", "", *(f"- {item}" for item in items), ""]
        else:
            sections += [f"## {label}", "", value, ""]
    return "\n".join([*head, "", *sections])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="", help="a corpus (empty: the bundled demo)")
    parser.add_argument("--eval-file", default=str(ROOT / "dyag_mlops/resources/demo_eval_dev.jsonl"))
    args = parser.parse_args()

    import mlflow

    from dyag_mlops.config import EvaluateConfig, IndexConfig, PipelineConfig
    from dyag_mlops.data.text import normalise
    from dyag_mlops.evaluation import evaluate
    from dyag_mlops.retrieval import rag
    from dyag_mlops.systems.predictor import load_predictor

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        answers: dict[str, list[str]] = {}
        predictor = None
        for layout, corpus in write_layouts(args.corpus, folder).items():
            index = folder / f"index-{len(answers)}"
            rag.run(IndexConfig(corpus=corpus, index=str(index)))
            config = EvaluateConfig(eval_file=args.eval_file, system="rag", index=str(index), top_k=PipelineConfig.top_k,
                                    output=str(folder / f"results-{len(answers)}.json"))
            predictor = load_predictor(config.system_spec(), model_from=predictor)  # the model loads once
            rows = evaluate.run(config, predictor=predictor).rows
            answers[layout] = [r["generated_answer"] for r in rows]
            same = sum(normalise(a) == normalise(b) for a, b in zip(answers[layout], next(iter(answers.values()))))
            correct = sum(r["correct"] for r in rows) / len(rows)
            print(f"RESULT {layout:<20} correct {100 * correct:5.1f} %  same answers as given {same}/{len(rows)}", flush=True)


if __name__ == "__main__":
    main()
