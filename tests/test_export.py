"""dyag export on the tiny model: the merged model answers as the adapter
does, the GGUF file reads back with the right tensors, the Modelfile renders
the training template, bad input is refused and nothing is half-written."""

import json

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_jsonl
from dyag_mlops.cli import main
from dyag_mlops.config import ExportConfig, FinetuneConfig
from dyag_mlops.data.inventory import cached_schema
from dyag_mlops.systems import export
from dyag_mlops.systems.prompts import build_messages
from dyag_mlops.train import finetune

FR = cached_schema("fr")
QUESTIONS = ["Statut de SIRENA ?", "Qui est le responsable de GéoPlan ?", "Quelle base de données pour HYDRA ?"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """An adapter trained in a finetune run: (adapter dir, the run's logged model URI)."""
    from dyag_mlops.tracking import stage_run

    tmp = tmp_path_factory.mktemp("export-adapter")
    data = write_jsonl(tmp / "train.jsonl", [{"messages": build_messages("Statut de SIRENA ?", answer="En production", schema=FR)}] * 8)
    config = FinetuneConfig(dataset=str(data), output=str(tmp / "out"), base_model=str(tiny_model_dir), epochs=1, batch_size=4)
    with stage_run("finetune", config) as tracker:
        result = finetune.run(config, tracker)
    return result.adapter_dir, result.model_uri


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained):
    out = tmp_path_factory.mktemp("export") / "model"
    done = CliRunner().invoke(main, ["export", trained[0], "--output", str(out), "--gguf", "f16", "--ollama"])
    assert done.exit_code == 0, done.output
    return out


def test_the_merged_model_answers_as_the_adapter(exported, trained):
    from dyag_mlops.systems.predictor import load_predictor

    adapter = load_predictor("finetuned", model=trained[0], max_new_tokens=12)
    merged = load_predictor("base", base_model=str(exported), max_new_tokens=12, schema="fr")
    assert [a.text for a in merged.answer(QUESTIONS)] == [a.text for a in adapter.answer(QUESTIONS)]
    assert {"model.safetensors", "config.json", "tokenizer.json", "model-f16.gguf", "Modelfile", export.EXPORT_MANIFEST} <= {
        p.name for p in exported.iterdir()}


def test_the_gguf_file_has_llama_cpp_names_and_reads_back(exported):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    config = json.loads((exported / "config.json").read_text())
    reader = GGUFReader(str(exported / "model-f16.gguf"))
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    hidden, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * (hidden // config["num_attention_heads"])
    expected = {"token_embd.weight": (config["vocab_size"], hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        expected.update({
            f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (kv, hidden), f"blk.{i}.attn_v.weight": (kv, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden), f"blk.{i}.ffn_gate.weight": (ffn, hidden),
            f"blk.{i}.ffn_up.weight": (ffn, hidden), f"blk.{i}.ffn_down.weight": (hidden, ffn),
            f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
        })
    if not config.get("tie_word_embeddings"):
        expected["output.weight"] = (config["vocab_size"], hidden)
    assert shapes == expected
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert len(fields["tokenizer.ggml.tokens"].data) == config["vocab_size"]
    # transformers reads it back (undoing the rotary permutation): same logits as the merged model, to f16
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    merged = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    back = AutoModelForCausalLM.from_pretrained(str(exported), gguf_file="model-f16.gguf", dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).logits.numpy(), merged(ids).logits.numpy(), atol=2e-2, rtol=0)


def test_the_gguf_file_as_a_base_model_keeps_its_special_tokens(exported):
    """--base-model FILE.gguf reads the file alone, not the tokenizer files beside it."""
    from dyag_mlops.systems.models import load_tokenizer, resolve

    from_gguf = load_tokenizer(resolve(str(exported / "model-f16.gguf")))
    merged = load_tokenizer(str(exported))
    assert (from_gguf.eos_token, from_gguf.bos_token) == (merged.eos_token, merged.bos_token) != (None, None)
    assert from_gguf("Statut de SIRENA ?").input_ids == merged("Statut de SIRENA ?").input_ids


def test_the_modelfile_renders_the_training_template(exported):
    from dyag_mlops.systems.models import load_tokenizer

    text = (exported / "Modelfile").read_text()
    assert text.startswith("FROM ./model-f16.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    assert system == FR.system_prompt
    tokenizer = load_tokenizer(str(exported))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Statut de SIRENA ?"}]
    trained_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ollama_prompt = template.replace("{{ .System }}", system).replace("{{ .Prompt }}", "Statut de SIRENA ?").replace("{{ .Response }}", "")
    assert ollama_prompt == trained_prompt


def test_an_export_from_the_registry_is_linked_to_its_version(trained, tmp_path):
    version = mlflow.register_model(trained[1], "export-qa")
    mlflow.MlflowClient().set_registered_model_alias("export-qa", "champion", version.version)
    done = CliRunner().invoke(main, ["export", "models:/export-qa@champion", "--output", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    tagged = mlflow.MlflowClient().get_model_version("export-qa", version.version).tags
    run = mlflow.get_run(tagged["dyag.export_run"])
    assert run.data.tags["dyag.stage"] == "export" and run.data.tags["dyag.source_model"] == "models:/export-qa@champion"
    assert "export/model.safetensors" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "export")}


@pytest.mark.parametrize("args, message", [
    (["--gguf", "q4"], "--gguf must be one of q8_0, f16"),
    (["--ollama"], "--ollama needs --gguf"),
])
def test_bad_options_are_one_line_errors(trained, tmp_path, args, message):
    done = CliRunner().invoke(main, ["export", trained[0], "--output", str(tmp_path / "out"), *args])
    assert done.exit_code == 2 and message in done.output and not (tmp_path / "out").exists()


def test_an_existing_output_is_kept_unless_overwrite(trained, exported):
    before = (exported / "model.safetensors").stat().st_mtime_ns
    done = CliRunner().invoke(main, ["export", trained[0], "--output", str(exported)])
    assert done.exit_code == 2 and "pass --overwrite" in done.output
    assert (exported / "model.safetensors").stat().st_mtime_ns == before


def test_a_failed_export_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "GGUF_ARCHITECTURES", {})
    out = tmp_path / "out"
    with pytest.raises(Exception, match="LlamaForCausalLM models are not supported"):
        export.run(ExportConfig(model=trained[0], output=str(out), gguf="q8_0"))
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_adapter_is_named(tmp_path):
    done = CliRunner().invoke(main, ["export", str(tmp_path), "--output", str(tmp_path / "out")])
    assert done.exit_code == 2 and "no LoRA adapter" in done.output


def test_an_adapter_whose_base_cannot_be_found_is_named(trained, tmp_path):
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(trained[0], moved)
    manifest = json.loads((moved / "dyag_manifest.json").read_text())
    manifest["base_model"] = manifest["base_model_source"] = str(tmp_path / "gone")
    (moved / "dyag_manifest.json").write_text(json.dumps(manifest))
    done = CliRunner().invoke(main, ["export", str(moved), "--output", str(tmp_path / "out")])
    assert done.exit_code == 2 and "gone: no such model directory" in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
