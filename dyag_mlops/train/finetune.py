"""Stage finetune: LoRA / QLoRA training with peft through trl's SFTTrainer.

    dyag finetune --dataset data/dataset_train.jsonl --val data/dataset_val.jsonl --output outputs/adapter

Examples are rendered by `prompts.render_turns` (the base model's chat
template, or the fallback saved with the adapter) and tokenised here, so the
prompt the model is trained on is byte for byte the one it gets at inference;
the loss covers the answers (every assistant turn) and their end-of-turn
tokens only (completion mask).
Checkpoints every `save_steps`; `--resume` continues from the latest one
(optimizer, scheduler, step and data order), also after a kill; the pipeline
resumes by itself an output left by the same parameters and code.
Under `accelerate launch --num_processes N` the Trainer trains data-parallel;
rank 0 alone writes the adapter, its manifest and the MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyag_mlops.config import FinetuneConfig, SystemSpec
from dyag_mlops.data.files import atomic_write_json, file_digest, read_jsonl
from dyag_mlops.errors import DyagError
from dyag_mlops.systems.predictor import ADAPTER_MANIFEST, check_base_matches, locate_adapter, log_system_model
from dyag_mlops.systems.prompts import render_turns
from dyag_mlops.tracking import MLFLOW_URI_PREFIXES, NullTracker, config_hash, download_mlflow_uri, git_commit, process_rank


@dataclass
class FinetuneResult:
    adapter_dir: str
    metrics: dict[str, float]
    model_uri: str | None
    history: list[dict]


def resolve_dataset(location: str) -> Path:
    """A local JSONL path for a file or a runs:/RUN_ID/path URI of a generate run."""
    if location.startswith(MLFLOW_URI_PREFIXES):
        return download_mlflow_uri(location, "dataset")
    path = Path(location)
    if not path.is_file():
        raise DyagError(f"{location}: dataset not found")
    return path


def load_examples(path: Path) -> list[list[dict]]:
    """Chat message lists; the file:line of the first malformed example is named."""
    examples = []
    for lineno, obj in read_jsonl(path):
        messages = obj.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str) for m in messages)
            or messages[-1]["role"] != "assistant"
            or not messages[-1]["content"].strip()
        ):
            raise DyagError(
                f"{path}:{lineno}: expected {{\"messages\": [...]}} with system/user/assistant turns, "
                "ending with a non-empty assistant turn"
            )
        examples.append(messages)
    if not examples:
        raise DyagError(f"{path}: the dataset is empty")
    return examples


def tokenize_examples(tokenizer: Any, examples: list[list[dict]], max_length: int, where: str) -> tuple[Any, int]:
    """(datasets.Dataset of input_ids + completion_mask, number truncated)."""
    from datasets import Dataset

    rows = {"input_ids": [], "completion_mask": []}
    truncated = 0
    for messages in examples:
        ids, mask = [], []
        carry = ""
        for prompt, completion in render_turns(tokenizer, messages):
            prompt = carry + prompt
            # trl appends EOS to a completion that does not end with it; the
            # template's newline after the end-of-turn token is moved out of
            # the answer (to the next turn's prompt, or dropped at the end) so
            # each answer ends exactly on EOS and nothing is added twice.
            carry = ""
            if tokenizer.eos_token and completion.rstrip("\n").endswith(tokenizer.eos_token):
                stripped = completion.rstrip("\n")
                carry, completion = completion[len(stripped):], stripped
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            ids += prompt_ids + completion_ids
            mask += [0] * len(prompt_ids) + [1] * len(completion_ids)
        if len(ids) > max_length:
            truncated += 1
        ids, mask = ids[:max_length], mask[:max_length]
        if sum(mask) == 0:
            continue  # the answer was cut off entirely: nothing to learn from it
        rows["input_ids"].append(ids)
        rows["completion_mask"].append(mask)
    if not rows["input_ids"]:
        raise DyagError(
            f"{where}: every example is longer than --max-length {max_length} before its answer starts; "
            "raise --max-length"
        )
    return Dataset.from_dict(rows), truncated


class TrackingCallback:
    """Forwards the Trainer's logs to our Tracker (the Trainer's own MLflow
    callback is off: it would log params that clash with ours)."""

    def __new__(cls, tracker: NullTracker, metric_prefix: str = ""):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self):
                self.history: list[dict] = []
                self._last = (time.perf_counter(), 0)

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = dict(logs or {})
                now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
                if "loss" in logs and tokens > self._last[1]:
                    logs["tokens_per_second"] = (tokens - self._last[1]) / max(now - self._last[0], 1e-9)
                    self._last = (now, tokens)
                numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}
                numeric.pop("epoch", None)
                if "train_loss" not in logs:
                    # The Trainer repeats its run-so-far time and rate in every
                    # step's log; they belong to the run's end (tokens_per_second
                    # above is the step's own rate).
                    for total in ("train_runtime", "train_tokens_per_second"):
                        numeric.pop(total, None)
                if numeric:
                    tracker.log_metrics({metric_prefix + k: v for k, v in numeric.items()}, step=state.global_step)
                    self.history.append({"step": state.global_step, "epoch": state.epoch, **numeric})

        return _Callback()


def check_output(config: FinetuneConfig) -> None:
    out = Path(config.output)
    if out.exists() and any(out.iterdir()) and not config.resume and not config.overwrite:
        raise DyagError(f"--output {out} is not empty (pass --resume to continue it or --overwrite to replace it)")


# In --output: the parameters and code its checkpoints come from.
TRAINING_MARK = "dyag_training.json"


def training_mark(config: FinetuneConfig) -> dict[str, str]:
    return {"config_hash": config_hash("finetune", config), "git_commit": git_commit()}


def prepare_output(config: FinetuneConfig) -> Path:
    check_output(config)
    out = Path(config.output)
    if out.exists() and any(out.iterdir()) and not config.resume and process_rank() == 0:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if process_rank() == 0:
        atomic_write_json(out / TRAINING_MARK, training_mark(config))
    return out


def resumed_if_interrupted(config: FinetuneConfig) -> FinetuneConfig:
    """`config` set to resume when its output was left by a training of the
    same parameters and code (a killed pipeline): the pipeline run again
    continues from the last checkpoint instead of starting over."""
    try:
        mark = json.loads((Path(config.output) / TRAINING_MARK).read_text())
    except (OSError, ValueError):
        return config
    same = mark == training_mark(config) and mark["git_commit"] != "unknown"
    return dataclasses.replace(config, resume=True, overwrite=False) if same else config


def latest_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None


def base_digest(source: str) -> str:
    """Identity of the base weights: file digest for a local directory, the Hub id otherwise."""
    weights = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    return ",".join(file_digest(w) for w in weights) if weights else f"hub:{source}"


def plot_loss(history: list[dict], path: Path) -> Any:
    # A Figure outside pyplot: nothing holds it once logged (no backend, no close).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    members = sorted({h.get("member", 0) for h in history})  # a soup's members are numbered from 1
    for member in members:
        name = f"member {member} " if member else ""
        train = [(h["step"], h["loss"]) for h in history if "loss" in h and h.get("member", 0) == member]
        val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and h.get("member", 0) == member]
        color = None
        if train:
            color = ax.plot(*zip(*train), label=f"{name}train loss")[0].get_color()
        if val:
            ax.plot(*zip(*val), "o-", color=color, label=f"{name}validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Fine-tuning loss")
    if any("loss" in h or "eval_loss" in h for h in history):
        ax.legend()
    else:  # a run shorter than --logging-steps logs no loss
        ax.text(0.5, 0.5, "no loss logged: fewer steps than --logging-steps", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def build_model(config: FinetuneConfig, device: str, precision: str) -> tuple[Any, Any, str]:
    """Base model wrapped with a trainable LoRA (new or continued) adapter."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from dyag_mlops.systems.models import attach_adapter, compile_layers, load_base_model, load_tokenizer

    base_name = config.base_model
    if config.init_adapter:
        init_dir = locate_adapter(config.init_adapter)
        check_base_matches(init_dir, base_name)
    # On a GPU the weights are loaded in the compute dtype; on a CPU they stay
    # fp32 and bf16 is autocast (Trainer bf16), as fast there and more exact.
    weights = precision if device == "cuda" else "fp32"
    model, tokenizer, source = load_base_model(base_name, device=device, quantize=config.quantize, precision=weights)
    # No key/value cache while training: transformers builds the block-diagonal
    # mask of packed examples (batch_size > 1) only without one.
    model.config.use_cache = False
    if config.quantize == "4bit":
        model = prepare_model_for_kbit_training(model)
    if config.init_adapter:
        model = attach_adapter(model, str(init_dir), base_name, is_trainable=True)
        tokenizer = load_tokenizer(str(init_dir))
    else:
        targets = config.target_modules
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
            use_dora=config.dora,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise DyagError(f"--target-modules {targets}: {exc}") from None
    if config.compile:
        compile_layers(model)
    return model, tokenizer, source


