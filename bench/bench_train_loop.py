"""Where training time goes: a bare loop, no Trainer.

    python bench/bench_train_loop.py [--steps 10] [--examples-per-pass 1 4] [--no-compile-runs]

The pipeline's model and LoRA (`finetune.build_model`, compilation off or
on), the demo pipeline's RAFT examples (generated here), forward with the
labels of the answer tokens, backward, fused AdamW. Each setting (fp32 or
bf16 autocast, eager or blocks compiled, N examples packed per pass) runs in
a fresh process; prints the first steps' seconds (compilation) and the
steady tokens/s after 3 steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_finetune import in_child, pipeline_examples  # noqa: E402

from dyag_mlops.config import FinetuneConfig  # noqa: E402
from dyag_mlops.train import finetune  # noqa: E402

WARMUP = 3


def loop(train: Path, precision: str, compiled: bool, per_pass: int, steps: int) -> dict:
    import torch

    model, tokenizer, _ = finetune.build_model(FinetuneConfig(compile=compiled), "cpu", "fp32")
    examples = finetune.load_examples(train)[: per_pass * (steps + WARMUP)]
    data, _ = finetune.tokenize_examples(tokenizer, examples, 512, str(train))
    rows = list(zip(data["input_ids"], data["completion_mask"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    model.train()
    times, tokens = [], 0
    for start in range(0, len(rows), per_pass):
        packed = rows[start : start + per_pass]  # one sequence, positions restarting at each example
        ids = torch.tensor([[t for i, _ in packed for t in i]])
        positions = torch.tensor([[p for i, _ in packed for p in range(len(i))]])
        labels = torch.tensor([[t if m else -100 for i, mask in packed for t, m in zip(i, mask)]])
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, position_ids=positions, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - began)
        if len(times) > WARMUP:
            tokens += ids.shape[1]
    return {"first": times[:WARMUP], "tokens_per_second": tokens / sum(times[WARMUP:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="steady steps measured after the first 3")
    parser.add_argument("--examples-per-pass", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-compile-runs", action="store_true", help="eager settings only")
    args = parser.parse_args()
    settings = [(p, c) for c in ([False] if args.no_compile_runs else [False, True]) for p in ("fp32", "bf16")]
    with tempfile.TemporaryDirectory() as tmp:
        train, _ = pipeline_examples(Path(tmp), 10**6)
        for per_pass in args.examples_per_pass:
            for precision, compiled in settings:
                r = in_child(loop, train, precision, compiled, per_pass, args.steps)
                first = ", ".join(f"{t:.1f}" for t in r["first"])
                print(f"{precision:5} {'compiled' if compiled else 'eager':9} {per_pass} per pass: "
                      f"first steps {first} s, steady {r['tokens_per_second']:.1f} tokens/s")


if __name__ == "__main__":
    main()
