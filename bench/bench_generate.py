"""Benchmark of generate-training (rule-based and augmented) on a large corpus.

    python bench/bench_generate.py --chunks 10000

Target: a 10,000-chunk corpus in under 10 s on one core. Baseline: the
10 s budget itself, so the ratio printed is
budget / measured (>= 1.0 meets it). Runs pinned to one core where possible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_rag import make_corpus  # noqa: E402

from dyag_mlops.config import GenerateConfig  # noqa: E402
from dyag_mlops.train import generate  # noqa: E402

BUDGET_SECONDS = 10.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make_corpus(args.chunks)), encoding="utf-8")
        print(f"{'method':<12} {'chunks':>7} {'examples':>9} {'seconds':>8} {'budget/measured':>16}")
        for method in ("rule-based", "augmented"):
            began = time.perf_counter()
            result = generate.run(GenerateConfig(corpus=str(corpus), method=method, output=f"{tmp}/{method}.jsonl"))
            seconds = time.perf_counter() - began
            print(f"{method:<12} {args.chunks:>7} {result.counts['examples_total']:>9} {seconds:>8.2f} {BUDGET_SECONDS / seconds:>16.2f}")


if __name__ == "__main__":
    main()