def score_only_answer_tokens_on_cpu() -> None:
    """trl's fused LM head scores every position on devices without Triton, to
    keep tile shapes fixed for compilers such as XLA; on CPU (eager, nothing to
    recompile) that is the ~260 prompt positions of a RAFT example for ~10
    answer tokens. Measured: training 1.22x faster, peak RSS 2.64 -> 2.12 GB,
    same losses (docs/performance.md). Only trl's choice of positions changes
    (the one use of `_use_triton` in trl.trainer.utils); its kernels keep
    their own torch path on CPU. A trl without that helper is left as it is."""
    import trl.trainer.utils as trl_utils

    choose = getattr(trl_utils, "_use_triton", None)
    if choose is None or getattr(choose, "dyag_cpu_compact", False):
        return

    def compact_on_cpu(device: Any) -> bool:
        return device.type == "cpu" or choose(device)

    compact_on_cpu.dyag_cpu_compact = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu


@dataclass
class TrainedAdapter:
    final: Path
    source: str  # where the base weights were loaded from
    metrics: dict[str, float]
    history: list[dict]
    resumed_from: str | None


HISTORY_FILE = "history.json"
# The examples of the val split eval_loss is measured on, and their batch.
EVAL_EXAMPLES = 32
EVAL_BATCH = 8


