#!/usr/bin/env bash
# The main job: set up, then run the full pipeline (entry point `main`) on the
# bundled demo corpus with the bundled default model, tracked in ./mlflow.db.
# Extra arguments go to `mlflow run` (e.g. -P epochs=1 -P limit=40).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}
export TOKENIZERS_PARALLELISM=false
# dyag creates a new store (with a write-ahead log: docs/decisions/0006) before `mlflow run` does.
python -c "from dyag_mlops.tracking import configure; configure()"
mlflow run . --env-manager local --experiment-name dyag-mlops "$@"
case "$MLFLOW_TRACKING_URI" in
  http*) echo "Results: open $MLFLOW_TRACKING_URI" ;;
  *) echo "Results: mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI   (then open http://127.0.0.1:5000)" ;;
esac
