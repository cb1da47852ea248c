"""The main job against another commit, one after the other on this machine.

    python bench/bench_pipeline.py --baseline COMMIT [--corpus demo|debian|pydist]

Each commit (`--baseline`, checked out in a temporary git worktree, then
this working tree) runs the main entry point with `mlflow run` on the same
corpus and test half, in a fresh workdir and tracking store (created by the
commit's own `tracking.configure`, as scripts/main.sh does), with this
checkout's environment. Prints each stage's seconds (as the pipeline prints
them), the wall time, each system's `correct` and how many of its answers
are the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPORA = {
    "demo": ("dyag_mlops/resources/demo_corpus.jsonl", "dyag_mlops/resources/demo_eval_test.jsonl"),
    "debian": ("corpora/debian/corpus.jsonl", "corpora/debian/eval_test.jsonl"),
    "pydist": ("corpora/pydist/corpus_md", "corpora/pydist/eval_test.jsonl"),
}
STAGE_LINE = re.compile(r"^\[pipeline\] (\S+)\s+([\d.]+) s$", re.M)


def run_pipeline(tree: Path, corpus: Path, eval_file: Path, work: Path, log: Path) -> dict:
    # `mlflow run --env-manager local` runs `python` from PATH: this interpreter's.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "run", str(tree), "--env-manager", "local", "--experiment-name", "bench-pipeline",
           "-P", f"corpus={corpus}", "-P", f"eval_file={eval_file}", "-P", f"workdir={work / 'pipeline'}"]
    work.mkdir(parents=True)
    began = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        # As scripts/main.sh: the commit's own code creates the store, then `mlflow run` runs.
        create = [sys.executable, "-c", "from dyag_mlops.tracking import configure; configure()"]
        subprocess.run(create, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
        subprocess.run(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - began
    stages = {name: float(seconds) for name, seconds in STAGE_LINE.findall(log.read_text("utf-8"))}
    systems = {}
    for path in sorted((work / "pipeline").glob("results_*.json")):
        rows = json.loads(path.read_text("utf-8"))["results"]
        systems[path.stem.removeprefix("results_")] = {
            "correct": sum(r["correct"] for r in rows) / len(rows), "answers": [r["generated_answer"] for r in rows]}
    return {"wall": wall, "stages": stages, "systems": systems}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="commit to compare with (checked out in a git worktree)")
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="demo")
    parser.add_argument("--logs", default="outputs/bench_pipeline", help="where each run's output is kept")
    args = parser.parse_args()
    corpus, eval_file = (ROOT / p for p in CORPORA[args.corpus])
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline-tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            before = run_pipeline(baseline, corpus, eval_file, tmp / "baseline", logs / "baseline.log")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False)
        after = run_pipeline(ROOT, corpus, eval_file, tmp / "current", logs / "current.log")
    print(f"{args.corpus}, test half; baseline {args.baseline} then this tree; logs in {logs}")
    print(f"{'stage':<22} {'baseline s':>10} {'this s':>8} {'ratio':>6}")
    for stage in dict.fromkeys([*before["stages"], *after["stages"]]):
        b, a = before["stages"].get(stage), after["stages"].get(stage)
        ratio = f"{b / a:6.2f}" if a and b else ""
        print(f"{stage:<22} {b if b is not None else '':>10} {a if a is not None else '':>8} {ratio}")
    print(f"{'wall (mlflow run)':<22} {before['wall']:10.1f} {after['wall']:8.1f} {before['wall'] / after['wall']:6.2f}")
    for system, now in after["systems"].items():
        then = before["systems"].get(system)
        if then:
            same = sum(x == y for x, y in zip(then["answers"], now["answers"]))
            print(f"{system:<10} correct {then['correct']:.3f} -> {now['correct']:.3f}; "
                  f"{same}/{len(now['answers'])} answers identical")


if __name__ == "__main__":
    main()