def run(config: FinetuneConfig, tracker: NullTracker = NullTracker()) -> FinetuneResult:
    from dyag_mlops.systems.models import detect_device, resolve_precision

    check_output(config)
    train_path = resolve_dataset(config.dataset)
    val_path = resolve_dataset(config.val) if config.val else None
    train_examples = load_examples(train_path)
    val_examples = load_examples(val_path) if val_path else None
    device = detect_device(config.device)
    if config.quantize == "4bit" and device != "cuda":
        raise DyagError("--quantize 4bit (QLoRA) needs a CUDA GPU; on CPU/MPS train without quantisation")
    precision = resolve_precision(config.precision, device)
    out = prepare_output(config)
    try:
        result = _train(config, tracker, out, (train_path, train_examples, val_path, val_examples), device, precision)
    except BaseException:
        if out.is_dir() and {p.name for p in out.iterdir()} <= {TRAINING_MARK}:
            shutil.rmtree(out)  # a failure before the first checkpoint leaves nothing behind
        raise
    leave_process_group()
    return result


def leave_process_group() -> None:
    """End this process's part in a data-parallel training (`accelerate
    launch`), once it succeeded: a process that exits with its gloo group
    alive can abort in the group's threads (SIGABRT), and the launcher then
    stops the other ranks. Not after a failure: the others may still wait
    on a collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train(config: FinetuneConfig, tracker: NullTracker, out: Path, datasets: tuple, device: str, precision: str) -> FinetuneResult:
    from dyag_mlops.systems.models import release_memory, torch_dtype

    train_path, _, val_path, _ = datasets
    tracker.log_dataset(train_path, context="train")
    if val_path:
        tracker.log_dataset(val_path, context="val")
    tracker.set_tags(
        {
            "dyag.base_model": config.base_model,
            "dyag.dtype": str(torch_dtype(precision)).replace("torch.", ""),
            # data-parallel processes: the effective batch is batch size x grad accum x this
            "dyag.processes": os.environ.get("WORLD_SIZE", "1"),
        }
    )

    if config.soup == 1:
        trained = train_adapter(config, datasets, device, precision, out, tracker)
        final, metrics, history = trained.final, trained.metrics, trained.history
    else:
        members = []
        for i in range(config.soup):
            member_out = out / f"member-{i + 1}"
            if config.resume and (member_out / "final" / ADAPTER_MANIFEST).is_file():
                members.append(finished_adapter(member_out))  # trained before an interruption
                continue
            member_config = dataclasses.replace(config, seed=config.seed + i, soup=1)
            members.append(train_adapter(member_config, datasets, device, precision, member_out, tracker, f"member_{i + 1}/"))
            release_memory()  # the member's model and optimizer, before the next member loads its own
        final = out / "final"
        if process_rank() == 0:
            average_adapters([m.final for m in members], final)
        metrics = {
            "train_loss": sum(m.metrics["train_loss"] for m in members) / len(members),
            "train_seconds": sum(m.metrics["train_seconds"] for m in members),
            "global_step": sum(m.metrics["global_step"] for m in members),
            "peak_memory_mb": max(m.metrics["peak_memory_mb"] for m in members),
        }
        tracker.log_metrics(metrics)  # each member's were logged with its own prefix
        for i, member in enumerate(members, 1):
            metrics.update({f"member_{i}/{k}": v for k, v in member.metrics.items()})
        resumed_from = next((m.resumed_from for m in members if m.resumed_from), None)
        if process_rank() == 0:
            write_manifest(final, config, members[0].source, datasets, metrics, resumed_from)
        history = [{**h, "member": i} for i, m in enumerate(members, 1) for h in m.history]

    if process_rank() > 0:  # rank 0 writes and logs what all ranks trained
        return FinetuneResult(str(final), metrics, None, history)
    fig = plot_loss(history, out / "loss_curve.png")
    tracker.log_figure(fig, "loss_curve.png")
    tracker.log_artifacts(final, "adapter")
    # The model references the adapter just logged: stored once, in this run.
    adapter = f"runs:/{tracker.run_id}/adapter" if tracker.run_id else str(final)
    model_uri = log_system_model(tracker, out, SystemSpec("finetuned", model=adapter, base_model=config.base_model))
    return FinetuneResult(str(final), metrics, model_uri, history)


def train_adapter(
    config: FinetuneConfig,
    datasets: tuple,
    device: str,
    precision: str,
    out: Path,
    tracker: NullTracker,
    metric_prefix: str = "",
) -> TrainedAdapter:
    """One LoRA adapter trained into out/ (checkpoints) and out/final/; its
    metrics are logged with `metric_prefix` (a soup member's)."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    train_path, train_examples, val_path, val_examples = datasets
    set_seed(config.seed)  # before the LoRA weights are initialised: same seed, same adapter
    model, tokenizer, source = build_model(config, device, precision)
    train_ds, truncated = tokenize_examples(tokenizer, train_examples, config.max_length, str(train_path))
    # eval_loss is a curve of four points, each on the same first examples of
    # the val split, in batches: the whole split at every point cost minutes.
    val_ds = tokenize_examples(tokenizer, val_examples[:EVAL_EXAMPLES], config.max_length, str(val_path))[0] if val_examples else None
    trainable, total = model.get_nb_trainable_parameters()
    sizes = {"train_examples": len(train_ds), "truncated_examples": truncated, "trainable_parameters": trainable, "total_parameters": total}
    tracker.log_metrics({metric_prefix + k: v for k, v in sizes.items()})

    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=EVAL_BATCH,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        # Four points of eval_loss: a curve in the UI beside the training loss,
        # for four passes over the val split.
        eval_strategy="steps" if val_ds is not None else "no",
        eval_steps=0.25,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # The fused AdamW updates all LoRA tensors in one kernel: the default
        # loops over them (on a CPU, 0.1-0.3 s per step for 420 small tensors).
        optim="paged_adamw_8bit" if config.quantize == "4bit" else "adamw_torch_fused",
        completion_only_loss=True,
        max_length=None,  # already truncated in tokenize_examples
        include_num_input_tokens_seen="non_padding",
        # The examples of a batch are packed into one sequence (position ids
        # restart at each; the attention mask is block-diagonal): no padding,
        # so no reason to group them by length, which trains worse than a
        # plain shuffle (docs/decisions/0004-training-defaults.md).
        padding_free=config.batch_size > 1,
        train_sampling_strategy="random",
        dataloader_num_workers=0,
        save_only_model=False,
        # trl turns gradient checkpointing on by default; for small models it
        # only trades compute for memory we do not need (3x slower steps on CPU).
        gradient_checkpointing=False,
    )
    callback = TrackingCallback(tracker, metric_prefix)
    if device == "cpu":
        score_only_answer_tokens_on_cpu()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    resume_from = latest_checkpoint(out) if config.resume else None
    if config.resume and resume_from is None:
        print(f"no checkpoint in {out}: starting from scratch", file=sys.stderr)
    began = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - began

    final = out / "final"
    trainer.save_model(str(final))  # on every rank (sharded trainings gather there); rank 0 writes
    if process_rank() == 0:
        tokenizer.save_pretrained(str(final))
    metrics = {
        "train_loss": float(train_output.training_loss),
        "train_seconds": seconds,
        "global_step": float(trainer.state.global_step),
        "peak_memory_mb": peak_memory_mb(device),
    }
    evals = [h["eval_loss"] for h in callback.history if "eval_loss" in h]
    if evals:
        metrics["final_eval_loss"] = evals[-1]
    if process_rank() == 0:
        atomic_write_json(out / HISTORY_FILE, callback.history)
        write_manifest(final, config, source, datasets, metrics, resume_from)
    tracker.log_metrics({metric_prefix + k: v for k, v in metrics.items()})
    return TrainedAdapter(final, source, metrics, callback.history, resume_from)


