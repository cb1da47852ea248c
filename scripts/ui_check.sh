#!/usr/bin/env bash
# Screenshots of the latest pipeline in MLflow's web UI and in `dyag app`
# (headless Chromium), into docs/images/: bash scripts/ui_check.sh [TRACKING_URI] [OUT_DIR]
# Run `bash scripts/main.sh` first. Installs Debian's chromium and the
# playwright client (it drives that browser; it downloads none) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}}
OUT=${2:-docs/images}
PORT=${UI_PORT:-5077}
source scripts/browser_setup.sh
APP_PORT=$((PORT + 1))
.venv/bin/mlflow ui --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" >/tmp/ui_check_server.log 2>&1 &
SERVER=$!
MLFLOW_TRACKING_URI="$STORE" HF_HUB_OFFLINE=1 .venv/bin/dyag app --no-open --port "$APP_PORT" >/tmp/ui_check_app.log 2>&1 &
APP=$!
trap 'kill $SERVER $APP 2>/dev/null || true' EXIT
for url in "http://127.0.0.1:$PORT/health" "http://127.0.0.1:$APP_PORT/api/candidates"; do
  for _ in $(seq 90); do
    curl -sf "$url" >/dev/null && break
    kill -0 $SERVER $APP 2>/dev/null || { echo "Error: mlflow ui or dyag app did not start (/tmp/ui_check_*.log)" >&2; exit 1; }
    sleep 1
  done
done
.venv/bin/python scripts/ui_check.py --ui "http://127.0.0.1:$PORT" --app "http://127.0.0.1:$APP_PORT" --store "$STORE" --out "$OUT"
