import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from dyag_mlops.config import FinetuneConfig
from dyag_mlops.data.files import file_digest
from dyag_mlops.data.inventory import cached_schema
from dyag_mlops.errors import DyagError
from dyag_mlops.systems.predictor import load_predictor
from dyag_mlops.systems.prompts import build_messages
from dyag_mlops.tracking import config_hash
from dyag_mlops.train import finetune

FR = cached_schema("fr")
FACTS = [
    ("Quel est le statut de SIRENA ?", "En production"),
    ("Où est hébergé SIRENA ?", "Datacenter Lyon"),
    ("Quelle technologie pour GéoPlan ?", "Python"),
    ("Qui est la MOA de HYDRA ?", "Direction Eau"),
]


def memorisation_set(path: Path, repeat: int = 4) -> Path:
    return write_jsonl(path, [{"messages": build_messages(q, answer=a, schema=FR)} for q, a in FACTS * repeat])


def test_loss_falls_base_frozen_adapter_changed_and_output_answers(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl")
    base_digest_before = file_digest(tiny_model_dir / "model.safetensors")
    config = FinetuneConfig(
        dataset=str(data), val=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir),
        epochs=20, batch_size=4, grad_accum=1, lr=0.02, lora_rank=8, logging_steps=1, save_steps=1000, precision="fp32",
    )
    result = finetune.run(config)
    final = Path(result.adapter_dir)
    manifest = json.loads((final / "dyag_manifest.json").read_text())
    assert manifest["base_model"] == str(tiny_model_dir) and manifest["datasets"]["train"]
    # a user's dataset says neither how its contexts were narrowed nor its language
    assert manifest["focus"] is None and manifest["schema"] is None
    assert (final / "adapter_model.safetensors").is_file() and (tmp_path / "out" / "loss_curve.png").is_file()
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # pyplot holds no figure of the loss curve afterwards
    assert (final / "chat_template.jinja").is_file() or "chat_template" in (final / "tokenizer_config.json").read_text()
    # loss finite and falling
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0] - 0.2, losses
    evals = [h["eval_loss"] for h in result.history if "eval_loss" in h]
    assert evals[-1] < evals[0]

    # base weights unchanged (the base file is untouched and the adapter holds
    # LoRA weights only), adapter weights changed (LoRA B starts at zero)
    assert file_digest(tiny_model_dir / "model.safetensors") == base_digest_before
    base = load_file(tiny_model_dir / "model.safetensors")
    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    # answering merges the adapter into the base weights: some of them moved
    predictor = load_predictor("finetuned", model=str(tmp_path / "out"), max_new_tokens=16, precision="fp32")
    merged = predictor.model.state_dict()
    assert any(name in merged and not torch.equal(merged[name].cpu(), tensor) for name, tensor in base.items())

    # it generates, and generation stops by itself on a memorised answer
    answers = predictor.answer([q for q, _ in FACTS])
    assert all(a.error is None for a in answers)
    assert sum(a.tokens < 16 for a in answers) >= 1
    # and at least one memorised answer comes back word for word (lr 0.05 left
    # the loss near 4 and none did: the test had passed on a lucky LoRA init)
    assert any(a.text == answer for a, (_, answer) in zip(answers, FACTS)), [a.text for a in answers]


def test_bf16_on_cpu_trains_a_float32_adapter_that_answers_in_bf16(tmp_path, tiny_model_dir):
    """--precision bf16 on a CPU: weights stay fp32 and the forward pass is
    autocast to bf16; the saved LoRA weights are fp32; answering loads the
    base in bf16 and merges the adapter into it."""
    data = memorisation_set(tmp_path / "train.jsonl")
    config = FinetuneConfig(
        dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir),
        epochs=10, batch_size=4, grad_accum=1, lr=0.02, lora_rank=8, logging_steps=1, save_steps=1000, precision="bf16",
    )
    result = finetune.run(config)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.2, losses
    adapter = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    assert {v.dtype for v in adapter.values()} == {torch.float32}
    predictor = load_predictor("finetuned", model=result.adapter_dir, max_new_tokens=8, precision="bf16")
    assert predictor.model.dtype == torch.bfloat16
    answers = predictor.answer([q for q, _ in FACTS])
    assert all(a.error is None and a.text for a in answers)


