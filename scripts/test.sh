#!/usr/bin/env bash
# Set up, then run the test suite (tiny in-process models; the tests marked
# real_model load the bundled smollm2:135m). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
