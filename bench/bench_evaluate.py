"""Batched answering vs one question at a time.

    python bench/bench_evaluate.py --questions 48 --batch-size 8

Same model (smollm2:135m by default), same questions from the bundled
hand-written eval set, greedy decoding. Prints both throughputs, their ratio
(target >= 4x at batch 8) and how many answers are identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.data.evalset import load_eval_set  # noqa: E402
from dyag_mlops.systems.predictor import load_predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--base-model", default="smollm2:135m")
    args = parser.parse_args()
    questions = [i.question for i in load_eval_set("")[: args.questions]]
    predictor = load_predictor("base", base_model=args.base_model, max_new_tokens=args.max_new_tokens)
    predictor.answer(questions[:2])  # warm-up

    timings = {}
    answers = {}
    for label, batch_size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        predictor.batch_size = batch_size
        began = time.perf_counter()
        answers[label] = [a.text for a in predictor.answer(questions)]
        timings[label] = time.perf_counter() - began
    single, batched = timings.values()
    same = sum(a == b for a, b in zip(*answers.values()))
    for label, seconds in timings.items():
        print(f"{label:<16} {seconds:8.1f} s  {len(questions) / seconds:6.2f} questions/s")
    print(f"ratio batched/one-at-a-time: {single / batched:.2f}x   identical answers: {same}/{len(questions)}")


if __name__ == "__main__":
    main()
