import json, mlflow
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
out = []
for r in runs:
    out.append({"name": r.info.run_name, "status": r.info.status, "tags": {k: v for k, v in r.data.tags.items() if k.startswith("dyag.")},
                "params": {k: r.data.params.get(k) for k in ("precision", "quantize", "device", "limit") if k in r.data.params},
                "metrics": {k: round(v, 4) for k, v in r.data.metrics.items() if not k.startswith("system/")}})
print(json.dumps(out, indent=1))
