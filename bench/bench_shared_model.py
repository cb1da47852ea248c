"""The evaluate stages in one process, each loading its model or sharing it.

    python bench/bench_shared_model.py --workdir outputs/measure-demo [--eval-file F] [--rounds 2]

As the pipeline runs them (base, rag, finetuned, hybrid, one MLflow run
each, memory given back after each), on a pipeline workdir's index and
adapter: once with every system loading its own model, once with the
second system of one model (rag after base, hybrid after finetuned)
reusing the loaded one (`pipeline.evaluate_sharing_model`). Each round
runs both, in separate processes; prints each stage's seconds and the
part spent loading the system.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("base", "rag", "finetuned", "hybrid")


def stages(workdir: Path, eval_file: Path, share: bool, out: Path) -> None:
    import mlflow

    from dyag_mlops.config import EvaluateConfig
    from dyag_mlops.pipeline import evaluate_sharing_model
    from dyag_mlops.systems import predictor
    from dyag_mlops.systems.models import release_memory
    from dyag_mlops.tracking import stage_run

    loading = []
    load = predictor.load_predictor

    def timed_load(*args, **kwargs):
        began = time.perf_counter()
        try:
            return load(*args, **kwargs)
        finally:
            loading.append(time.perf_counter() - began)

    predictor.load_predictor = timed_load

    mlflow.set_experiment("bench-shared-model")
    loaded: dict = {}
    with mlflow.start_run():
        for system in SYSTEMS:
            config = EvaluateConfig(
                eval_file=str(eval_file), system=system, top_k=1, output=str(out / f"results_{system}.json"),
                model=str(workdir / "adapter" / "final") if system in ("finetuned", "hybrid") else "",
                index=str(workdir / "rag_index") if system in ("rag", "hybrid") else "",
            )
            began = time.perf_counter()
            with stage_run("evaluate", config, nested=True, run_name=system) as tracker:
                evaluate_sharing_model(config, tracker, loaded if share else {})
            release_memory()
            print(f"RESULT {'shared' if share else 'own'} {system} {time.perf_counter() - began:.1f} {loading[-1]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True, help="a pipeline workdir (rag_index/, adapter/final/)")
    parser.add_argument("--eval-file", default=str(ROOT / "dyag_mlops/resources/demo_eval_test.jsonl"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["own", "shared"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stages(Path(args.workdir), Path(args.eval_file), args.child == "shared", Path(args.out))
        return
    seconds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": str(ROOT)}
        for _ in range(args.rounds):
            for mode in ("own", "shared"):
                out = subprocess.run(
                    [sys.executable, __file__, "--workdir", args.workdir, "--eval-file", args.eval_file, "--child", mode, "--out", tmp],
                    env=env, capture_output=True, text=True, check=True,
                ).stdout
                for line in out.splitlines():
                    if line.startswith("RESULT "):
                        _, m, system, stage, load = line.split()
                        seconds.setdefault((m, system), []).append((float(stage), float(load)))
    print("stage seconds (of which loading the system), each round")
    print(f"{'stage':<12} {'own model':>28} {'shared':>28}")
    for system in SYSTEMS:
        own, shared = (" / ".join(f"{s:.1f} ({load:.1f})" for s, load in seconds[(m, system)]) for m in ("own", "shared"))
        print(f"{system:<12} {own:>28} {shared:>28}")


if __name__ == "__main__":
    main()
