"""export: a LoRA adapter merged into its base, for the tools people run models with.

The output folder holds the merged model (safetensors, its tokenizer and the
chat template it was trained with), optionally a GGUF file (llama.cpp,
Ollama) written with the `gguf` package, and an Ollama Modelfile whose
template is the training chat template rendered around Ollama's variables.
The folder is built next to its target and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyag_mlops.config import ExportConfig
from dyag_mlops.data.files import atomic_write_json, atomic_write_text, current_umask, refuse_overwrite, staging_dir, swap_in
from dyag_mlops.errors import DyagError
from dyag_mlops.tracking import NullTracker

EXPORT_MANIFEST = "dyag_export.json"
# GGUF's names for the llama architecture's tensors come from gguf's own map;
# these are the architectures whose layout that map and llama.cpp share.
GGUF_ARCHITECTURES = {"LlamaForCausalLM": "llama"}
# llama.cpp names a BPE pre-tokenizer by the SHA-256 of the token ids its
# converter gets for this text (convert_hf_to_gguf.py); these are the names of
# the byte-level BPE tokenizers of the shortcuts (`dyag models`).
PRE_TOKENIZER_CHECK = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български \'\'\'\'\'\'```````\"\"\"\"......!!!!!!?????? I\'ve been \'told he\'s there, "
    "\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL"
)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
# Placeholders rendered through the chat template, then replaced by Ollama's variables.
SYSTEM_SLOT, PROMPT_SLOT = "\x00SYSTEM\x00", "\x00PROMPT\x00"


@dataclass
class ExportResult:
    output: str
    files: list[str]
    base_model: str
    system_prompt: str


def run(config: ExportConfig, tracker: NullTracker = NullTracker()) -> ExportResult:
    from dyag_mlops.systems.predictor import adapter_manifest, check_base_matches, locate_adapter

    if not config.model:
        raise DyagError("export needs MODEL: an adapter directory, runs:/ or models:/ URI")
    output = Path(config.output)
    refuse_overwrite([output], config.overwrite)
    adapter_dir = locate_adapter(config.model)
    base_model = check_base_matches(adapter_dir, config.base_model)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(output)
    try:
        tokenizer = merge(adapter_dir, base_model, staging)
        manifest = adapter_manifest(adapter_dir)
        system_prompt = manifest.get("system_prompt") or schema_system_prompt(manifest.get("schema") or "")
        files = sorted(p.name for p in staging.iterdir())
        if config.gguf:
            gguf_name = f"model-{config.gguf}.gguf"
            write_gguf(staging, staging / gguf_name, config.gguf, output.name)
            files.append(gguf_name)
            if config.ollama:
                atomic_write_text(staging / "Modelfile", modelfile(tokenizer, f"./{gguf_name}", system_prompt))
                files.append("Modelfile")
        atomic_write_json(staging / EXPORT_MANIFEST, {
            "source": config.model, "adapter": str(adapter_dir), "base_model": base_model,
            "gguf": config.gguf, "system_prompt": system_prompt,
        })
        for path in staging.iterdir():  # save_pretrained leaves some files private (0600)
            path.chmod(0o666 & ~current_umask())
        swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tracker.set_tags({"dyag.source_model": config.model, "dyag.base_model": base_model})
    tracker.log_artifacts(output, "export")
    link_registered_version(config.model, tracker.run_id)
    return ExportResult(str(output), files, base_model, system_prompt)


def merge(adapter_dir: Path, base_model: str, out: Path) -> Any:
    """The adapter merged into its base in fp32 (the weights the adapter was
    evaluated with), saved as safetensors with the adapter's tokenizer; the tokenizer."""
    from dyag_mlops.systems.models import attach_adapter, load_base_model, load_tokenizer

    model, _, _ = load_base_model(base_model, device="cpu", precision="fp32")
    merged = attach_adapter(model, str(adapter_dir), base_model).merge_and_unload()
    tokenizer = load_tokenizer(str(adapter_dir))  # carries the template used in training
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return tokenizer


def schema_system_prompt(schema: str) -> str:
    """The system prompt of the schema an adapter's training set was written
    in, for a manifest that records no prompt of its own; else ''."""
    from dyag_mlops.data.inventory import cached_schema

    if not schema or schema == "auto":
        return ""
    try:
        return cached_schema(schema).system_prompt
    except (DyagError, OSError):
        return ""


# ---------------------------------------------------------------- GGUF