def training_metadata(train_path: Path, key: str) -> Any:
    """The one value of `key` in the metadata of a training set's examples,
    as generate-training records it (`focus`: whether RAFT sheets were
    narrowed; `schema`: the language pack of its prompts); None when no
    example records it (a user's dataset) or examples disagree."""
    found = {json.dumps(obj["metadata"][key]) for _, obj in read_jsonl(train_path) if key in obj.get("metadata", {})}
    return json.loads(found.pop()) if len(found) == 1 else None


def training_system_prompt(train_path: Path) -> str:
    """The system message of a chat training set when every example shares
    one (what an exported model is prompted with), else ''."""
    found = {
        m["content"] for _, obj in read_jsonl(train_path) for m in obj.get("messages", [])[:1] if m.get("role") == "system"
    }
    return found.pop() if len(found) == 1 else ""


def write_manifest(final: Path, config: FinetuneConfig, source: str, datasets: tuple, metrics: dict, resumed_from: str | None) -> None:
    train_path, _, val_path, _ = datasets
    manifest = {
        "base_model": config.base_model,
        "base_model_source": source,
        "base_model_digest": base_digest(source),
        "datasets": {"train": file_digest(train_path), **({"val": file_digest(val_path)} if val_path else {})},
        "config": {k: v for k, v in json.loads(json.dumps(config.__dict__)).items()},
        "metrics": metrics,
        "resumed_from": resumed_from,
        "focus": training_metadata(train_path, "focus"),
        "schema": training_metadata(train_path, "schema"),
        "system_prompt": training_system_prompt(train_path),
    }
    atomic_write_json(final / ADAPTER_MANIFEST, manifest)


