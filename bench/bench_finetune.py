"""Training speed: `dyag finetune` against plain trl, in one run.

    python bench/bench_finetune.py [--examples 160] [--batch-size 4] [--no-trl-defaults] [--dyag-fp32]

The first `--examples` RAFT examples of the pipeline's training set on the
demo corpus, one epoch, the same examples per step, learning rate, LoRA
(r=16, alpha=32, all-linear) and seed, each run in a fresh process: plain
trl's `SFTTrainer` as its documentation shows it, in fp32 and with trl's own
defaults (bf16 autocast, gradient checkpointing), and `finetune.run` with
the pipeline's settings. Each reports training time, non-padding tokens per
second, peak RSS and the loss on the same 32 validation examples, computed
the same way for all (the speed-up must not cost quality), then the ratio
of the faster plain run's time to dyag's.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.config import FinetuneConfig, GenerateConfig, IndexConfig, PipelineConfig  # noqa: E402
from dyag_mlops.retrieval import rag  # noqa: E402
from dyag_mlops.train import finetune  # noqa: E402
from dyag_mlops.train import generate  # noqa: E402

PIPELINE = PipelineConfig()
VAL_EXAMPLES = 32


def validation_loss(model, tokenizer, val: Path) -> float:
    """Mean loss per answer token on the first VAL_EXAMPLES of `val`, in fp32,
    one example at a time: the same measure for every run."""
    import torch

    examples = finetune.load_examples(val)[:VAL_EXAMPLES]
    data, _ = finetune.tokenize_examples(tokenizer, examples, PIPELINE.max_length, str(val))
    model = model.float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in zip(data["input_ids"], data["completion_mask"]):
            labels = [t if m else -100 for t, m in zip(ids, mask)]
            answer_tokens = sum(mask[1:])  # the first token is never predicted
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            total, count = total + float(loss) * answer_tokens, count + answer_tokens
    return total / count


def plain_trl(train: Path, val: Path, out: Path, batch: int, trl_defaults: bool) -> dict:
    """The plain trl way, straight from its documentation."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from dyag_mlops.systems.models import load_base_model

    model, tokenizer, _ = load_base_model(PIPELINE.base_model, precision="fp32")  # what from_pretrained gives
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
            learning_rate=PIPELINE.lr, lr_scheduler_type="cosine", report_to="none", use_cpu=True, save_strategy="no",
            seed=42, include_num_input_tokens_seen="non_padding", logging_steps=1000,
            **({} if trl_defaults else {"bf16": False, "gradient_checkpointing": False}),
        ),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "tokens": trainer.state.num_input_tokens_seen, "steps": trainer.state.global_step,
            "val_loss": validation_loss(trainer.model, tokenizer, val)}


def dyag(train: Path, val: Path, out: Path, batch: int, precision: str) -> dict:
    from peft import PeftModel
    from transformers import Trainer

    from dyag_mlops.systems.models import load_base_model

    seen = {}
    original = Trainer.train

    def counting(self, *a, **kw):  # read the token count, change nothing else
        result = original(self, *a, **kw)
        seen["tokens"] = self.state.num_input_tokens_seen
        return result

    Trainer.train = counting
    try:
        result = finetune.run(FinetuneConfig(
            dataset=str(train), output=str(out), base_model=PIPELINE.base_model, epochs=1, batch_size=batch,
            grad_accum=PIPELINE.grad_accum, lr=PIPELINE.lr, max_length=PIPELINE.max_length,
            precision=precision, save_steps=10**6,
        ))
    finally:
        Trainer.train = original
    base, tokenizer, _ = load_base_model(PIPELINE.base_model, precision="fp32")
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    return {"seconds": result.metrics["train_seconds"], "tokens": seen["tokens"], "steps": result.metrics["global_step"],
            "val_loss": validation_loss(model, tokenizer, val)}


def _measured(queue, fn, args) -> None:
    value = fn(*args)
    queue.put({**value, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def in_child(fn, *args) -> dict:
    """Run fn in a fresh process: its figures and its peak RSS."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh: nothing inherited from this process
    queue = ctx.Queue()
    child = ctx.Process(target=_measured, args=(queue, fn, args))
    child.start()
    result = queue.get()
    child.join()
    return result


def pipeline_examples(tmp: Path, examples: int) -> tuple[Path, Path]:
    """The first `examples` of the pipeline's training set on the demo corpus, and its val split."""
    index = str(tmp / "index")
    rag.run(IndexConfig(index=index))
    files = generate.run(GenerateConfig(
        output=str(tmp / "qa.jsonl"), count=PIPELINE.count, with_context=index, context_k=PIPELINE.top_k,
        focus=PIPELINE.focus, questions_per_example=PIPELINE.questions_per_example,
    )).files
    train = tmp / "train.jsonl"
    train.write_text("".join(Path(files["train"]).read_text().splitlines(keepends=True)[:examples]))
    return train, Path(files["val"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=160, help="training examples (one epoch)")
    parser.add_argument("--batch-size", type=int, default=PIPELINE.batch_size, help="examples per optimizer step, all runs")
    parser.add_argument("--no-trl-defaults", action="store_true",
                        help="skip the run with trl's bf16 + gradient checkpointing (minutes per step on a CPU without native bf16)")
    parser.add_argument("--dyag-fp32", action="store_true", help="also dyag in fp32 (what --precision auto gains)")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, val = pipeline_examples(tmp, args.examples)
        runs["plain trl, fp32"] = in_child(plain_trl, train, val, tmp / "plain", args.batch_size, False)
        if not args.no_trl_defaults:
            runs["plain trl, its defaults (bf16 autocast, gradient checkpointing)"] = in_child(
                plain_trl, train, val, tmp / "defaults", args.batch_size, True)
        if args.dyag_fp32:
            runs["dyag finetune, fp32"] = in_child(dyag, train, val, tmp / "dyag-fp32", args.batch_size, "fp32")
        runs["dyag finetune (pipeline settings)"] = in_child(dyag, train, val, tmp / "dyag", args.batch_size, PIPELINE.precision)
    print(f"{args.examples} RAFT examples of the demo corpus, one epoch, {args.batch_size} examples per optimizer step")
    print(f"{'run':66} {'train s':>8} {'tokens/s':>9} {'steps':>6} {'val loss':>9} {'peak RSS MB':>12}")
    for name, r in runs.items():
        print(f"{name:66} {r['seconds']:8.1f} {r['tokens'] / r['seconds']:9.1f} {r['steps']:6.0f} {r['val_loss']:9.4f} {r['peak_rss_mb']:12.0f}")
    ours = runs["dyag finetune (pipeline settings)"]
    fastest = min((r for name, r in runs.items() if name.startswith("plain")), key=lambda r: r["seconds"])
    print(f"ratio dyag / faster plain run: {fastest['seconds'] / ours['seconds']:.2f}x (training time of the same examples)")


if __name__ == "__main__":
    main()
