"""Training throughput: `dyag finetune` vs a plain trl SFTTrainer script.

    python bench/bench_finetune.py --steps 12 --warmup 4 [--raft]

Same base model (smollm2:135m), data (the demo corpus's rule-based train
split; `--raft`: examples with a retrieved sheet in the prompt, what the
pipeline trains on), LoRA (r=16, alpha=32, all-linear), batch, learning rate,
seed and steps, each run in its own forked process (its own peak RSS). The
plain script is what a user writes from trl's documentation, in fp32 without
gradient checkpointing (`--trl-defaults`: trl's own bf16 autocast and
checkpointing instead). Steady-state tokens/s between step `warmup` and the
last; prints both and the ratio dyag / plain (target >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops import finetune, generate, rag  # noqa: E402
from dyag_mlops.config import FinetuneConfig, GenerateConfig, IndexConfig  # noqa: E402


def steady_callback(warmup: int):
    from transformers import TrainerCallback

    class Steady(TrainerCallback):
        start = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = (time.perf_counter(), state.num_input_tokens_seen)
            self.end = (time.perf_counter(), state.num_input_tokens_seen)

        def tokens_per_second(self) -> float:
            return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])

    return Steady()


def plain_trl(train: Path, out: Path, steps: int, warmup: int, batch: int, accum: int, lora_dropout: float, trl_defaults: bool) -> float:
    """The plain trl way, straight from its documentation."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from dyag_mlops.models import load_base_model

    model, tokenizer, _ = load_base_model("smollm2:135m", precision="fp32")  # what from_pretrained gives
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    steady = steady_callback(warmup)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, learning_rate=5e-4,
            lr_scheduler_type="cosine", report_to="none", use_cpu=True, save_strategy="no", seed=42,
            include_num_input_tokens_seen="non_padding", logging_steps=1000,
            **({} if trl_defaults else {"bf16": False, "gradient_checkpointing": False}),
        ),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[steady],
    )
    trainer.train()
    return steady.tokens_per_second()


def dyag(train: Path, out: Path, steps: int, warmup: int, batch: int, accum: int, precision: str) -> float:
    from transformers import Trainer

    steady = steady_callback(warmup)
    original = Trainer.__init__

    def with_steady(self, *a, **kw):  # add the measuring callback, change nothing else
        kw["callbacks"] = list(kw.get("callbacks") or []) + [steady]
        original(self, *a, **kw)

    Trainer.__init__ = with_steady
    try:
        # epochs chosen so that the run lasts `steps` optimizer steps
        n = sum(1 for _ in train.open())
        finetune.run(FinetuneConfig(
            dataset=str(train), output=str(out), epochs=steps * batch * accum / n, batch_size=batch, grad_accum=accum,
            save_steps=10**6, logging_steps=1000, precision=precision,
        ))
    finally:
        Trainer.__init__ = original
    return steady.tokens_per_second()


def _measured(queue, fn, args) -> None:
    value = fn(*args)
    queue.put((value, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def in_child(fn, *args) -> tuple[float, float]:
    """Run fn in a fresh process: (its return value, its peak RSS in MB)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh: nothing inherited from this process
    queue = ctx.Queue()
    child = ctx.Process(target=_measured, args=(queue, fn, args))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    parser.add_argument("--raft", action="store_true", help="context-grounded examples (the pipeline's)")
    parser.add_argument("--plain-lora-dropout", type=float, default=0.0, help="0.0 as dyag; trl docs often use 0.05")
    parser.add_argument("--precision", default="fp32", help="dyag's --precision (fp32: the same as the plain run; auto: bf16 on CPUs with native bf16)")
    parser.add_argument("--trl-defaults", action="store_true", help="plain run with trl's bf16 and gradient checkpointing defaults")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        context = ""
        if args.raft:
            context = str(tmp / "index")
            rag.run(IndexConfig(index=context))
        files = generate.run(GenerateConfig(output=str(tmp / "qa.jsonl"), with_context=context, context_k=1, count=400 if args.raft else 0)).files
        train = Path(files["train"])
        ours, ours_rss = in_child(dyag, train, tmp / "dyag", args.steps, args.warmup, args.batch_size, args.grad_accum, args.precision)
        plain, plain_rss = in_child(
            plain_trl, train, tmp / "plain", args.steps, args.warmup, args.batch_size, args.grad_accum,
            args.plain_lora_dropout, args.trl_defaults,
        )
    setting = f"batch {args.batch_size} x accumulation {args.grad_accum}, {'RAFT' if args.raft else 'closed-book'} examples, dyag --precision {args.precision}"
    print(f"{setting}; steady state = steps {args.warmup}-{args.steps}")
    print(f"plain trl SFTTrainer : {plain:7.1f} tokens/s   peak RSS {plain_rss:6.0f} MB")
    print(f"dyag finetune        : {ours:7.1f} tokens/s   peak RSS {ours_rss:6.0f} MB")
    print(f"ratio dyag / plain   : {ours / plain:7.2f}x")


if __name__ == "__main__":
    main()
