#!/usr/bin/env bash
# Screenshots of the latest pipeline in MLflow's web UI (headless Chromium),
# into docs/images/: bash scripts/ui_check.sh [TRACKING_URI] [OUT_DIR]
# Run `bash scripts/main.sh` first. Installs Debian's chromium and the
# playwright client (it drives that browser; it downloads none) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}}
OUT=${2:-docs/images}
PORT=${UI_PORT:-5077}
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null
  else echo "Error: chromium is not installed: sudo apt-get install chromium" >&2; exit 2; fi
fi
.venv/bin/python -c "import playwright" 2>/dev/null || .venv/bin/pip install -q "playwright==1.65.2"
.venv/bin/mlflow ui --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" >/tmp/ui_check_server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "Error: mlflow ui did not start (/tmp/ui_check_server.log)" >&2; exit 1; }
  sleep 1
done
.venv/bin/python scripts/ui_check.py --ui "http://127.0.0.1:$PORT" --store "$STORE" --out "$OUT"
