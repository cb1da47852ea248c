"""What the per-question Evaluations view costs, by the scores it carries.

    python bench/bench_view.py --results outputs/measure-demo/results_hybrid.json [--rounds 2]

Writes an evaluate stage's per-question results (its results_SYSTEM.json)
as `Tracker.log_evaluation` does, once per set of scores: every quality
metric, the ones the view carries (evaluate.QUESTION_VIEW_METRICS), `correct`
alone, none (the traces and expected answers only). Each in its own run, in
two fresh sqlite stores: one as MLflow creates it (rollback journal, a disk
sync per commit) and one as dyag does (`tracking.configure`: write-ahead
log, synced at checkpoints). Prints the seconds of each and, per set, the
ratio of the two stores' totals.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True, help="an evaluate stage's results_SYSTEM.json")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import os

    import mlflow

    from dyag_mlops.evaluation.evaluate import QUALITY_METRICS, QUESTION_VIEW_METRICS
    from dyag_mlops.tracking import Tracker, configure

    rows = json.loads(Path(args.results).read_text("utf-8"))["results"]
    sets = {"every metric": QUALITY_METRICS, "the view's": QUESTION_VIEW_METRICS, "correct": ("correct",), "none": ()}
    totals: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for store in ("mlflow", "dyag"):
            uri = f"sqlite:///{folder}/{store}/mlflow.db"
            if store == "dyag":
                os.environ["MLFLOW_TRACKING_URI"] = uri
                configure()
            else:
                Path(folder, store).mkdir()
                mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("bench-view")
            for round_ in range(1, args.rounds + 1):
                for name, metrics in sets.items():
                    with mlflow.start_run() as run:
                        began = time.perf_counter()
                        Tracker(run.info.run_id).log_evaluation(rows, metrics, None, None)
                        seconds = time.perf_counter() - began
                    totals[store, name] = totals.get((store, name), 0.0) + seconds
                    print(f"{store}'s store  round {round_}  {name:<13} ({len(metrics)} scores)  {len(rows)} rows  {seconds:6.2f} s", flush=True)
    for name in sets:
        print(f"{name:<13} seconds in mlflow's store / in dyag's: {totals['mlflow', name] / totals['dyag', name]:.2f}x")


if __name__ == "__main__":
    main()