def finished_adapter(out: Path) -> TrainedAdapter:
    """A soup member trained to the end by an earlier, interrupted run."""
    manifest = json.loads((out / "final" / ADAPTER_MANIFEST).read_text())
    history_file = out / HISTORY_FILE
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    return TrainedAdapter(out / "final", manifest["base_model_source"], manifest["metrics"], history, manifest["resumed_from"])


def average_adapters(members: list[Path], final: Path) -> None:
    """One LoRA adapter whose update is the mean of the members' updates (a
    uniform model soup): ranks concatenated, each member's A scaled by its
    alpha/r and 1/n, alpha set to the new rank. These are the tensors peft's
    `add_weighted_adapter(..., combination_type="cat")` makes, computed from
    the adapter files alone: peft's needs the base model loaded with every
    member in it (a test checks that both agree)."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [json.loads((m / "adapter_config.json").read_text()) for m in members]
    first = configs[0]
    for member, c in zip(members, configs):
        if c.get("use_dora") or c.get("rank_pattern") or c.get("alpha_pattern") or c.get("modules_to_save"):
            raise DyagError(f"{member}: only plain LoRA adapters (no DoRA, rank or alpha patterns, saved modules) can be averaged")
        if (c["r"], c["lora_alpha"], sorted(c["target_modules"])) != (first["r"], first["lora_alpha"], sorted(first["target_modules"])):
            raise DyagError(f"{member}: rank, alpha or target modules differ from {members[0]}; the adapters cannot be averaged")
    scaling = first["lora_alpha"] / (math.sqrt(first["r"]) if first.get("use_rslora") else first["r"])
    states = [load_file(str(m / "adapter_model.safetensors")) for m in members]
    averaged = {}
    for key in states[0]:
        parts = [state[key] for state in states]
        if ".lora_A." in key or ".lora_embedding_A" in key:
            averaged[key] = torch.cat([p * (scaling / len(parts)) for p in parts], dim=0).contiguous()
        elif ".lora_B." in key or ".lora_embedding_B" in key:
            averaged[key] = torch.cat(parts, dim=1).contiguous()
        else:
            raise DyagError(f"{members[0]}: {key} is not a LoRA A or B matrix; the adapters cannot be averaged")
    staging = final.with_name(final.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(members[0], staging)  # tokenizer and chat template
    (staging / ADAPTER_MANIFEST).unlink(missing_ok=True)  # the soup's own is written by run()
    rank = first["r"] * len(members)
    averaged_config = {**first, "r": rank, "lora_alpha": rank, "use_rslora": False}
    atomic_write_json(staging / "adapter_config.json", averaged_config)
    save_file(averaged, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