def write_gguf(model_dir: Path, path: Path, qtype: str, name: str) -> None:
    """A GGUF file of a merged llama-architecture model with a byte-level BPE
    tokenizer: hyper-parameters, vocabulary, merges, special tokens and chat
    template as llama.cpp's converter writes them; matrices in `qtype` (q8_0
    or f16), norms in f32. Q and K rows are permuted to llama.cpp's rotary layout."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text("utf-8"))
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in GGUF_ARCHITECTURES:
        raise DyagError(
            f"--gguf: {architecture} models are not supported (supported: {', '.join(GGUF_ARCHITECTURES)}); "
            "the merged safetensors model is still exported without --gguf"
        )
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    n_blocks = config["num_hidden_layers"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    tokens, token_types = gguf_vocabulary(model_dir, config["vocab_size"])

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_blocks)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    if pre := pre_tokenizer(model_dir):
        writer.add_tokenizer_pre(pre)  # else llama.cpp warns and splits text its default way
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    # The tokenizer adds no BOS unless its config says so (the chat template writes its own tokens).
    special.add_special_token.setdefault("bos", False)
    special.add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    tied = config.get("tie_word_embeddings", False)
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as weights:
        for key in weights.keys():
            if tied and key == "lm_head.weight":
                continue  # llama.cpp reuses token_embd
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise DyagError(f"--gguf: tensor {key} has no GGUF name for the llama architecture")
            data = weights.get_tensor(key).astype(np.float32)
            if key.endswith("q_proj.weight"):
                data = rotary_permute(data, n_head)
            elif key.endswith("k_proj.weight"):
                data = rotary_permute(data, n_kv)
            if data.ndim == 1:
                writer.add_tensor(name, data)
                continue
            if qtype == "q8_0":
                try:
                    q8 = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                    writer.add_tensor(name, q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                    continue
                except gguf.quants.QuantError:
                    pass  # rows not a multiple of Q8_0's 32-value blocks: f16, as llama.cpp does
            writer.add_tensor(name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, found as its
    converter finds it; '' for one outside PRE_TOKENIZERS."""
    import hashlib

    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(model_dir)).encode(PRE_TOKENIZER_CHECK)
    return PRE_TOKENIZERS.get(hashlib.sha256(str(ids).encode()).hexdigest(), "")


def rotary_permute(weights: Any, n_head: int) -> Any:
    """HF llama stores each head's rotary halves apart; GGML interleaves them."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def gguf_vocabulary(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id with their GGUF types (special added tokens are CONTROL),
    padded to the model's embedding rows, from a byte-level BPE tokenizer.json."""
    import gguf

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text("utf-8"))
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE" or (tokenizer.get("decoder") or {}).get("type") != "ByteLevel":
        raise DyagError(f"--gguf: {model_dir / 'tokenizer.json'} is not a byte-level BPE tokenizer (GPT-2 style); only those are exported to GGUF")
    by_id = {i: (text, gguf.TokenType.NORMAL) for text, i in model["vocab"].items()}
    for added in tokenizer.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types


# ---------------------------------------------------------------- Ollama


def modelfile(tokenizer: Any, gguf_path: str, system_prompt: str) -> str:
    """An Ollama Modelfile: the chat template the model was trained with,
    rendered around Ollama's {{ .System }} and {{ .Prompt }} (one turn), the
    token that ends a user turn and the EOS token as stops, greedy decoding."""
    messages = [{"role": "system", "content": SYSTEM_SLOT}, {"role": "user", "content": PROMPT_SLOT}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if SYSTEM_SLOT not in rendered or PROMPT_SLOT not in rendered:
        raise DyagError("--ollama: the tokenizer's chat template drops the system or user message; no Modelfile template can match it")
    template = rendered.replace(SYSTEM_SLOT, "{{ .System }}").replace(PROMPT_SLOT, "{{ .Prompt }}") + "{{ .Response }}"
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    after_prompt = rendered.split(PROMPT_SLOT, 1)[1]
    for token in tokenizer.all_special_tokens:
        if after_prompt.startswith(token) and token not in stops:
            stops.append(token)
    lines = [f"FROM {gguf_path}", f'TEMPLATE """{template}"""']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- registry


def link_registered_version(model: str, run_id: str | None) -> None:
    """Tag the registered version an export came from (models:/NAME@ALIAS or
    models:/NAME/VERSION) with the export run."""
    if not run_id or not model.startswith("models:/") or model.startswith("models:/m-"):
        return
    import mlflow

    client = mlflow.MlflowClient()
    name_part = model[len("models:/"):]
    if "@" in name_part:
        name, alias = name_part.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = name_part.partition("/")
    client.set_model_version_tag(name, version, "dyag.export_run", run_id)
