"""Answering in bf16 vs fp32 on this machine's CPU.

    python bench/bench_precision.py --questions 48

Answering: the rag system (bundled index built in a temporary directory, top-1
sheet, worked example, grounded decoding: the pipeline's longest prompts) on
the first N questions of the bundled hand-written set, once with fp32 weights
and once with bf16 weights, same batch size (training in both precisions:
bench_finetune.py --dyag-fp32 and bench_train_loop.py). Prints each figure,
the ratio bf16 / fp32 and how many answers are identical. `--precision auto` picks bf16
only where `cpu_has_native_bf16()` is true: on a CPU without it bf16 is
emulated and far slower, which this benchmark shows too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.config import IndexConfig  # noqa: E402
from dyag_mlops.data.evalset import load_eval_set  # noqa: E402
from dyag_mlops.retrieval import rag  # noqa: E402
from dyag_mlops.systems.models import cpu_has_native_bf16  # noqa: E402


def answer_all(index: str, questions: list[str], precision: str, batch_size: int) -> tuple[float, list[str]]:
    from dyag_mlops.systems.predictor import load_predictor

    predictor = load_predictor(
        "rag", index=index, top_k=1, batch_size=batch_size, max_new_tokens=48, grounded=True, worked_example=True,
        precision=precision,
    )
    predictor.answer(questions[:2])  # warm-up
    began = time.perf_counter()
    answers = predictor.answer(questions)
    return time.perf_counter() - began, [a.text for a in answers]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    questions = [i.question for i in load_eval_set("")[: args.questions]]
    print(f"CPU with native bf16 (avx512_bf16 or AMX): {cpu_has_native_bf16()}")
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        rag.run(IndexConfig(index=index))
        seconds, answers = {}, {}
        for precision in ("fp32", "bf16"):
            seconds[precision], answers[precision] = answer_all(index, questions, precision, args.batch_size)
        same = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))
        print(f"rag answering, {len(questions)} questions, batch {args.batch_size}:")
        for precision in ("fp32", "bf16"):
            print(f"  {precision}: {seconds[precision]:6.1f} s  ({len(questions) / seconds[precision]:.2f} questions/s)")
        print(f"  ratio bf16 / fp32 speed: {seconds['fp32'] / seconds['bf16']:.2f}x; identical answers {same}/{len(questions)}")


if __name__ == "__main__":
    main()
