#!/usr/bin/env bash
# One device call checking dyag's CUDA paths: 4-bit QLoRA (bitsandbytes), bf16
# and fp32 LoRA training, answering with a QLoRA adapter, `accelerate launch`,
# and the training/answering tests on CUDA. Needs .devsite/ (build_site.sh);
# with the device tool: command `bash scripts/device/gpu_check.sh`, carry
# [".devsite"], timeout ~540 s. Results: $OUT/log.txt, pytest.txt, summary.json.
# The model has SmolLM2-135M's shape and random weights: speeds and memory are
# the real model's, answers are not.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DYAG_HOME=/tmp/dyag_home
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s); t() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
mkdir -p /tmp/site && tar -C /tmp/site -xJf .devsite/site.tar.xz
export PYTHONPATH=/tmp/site:$PWD
python3 scripts/device/prepare.py || exit 1
export MLFLOW_TRACKING_URI=sqlite:////tmp/dev.db MLFLOW_EXPERIMENT_NAME=gpu-check
# ~55 steps each: every run gets to save its adapter (each start costs ~20 s).
COMMON="--dataset .devsite/data/dataset_train.jsonl --base-model /tmp/smol-random --epochs 0.3 --lr 1e-3 --grad-accum 1 --device cuda"
t "pytest on cuda"; timeout 150 python3 -m pytest -q -rf -p no:cacheprovider -p timeout --timeout 120 -m "not real_model" \
  tests/test_finetune.py tests/test_query.py tests/test_evaluate.py > "$OUT/pytest.txt" 2>&1; echo "rc=$?"; tail -12 "$OUT/pytest.txt"
t "finetune 4bit"; timeout 90 python3 -m dyag_mlops.cli finetune $COMMON --quantize 4bit --output /tmp/ft-4bit; echo "rc=$?"
t "evaluate the 4bit adapter"; timeout 60 python3 -m dyag_mlops.cli evaluate-finetuned --model /tmp/ft-4bit/final --limit 32 --output /tmp/ev-4bit.json --device cuda; echo "rc=$?"
for precision in bf16 fp32; do
  t "finetune $precision"; timeout 50 python3 -m dyag_mlops.cli finetune $COMMON --precision $precision --output /tmp/ft-$precision; echo "rc=$?"
done
t "finetune bf16, batch 8"; timeout 50 python3 -m dyag_mlops.cli finetune $COMMON --batch-size 8 --precision bf16 --output /tmp/ft-b8; echo "rc=$?"
t "accelerate launch"; timeout 50 accelerate launch --num_processes 1 --mixed_precision no -m dyag_mlops.cli finetune $COMMON --output /tmp/ft-acc; echo "rc=$?"
python3 scripts/device/summary.py > "$OUT/summary.json"
t done
