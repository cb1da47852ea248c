"""Concurrent requests to a served system: shared batches vs a thread each.

    HF_HUB_OFFLINE=1 python bench/bench_serve.py --model models:/dyag-qa@champion [--clients 8 --requests 5]
    python bench/bench_serve.py --http http://127.0.0.1:5001 [--clients 8 --requests 25]

`mlflow models serve` answers each request in a thread of its own. The
baseline lets every thread call the predictor at once; dyag's served model
queues them (predictor.SharedBatches), so the questions that arrived while
one batch was generated go in the next one. Both run in one process on the
same model, `--clients` clients sending `--requests` questions of the demo
dev half each. Reported: requests per second, the ratio, each mode's
slowest request. With `--http` the clients call a running server instead,
and its HTTP status codes are counted (a 5xx: a request it failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_questions(n: int) -> list[str]:
    rows = (ROOT / "dyag_mlops" / "resources" / "demo_eval_dev.jsonl").read_text("utf-8").splitlines()
    questions = [json.loads(r)["question"] for r in rows if r.strip()]
    return [questions[i % len(questions)] for i in range(n)]


def hammer(answer, questions: list[str], clients: int) -> dict:
    """`clients` threads, each sending its share of `questions` one at a time;
    `answer` returns an HTTP status (or None in process)."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def client(mine: list[str]) -> None:
        for question in mine:
            began = time.perf_counter()
            code = answer([question])
            with lock:
                latencies.append(time.perf_counter() - began)
                if isinstance(code, int):
                    codes[str(code)] = codes.get(str(code), 0) + 1

    threads = [threading.Thread(target=client, args=(questions[i::clients],)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": round(wall, 2),
        "requests_per_second": round(len(latencies) / wall, 3),
        "median_latency_s": round(latencies[len(latencies) // 2], 2),
        "max_latency_s": round(latencies[-1], 2),
        **({"status_codes": codes} if codes else {}),
    }


def http_answer(url: str):
    import urllib.error
    import urllib.request

    def answer(questions: list[str]) -> int:
        body = json.dumps({"dataframe_records": [{"question": q} for q in questions]}).encode()
        request = urllib.request.Request(url.rstrip("/") + "/invocations", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/dyag-qa@champion")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--http", default="", help="URL of a running `mlflow models serve` to send the requests to")
    args = parser.parse_args()
    if args.http:
        questions = load_questions(args.clients * args.requests)
        print(json.dumps({"server": args.http, "clients": args.clients, **hammer(http_answer(args.http), questions, args.clients)}, indent=2))
        return

    import mlflow

    from dyag_mlops.systems.predictor import SharedBatches
    from dyag_mlops.tracking import configure

    configure()
    predictor = mlflow.pyfunc.load_model(args.model).unwrap_python_model().predictor
    questions = load_questions(args.clients * args.requests)
    predictor.answer(questions[:2])  # warm-up: first-call allocations are not the point
    results = {
        "threads": hammer(predictor.answer, questions, args.clients),
        "shared_batches": hammer(SharedBatches(predictor.answer).answer, questions, args.clients),
    }
    results["speed_up"] = round(results["shared_batches"]["requests_per_second"] / results["threads"]["requests_per_second"], 2)
    print(json.dumps({"model": args.model, "system": predictor.system, "clients": args.clients, **results}, indent=2))


if __name__ == "__main__":
    main()
