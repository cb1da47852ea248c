"""Benchmark of index-rag and the Retriever on a synthetic corpus.

    HF_HUB_OFFLINE=1 python bench/bench_rag.py --chunks 10000 --json outputs/bench_rag.json

Builds N generated application sheets (French-ish, one chunk each) in a temp
directory, indexes them with the bundled MiniLM (chunks/s), re-indexes the
unchanged corpus (everything reused), then times 200 single-question
retrievals (p50/p95) with each ranking (dense, fused, lexical: the
default), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.config import RANKINGS, IndexConfig  # noqa: E402
from dyag_mlops.retrieval import embeddings  # noqa: E402
from dyag_mlops.retrieval import rag  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ra", "tel", "vo", "ne", "sy", "bar", "quo", "pi", "dra", "zen", "fu", "ori", "gal"]
STATUS = ["En production", "En recette", "En développement", "Décommissionné"]
HOSTING = ["Datacenter Lyon-Gerland", "Cloud interministériel Nubo", "Datacenter Clermont", "SaaS éditeur"]
TECH = ["Java/Spring Boot", "Python/Django", "PHP/Symfony", ".NET Core", "Node.js", "Go", "COBOL"]
DOMAINS = ["Environnement", "Transports", "Lycées", "Finances", "Culture", "Agriculture", "Santé", "Tourisme"]
DIRECTIONS = ["Direction des Finances", "Direction du Numérique", "Direction des Lycées", "Direction des Mobilités"]
FIRST = ["Marie", "Karim", "Sophie", "Luc", "Nadia", "Paul", "Inès", "Hugo"]
LAST = ["Dupont", "Benali", "Lemoine", "Martin", "Garcia", "Roux", "Faure", "Blanc"]
QUESTIONS = [
    ("Quel est le statut de {name} ?", "status"),
    ("Où est hébergé {name} ?", "hosting"),
    ("Quelle technologie utilise {name} ?", "tech"),
    ("Qui contacter pour {name} ?", "contacts"),
    ("Quelle application de la {moa} gère {domain_lower} ({number}) ?", "unnamed"),
]


def make_corpus(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).upper() + f"-{i}"
        domain = rng.choice(DOMAINS)
        first, last = rng.choice(FIRST), rng.choice(LAST)
        content = "\n".join(
            [
                f"Nom : {name}",
                f"Nom complet : Système de gestion {domain.lower()} numéro {i}",
                f"Statut : {rng.choice(STATUS)}",
                f"Hébergement : {rng.choice(HOSTING)}",
                f"Technologie principale : {rng.choice(TECH)}",
                f"Domaines métier : {domain}, {rng.choice(DOMAINS)}",
                f"Description : {name} permet aux agents de suivre les dossiers {domain.lower()} "
                f"de la Région, de produire des tableaux de bord et d'échanger avec les partenaires.",
                f"MOA : {rng.choice(DIRECTIONS)}",
                f"Contacts : {first} {last} ({first.lower()}.{last.lower()}@region-exemple.fr)",
                f"Date de mise en service : {rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2005, 2024)}",
            ]
        )
        rows.append({"id": f"app-{i:05d}", "content": content, "metadata": {"id": f"app-{i:05d}", "nom": name}})
    return rows


def make_questions(rows: list[dict], n: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = rng.choice(rows)
        fields = dict(line.split(" : ", 1) for line in row["content"].splitlines())
        template, _ = rng.choice(QUESTIONS)
        domain = fields["Domaines métier"].split(",")[0]
        question = template.format(
            name=row["metadata"]["nom"], moa=fields["MOA"], domain_lower=domain.lower(), number=row["id"][4:].lstrip("0")
        )
        out.append((question, row["id"]))
    return out


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def time_queries(retriever: rag.Retriever, questions: list[tuple[str, str]], top_k: int) -> dict:
    retriever.retrieve(["échauffement"], top_k)  # first call pays one-off costs
    latencies, hits = [], []
    for question, _ in questions:
        start = time.perf_counter()
        hits.append(retriever.retrieve([question], top_k)[0])
        latencies.append((time.perf_counter() - start) * 1000)
    metrics = rag.retrieval_metrics(hits, [doc for _, doc in questions], top_k)
    return {
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_ms": statistics.fmean(latencies),
        **metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", default="", help="Write the figures to this JSON file.")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="bench_rag_") as tmp:
        rows = make_corpus(args.chunks)
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        config = IndexConfig(corpus=str(corpus), index=str(Path(tmp) / "index"))

        start = time.perf_counter()
        embeddings.load_embedder(config.embedding_model)
        model_load_s = time.perf_counter() - start
        build = rag.run(config)
        rebuild = rag.run(config)

        questions = make_questions(rows, args.questions)
        opened, timed = {}, {}
        for ranking in RANKINGS:
            start = time.perf_counter()
            retriever = rag.Retriever(config.index, ranking=ranking)
            opened[ranking] = time.perf_counter() - start
            timed[ranking] = time_queries(retriever, questions, args.top_k)
            retriever.close()
        index_mb = sum(f.stat().st_size for f in Path(config.index).rglob("*") if f.is_file()) / 1e6

    figures = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "python": platform.python_version(),
        },
        "chunks": build.chunks_total,
        "model_load_s": model_load_s,
        "index_s": build.seconds,
        "index_chunks_per_s": build.chunks_embedded / build.seconds,
        "reindex_unchanged_s": rebuild.seconds,
        "index_size_mb": index_mb,
        "retriever_open_s": opened,
        "questions": len(questions),
        "top_k": args.top_k,
        **timed,
    }
    print()
    print(f"corpus: {build.chunks_total} chunks, machine: {figures['machine']}")
    print(f"{'index build':<28}{build.seconds:>9.1f} s  ({figures['index_chunks_per_s']:.1f} chunks/s)")
    print(f"{'re-index, unchanged':<28}{rebuild.seconds:>9.1f} s")
    print(f"{'index size':<28}{index_mb:>9.1f} MB")
    print(f"{'':<20}{'open s':>9}{'p50 ms':>9}{'p95 ms':>9}{'recall@k':>10}{'mrr':>7}")
    for ranking, row in timed.items():
        print(
            f"{ranking:<20}{opened[ranking]:>9.2f}"
            f"{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row.get('recall_at_k', 0):>10.3f}{row.get('mrr', 0):>7.3f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
