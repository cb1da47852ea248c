"""Grounded answering with drafted span tokens checked several per pass
(grounding.decode_spans) against generate with SpanConstraint, one token a
pass, in one process.

    python bench/bench_spans.py --workdir outputs/measure-demo --eval-file F [--systems rag,hybrid] [--rounds 2]

A pipeline's workdir gives the index and the adapter; each system answers
the eval file's questions both ways, alternately, `--rounds` times after a
warm-up batch. Prints the answering seconds of each way, the forward passes
of the decoder, and how many answers are identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True, help="a pipeline workdir (rag_index/, adapter/)")
    parser.add_argument("--eval-file", required=True)
    parser.add_argument("--systems", default="rag,hybrid")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from dyag_mlops.config import EvaluateConfig
    from dyag_mlops.data.evalset import load_eval_set
    from dyag_mlops.systems import grounding
    from dyag_mlops.systems.predictor import load_predictor

    work = Path(args.workdir)
    questions = [item.question for item in load_eval_set(Path(args.eval_file))]
    checked = grounding.decode_spans
    for system in args.systems.split(","):
        config = EvaluateConfig(
            eval_file=args.eval_file, system=system, top_k=1, index=str(work / "rag_index"),
            model=str(work / "adapter" / "final") if system == "hybrid" else "",
        )
        predictor = load_predictor(config.system_spec())
        passes: list[int] = []
        predictor.model.get_decoder().register_forward_hook(lambda *_: passes.append(1))
        predictor.answer(questions[:8])  # loads what the first batch loads
        seconds: dict[str, list[float]] = {"one token a pass": [], "drafts checked": []}
        answers: dict[str, list[str]] = {}
        counted: dict[str, int] = {}
        for _ in range(args.rounds):
            for way in seconds:
                grounding.decode_spans = checked if way == "drafts checked" else (lambda *a, **k: None)
                passes.clear()
                began = time.perf_counter()
                answers[way] = [a.text for a in predictor.answer(questions)]
                seconds[way].append(time.perf_counter() - began)
                counted[way] = len(passes)
        grounding.decode_spans = checked
        same = sum(a == b for a, b in zip(*answers.values()))
        for way, times in seconds.items():
            print(f"{system:<7} {way:<17} {' / '.join(f'{t:5.1f}' for t in times)} s   {counted[way]:4d} passes")
        print(f"{system:<7} identical answers {same}/{len(questions)}", flush=True)


if __name__ == "__main__":
    main()