def test_precision_auto_follows_the_device_and_fp16_needs_cuda(monkeypatch):
    from dyag_mlops.systems import models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.resolve_precision("auto", "cpu") == "fp32"
    assert models.resolve_precision("auto", "mps") == "fp32"
    assert models.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(DyagError, match="fp16 needs a CUDA GPU"):
        models.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="--precision must be one of auto, fp32, bf16, fp16"):
        FinetuneConfig(precision="half")


def test_truncation_of_every_example_is_an_error(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=1)
    config = FinetuneConfig(dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir), max_length=8)
    with pytest.raises(DyagError, match="max-length"):
        finetune.run(config)


def test_bad_dataset_names_file_and_line(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": build_messages("q", answer="a", schema=FR)}, {"question": "q"}])
    with pytest.raises(DyagError, match=r"train\.jsonl:2"):
        finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir)))


def test_non_empty_output_is_refused(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(DyagError, match="--overwrite"):
        finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir)))
    assert (tmp_path / "out" / "keep.txt").exists()


def test_adapter_base_mismatch_is_an_error(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=1)
    finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "a"), base_model=str(tiny_model_dir), epochs=1, batch_size=4, grad_accum=1))
    with pytest.raises(DyagError, match="trained on"):
        load_predictor("finetuned", model=str(tmp_path / "a"), base_model="qwen2.5:0.5b")
    with pytest.raises(DyagError, match="trained on"):
        finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "b"), base_model="qwen2.5:0.5b", init_adapter=str(tmp_path / "a")))


def test_init_adapter_continues_training(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=2)
    first = finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "a"), base_model=str(tiny_model_dir), epochs=2, batch_size=4, grad_accum=1, lr=0.01))
    second = finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "b"), base_model=str(tiny_model_dir), epochs=2, batch_size=4, grad_accum=1, lr=0.01, init_adapter=first.adapter_dir))
    assert second.metrics["train_loss"] < first.metrics["train_loss"]


def test_quantize_4bit_on_cpu_is_refused(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=1)
    with pytest.raises(DyagError, match="CUDA"):
        finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp_path / "o"), base_model=str(tiny_model_dir), quantize="4bit", device="cpu"))


