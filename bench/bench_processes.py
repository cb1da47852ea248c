"""Data-parallel training on CPU: one process against `accelerate launch
--num_processes 2` (gloo, one thread per process), at the same effective batch.

    python bench/bench_processes.py [--examples 96] [--val 8]

Same base model (smollm2:135m), RAFT examples of the demo corpus (what the
pipeline trains on), seed and optimizer steps: one process at batch 1 x
accumulation 8, two at batch 1 x accumulation 4 each; eager blocks in both. Prints each run's
training seconds, tokens/s and final validation loss, and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dyag_mlops.config import GenerateConfig, IndexConfig  # noqa: E402
from dyag_mlops.retrieval import rag  # noqa: E402
from dyag_mlops.systems.models import load_tokenizer, resolve  # noqa: E402
from dyag_mlops.train import generate  # noqa: E402


def train(launch: list[str], train_file: Path, val_file: Path, out: Path, grad_accum: int, env: dict) -> dict:
    cmd = launch + [
        "-m", "dyag_mlops.cli", "finetune", "--dataset", str(train_file), "--val", str(val_file), "--output", str(out),
        "--epochs", "1", "--batch-size", "1", "--grad-accum", str(grad_accum), "--logging-steps", "1", "--save-steps", "1000",
        # Eager blocks: on 12 steps a one-off compilation would outweigh what is compared, the split over processes.
        "--no-compile",
    ]
    began = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = json.loads((out / "final" / "dyag_manifest.json").read_text())
    return {**manifest["metrics"], "wall_seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=96, help="training examples (effective batch 8: examples/8 steps)")
    parser.add_argument("--val", type=int, default=8, help="validation examples")
    args = parser.parse_args()
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        rag.run(IndexConfig(index=str(tmp / "index")))
        files = generate.run(GenerateConfig(output=str(tmp / "qa.jsonl"), with_context=str(tmp / "index"), context_k=1, count=400)).files
        rows = Path(files["train"]).read_text("utf-8").splitlines()
        train_file, val_file = tmp / "train.jsonl", tmp / "val.jsonl"
        train_file.write_text("\n".join(rows[: args.examples]) + "\n", "utf-8")
        val_file.write_text("\n".join(rows[-args.val :]) + "\n", "utf-8")
        tokenizer = load_tokenizer(resolve("smollm2:135m"))
        tokens = sum(
            len(tokenizer(tokenizer.apply_chat_template(json.loads(r)["messages"], tokenize=False), add_special_tokens=False)["input_ids"])
            for r in rows[: args.examples]
        )
        python = [sys.executable]
        one = train(python, train_file, val_file, tmp / "one", 8, env)
        two = train(python + ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"], train_file, val_file, tmp / "two", 4, env)
    print(f"{args.examples} RAFT examples (~{tokens} tokens), effective batch 8, {int(one['global_step'])} optimizer steps, smollm2:135m, CPU")
    for name, m in (("1 process  (batch 1 x accum 8)", one), ("2 processes (batch 1 x accum 4)", two)):
        print(f"{name}: train {m['train_seconds']:6.1f} s  {tokens / m['train_seconds']:6.1f} tokens/s  "
              f"final val loss {m.get('final_eval_loss', float('nan')):.4f}  (wall {m['wall_seconds']:.0f} s)")
    print(f"speed ratio 2 / 1 processes: {one['train_seconds'] / two['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()
