"""The GPU check's MLflow runs as JSON: status, dyag tags, the parameters that
tell the runs apart, and every metric but system ones."""

import json

import mlflow

PARAMS = ("precision", "quantize", "device", "batch_size", "limit")

runs = []
for run in mlflow.search_runs(search_all_experiments=True, output_format="list"):
    runs.append(
        {
            "name": run.info.run_name,
            "status": run.info.status,
            "tags": {k: v for k, v in run.data.tags.items() if k.startswith("dyag.")},
            "params": {k: run.data.params[k] for k in PARAMS if k in run.data.params},
            "metrics": {k: round(v, 4) for k, v in run.data.metrics.items() if not k.startswith("system/")},
        }
    )
print(json.dumps(runs, indent=1))
