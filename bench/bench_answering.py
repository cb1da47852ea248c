"""Answering speed against another commit, on the same index, adapter and questions.

    python bench/bench_answering.py --workdir outputs/pipeline [--baseline HEAD~1] [--systems rag,hybrid] [--eval-file F]

A pipeline's workdir gives the index and the adapter; the eval file's
questions are asked (default: the demo's hand-written questions, both
halves). Each commit (this working tree, and `--baseline` checked out in a
temporary git worktree) runs `dyag evaluate-SYSTEM` in its own process, one
after the other, on this machine. Prints each system's answering time for
both, the ratio, and how many answers are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def evaluate(tree: Path, system: str, workdir: Path, eval_file: Path, out: Path) -> dict:
    adapter = ["--model", str(workdir / "adapter" / "final")] if system in ("finetuned", "hybrid") else []
    index = ["--index", str(workdir / "rag_index"), "--top-k", "1"] if system in ("rag", "hybrid") else []  # the pipeline's top_k
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": f"sqlite:///{out.parent}/mlflow.db"}
    subprocess.run(
        [sys.executable, "-m", "dyag_mlops.cli", f"evaluate-{system}", str(eval_file), *adapter, *index, "--output", str(out)],
        cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True, help="a pipeline workdir (rag_index/, adapter/final/)")
    parser.add_argument("--baseline", default="HEAD~1", help="git revision to compare with")
    parser.add_argument("--systems", default="rag,hybrid")
    parser.add_argument("--eval-file", default="", help="questions of the workdir's corpus (default: the demo's, both halves)")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    resources = ROOT / "dyag_mlops" / "resources"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        eval_file = Path(args.eval_file).resolve() if args.eval_file else tmp / "questions.jsonl"
        if not args.eval_file:
            eval_file.write_text("".join((resources / f"demo_eval_{half}.jsonl").read_text("utf-8") for half in ("dev", "test")), "utf-8")
        baseline = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True, capture_output=True)
        try:
            for system in args.systems.split(","):
                old = evaluate(baseline, system, workdir, eval_file, tmp / f"old_{system}.json")
                new = evaluate(ROOT, system, workdir, eval_file, tmp / f"new_{system}.json")
                same = sum(a["generated_answer"] == b["generated_answer"] for a, b in zip(old["results"], new["results"]))
                n = len(old["results"])
                t_old, t_new = n / old["metrics"]["questions_per_second"], n / new["metrics"]["questions_per_second"]
                print(f"{system:8s} {args.baseline}: {t_old:6.1f} s   this tree: {t_new:6.1f} s   "
                      f"ratio {t_old / t_new:4.2f}x   identical answers {same}/{n}   "
                      f"correct {old['metrics']['correct']:.3f} -> {new['metrics']['correct']:.3f}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