def test_resume_after_kill_reaches_the_same_final_step(tmp_path, tiny_model_dir):
    # 64 examples x 4 epochs at batch 2 = 128 steps: long enough that the kill
    # (at the first checkpoint, step 4) lands well before the end.
    data = memorisation_set(tmp_path / "train.jsonl", repeat=16)
    out = tmp_path / "out"
    args = [
        sys.executable, "-m", "dyag_mlops.cli", "finetune", "--dataset", str(data), "--output", str(out),
        "--base-model", str(tiny_model_dir), "--epochs", "4", "--batch-size", "2", "--grad-accum", "1", "--save-steps", "4", "--save-total-limit", "2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = list(out.glob("checkpoint-*"))
    assert checkpoints, "no checkpoint was written before the kill"
    assert not (out / "final").exists(), "training finished before it could be killed"
    subprocess.run(args + ["--resume"], env=env, check=True, capture_output=True)
    manifest = json.loads((out / "final" / "dyag_manifest.json").read_text())
    assert manifest["resumed_from"] and manifest["metrics"]["global_step"] == 128


def test_an_output_left_by_the_same_training_is_resumed_and_one_of_other_parameters_is_not(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=4)
    config = FinetuneConfig(
        dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir), epochs=1, batch_size=2, grad_accum=1,
        save_steps=4, precision="fp32", overwrite=True,
    )
    finetune.run(config)
    shutil.rmtree(tmp_path / "out" / "final")  # as if killed after its last checkpoint
    assert not finetune.resumed_if_interrupted(dataclasses.replace(config, lr=1e-3)).resume
    resumed = finetune.resumed_if_interrupted(config)
    assert resumed.resume and not resumed.overwrite
    assert config_hash("finetune", resumed) == config_hash("finetune", config)  # the pipeline finds it as the same step
    finetune.run(resumed)
    manifest = json.loads((tmp_path / "out" / "final" / "dyag_manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-8") and manifest["metrics"]["global_step"] == 8


def test_scoring_only_answer_tokens_on_cpu_gives_the_same_loss(tiny_model_dir):
    import torch
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from dyag_mlops.systems.models import load_base_model

    model, _, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    labels = ids.clone()
    labels[:, :11] = -100  # a prompt, then a 5-token answer
    original = trl_utils._use_triton
    try:
        every_position = model(input_ids=ids, labels=labels, fused_lm_head=True)
        finetune.score_only_answer_tokens_on_cpu()
        assert trl_utils._use_triton(torch.device("cpu"))
        answers_only = model(input_ids=ids, labels=labels, fused_lm_head=True)
    finally:
        trl_utils._use_triton = original
    torch.testing.assert_close(answers_only.loss, every_position.loss)
    torch.testing.assert_close(answers_only.log_probs, every_position.log_probs)


def test_every_answer_of_a_conversation_is_trained_and_nothing_else(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    single = build_messages("Quel est le statut de SIRENA ?", ["Statut: En production"], "En production", schema=FR)
    conversation = single + [
        {"role": "user", "content": "Et son hébergement ?"},
        {"role": "assistant", "content": "Datacenter Lyon"},
    ]
    dataset, truncated = finetune.tokenize_examples(tokenizer, [single, conversation], 512, "test")
    assert truncated == 0
    for row, answers in zip(dataset, (["En production"], ["En production", "Datacenter Lyon"])):
        ids, mask = row["input_ids"], row["completion_mask"]
        # The tokens put back together are the whole conversation, less the
        # newline after the last end-of-turn marker.
        assert tokenizer.decode(ids) + "\n" == tokenizer.apply_chat_template(conversation if len(answers) == 2 else single, tokenize=False)
        # The masked spans are exactly the answers, each with its end-of-turn token.
        spans, current = [], []
        for token, trained in zip(ids, mask):
            if trained:
                current.append(token)
            elif current:
                spans.append(current)
                current = []
        spans += [current] if current else []
        assert [tokenizer.decode(s) for s in spans] == [a + tokenizer.eos_token for a in answers]


def _lora_outputs(model_dir: Path, adapter_dirs: dict[str, Path], inputs: torch.Tensor, soup_of: list[str] | None = None) -> torch.Tensor:
    """Logits of the base model with one adapter (or peft's "cat" merge of several) active."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    names = list(adapter_dirs)
    model = PeftModel.from_pretrained(base, str(adapter_dirs[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapter_dirs[name]), adapter_name=name)
    if soup_of:
        model.add_weighted_adapter(soup_of, [1 / len(soup_of)] * len(soup_of), "peft_soup", combination_type="cat")
        model.set_adapter("peft_soup")
    else:
        model.set_adapter(names[0])
    with torch.no_grad():
        return model(inputs).logits


def test_soup_averages_the_members_updates_as_peft_cat_does(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=2)
    config = FinetuneConfig(
        dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir), soup=2,
        epochs=2, batch_size=4, grad_accum=1, lr=0.01, lora_rank=4, logging_steps=1, precision="fp32",
    )
    result = finetune.run(config)
    out = tmp_path / "out"
    members = [out / "member-1" / "final", out / "member-2" / "final"]
    seeds = [json.loads((m / "dyag_manifest.json").read_text())["config"]["seed"] for m in members]
    assert seeds == [42, 43]  # different LoRA inits and example orders
    final = Path(result.adapter_dir)
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 8
    assert json.loads((final / "dyag_manifest.json").read_text())["config"]["soup"] == 2
    assert {"member_1/train_loss", "member_2/train_loss", "train_loss"} <= set(result.metrics)
    assert {h["member"] for h in result.history} == {1, 2}

    inputs = torch.tensor([[5, 17, 42, 99, 7]])
    ours = _lora_outputs(tiny_model_dir, {"soup": final}, inputs)
    peft_cat = _lora_outputs(tiny_model_dir, {"a": members[0], "b": members[1]}, inputs, soup_of=["a", "b"])
    alone = [_lora_outputs(tiny_model_dir, {"m": m}, inputs) for m in members]
    assert torch.allclose(ours, peft_cat, atol=1e-5)
    assert not torch.allclose(ours, alone[0], atol=1e-3) and not torch.allclose(ours, alone[1], atol=1e-3)

    # the soup is an ordinary adapter: it loads and answers
    predictor = load_predictor("finetuned", model=result.adapter_dir, max_new_tokens=8, precision="fp32")
    assert all(a.error is None for a in predictor.answer([q for q, _ in FACTS]))


def test_soup_resume_keeps_the_members_already_trained(tmp_path, tiny_model_dir):
    data = memorisation_set(tmp_path / "train.jsonl", repeat=1)
    kwargs = dict(dataset=str(data), output=str(tmp_path / "out"), base_model=str(tiny_model_dir), soup=2, epochs=1, batch_size=4, grad_accum=1, precision="fp32")
    finetune.run(FinetuneConfig(**kwargs))
    out = tmp_path / "out"
    first_member = (out / "member-1" / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    shutil.rmtree(out / "member-2")  # as if interrupted while training the second member
    shutil.rmtree(out / "final")
    result = finetune.run(FinetuneConfig(**kwargs, resume=True))
    assert (out / "member-1" / "final" / "adapter_model.safetensors").stat().st_mtime_ns == first_member
    assert (out / "member-2" / "final").is_dir() and Path(result.adapter_dir).is_dir()
    assert result.metrics["member_1/train_loss"] > 0 and {h["member"] for h in result.history} == {1, 2}


def test_soup_options_are_checked():
    with pytest.raises(ValueError, match="--soup must be >= 1"):
        FinetuneConfig(soup=0)
    with pytest.raises(ValueError, match="DoRA"):
        FinetuneConfig(soup=2, dora=True)


def test_a_finished_process_leaves_its_process_group(tmp_path):
    """A rank that exits with its gloo group alive can abort at exit; the
    group is destroyed once the training succeeded."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    finetune.leave_process_group()
    assert not dist.is_initialized()
    finetune.leave_process_group()  # alone, or already left: nothing to do


def test_release_memory_frees_a_model_only_a_reference_cycle_still_holds():
    """Between pipeline stages and soup members: a finished stage's model
    often sits in a reference cycle (a trainer and its callbacks) that only
    the cyclic collector frees."""
    import gc
    import weakref

    from dyag_mlops.systems.models import release_memory

    class Stage:
        pass

    gc.disable()  # so that only release_memory can collect the cycle
    try:
        stage = Stage()
        stage.itself, stage.weights = stage, torch.zeros(1 << 20)
        still_held = weakref.ref(stage)
        del stage
        assert still_held() is not None
        release_memory()
        assert still_held() is None
    finally:
        gc.enable()


def test_two_processes_train_data_parallel_into_one_run_and_resume(tmp_path, tiny_model_dir):
    """`accelerate launch --num_processes 2` on CPU (gloo): each process takes
    half of every batch, rank 0 alone writes the adapter and the MLflow run;
    a resumed launch ends at the same step; the loss falls as far as one
    process's at the same effective batch."""
    import mlflow

    data = memorisation_set(tmp_path / "train.jsonl", repeat=4)  # 16 examples
    common = ["--dataset", str(data), "--val", str(data), "--base-model", str(tiny_model_dir), "--epochs", "6", "--grad-accum", "1",
              "--lr", "0.02", "--lora-rank", "8", "--save-steps", "4", "--save-total-limit", "100", "--precision", "fp32", "--logging-steps", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_EXPERIMENT_NAME": "two-processes"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m", "dyag_mlops.cli", "finetune"]
    two, one = tmp_path / "two", tmp_path / "one"
    done = subprocess.run(launch + common + ["--output", str(two), "--batch-size", "1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter: ") == 1  # rank 0 reports
    subprocess.run([sys.executable, "-m", "dyag_mlops.cli", "finetune", *common, "--output", str(one), "--batch-size", "2"],
                   env={**env, "MLFLOW_EXPERIMENT_NAME": "one-process"}, check=True, capture_output=True)

    manifest = json.loads((two / "final" / "dyag_manifest.json").read_text())
    assert manifest["metrics"]["global_step"] == 16 * 6 / 2  # both processes' examples in each step
    single = json.loads((one / "final" / "dyag_manifest.json").read_text())["metrics"]
    assert manifest["metrics"]["final_eval_loss"] < 0.5 * json.loads((two / "history.json").read_text())[0]["loss"]
    assert abs(manifest["metrics"]["final_eval_loss"] - single["final_eval_loss"]) < 0.5 * single["final_eval_loss"] + 0.2
    runs = mlflow.search_runs(experiment_names=["two-processes"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["dyag.processes"] == "2"

    # as if killed after step 20: the checkpoints past it and the adapter are gone
    for checkpoint in two.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > 20:
            shutil.rmtree(checkpoint)
    shutil.rmtree(two / "final")
    resumed = subprocess.run(launch + common + ["--output", str(two), "--batch-size", "1", "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = json.loads((two / "final" / "dyag_manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-20") and manifest["metrics"]["global_step"] == 48


def test_packed_examples_attend_only_to_themselves(tiny_model_dir):
    """batch_size > 1 packs a batch's examples into one sequence (trl's
    padding-free collator): in the model finetune trains, each example's
    logits are those it has alone."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tokenizer, _ = finetune.build_model(FinetuneConfig(base_model=str(tiny_model_dir)), "cpu", "fp32")
    torch.manual_seed(0)
    examples = [{"input_ids": torch.randint(3, len(tokenizer), (n,)).tolist()} for n in (7, 12, 9)]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    assert batch["input_ids"].shape == (1, 28) and "attention_mask" not in batch
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[start : start + len(alone)], alone, atol=1e-4, rtol=1e-4)
            start += len(alone)
        # without their positions the examples would see each other
        assert not torch.allclose(model(input_ids=batch["input_ids"]).logits[0, 7:19], packed[7:19], atol=1e-3)


def test_compiled_blocks_train_as_eager_ones_do(tmp_path, tiny_model_dir):
    """--compile (the default) compiles the transformer blocks on a CPU with a
    C++ compiler; the training it does is the eager one's."""
    from dyag_mlops.systems.models import c_compiler, compile_layers

    model, _, _ = finetune.build_model(FinetuneConfig(base_model=str(tiny_model_dir), compile=False), "cpu", "fp32")
    assert compile_layers(model) == (c_compiler() is not None)
    data = memorisation_set(tmp_path / "train.jsonl", repeat=2)
    losses = {}
    for compiled in (False, True):
        config = FinetuneConfig(
            dataset=str(data), output=str(tmp_path / f"out-{compiled}"), base_model=str(tiny_model_dir), epochs=2,
            batch_size=2, grad_accum=1, lr=0.02, save_steps=1000, precision="fp32", compile=compiled,
        )
        losses[compiled] = finetune.run(config).metrics["train_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
