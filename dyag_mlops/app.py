"""dyag app: a local web page to ask candidate models the same question and
choose the champion by eye.

Everything comes from the tracking store: the candidates are the registered
versions of a model (with their aliases) and the four systems of the latest
pipeline run; the questions and expected answers are that run's eval set;
the comparison is the latest compare run's table; the promote button calls
the same code as `dyag registry promote`. A FastAPI app (the web stack
MLflow itself serves with) and one HTML page.
"""


import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from dyag_mlops.errors import DyagError

PAGE = Path(__file__).parent / "resources" / "app.html"
LOADED_MODELS = 4  # models kept loaded between questions


def latest_run(client: Any, experiment_id: str, stage: str, parent: str = "") -> Any:
    """The newest finished run of a stage (under `parent` when given), or None."""
    query = f"tags.`dyag.stage` = '{stage}' and attributes.status = 'FINISHED'"
    if parent:
        query += f" and tags.`mlflow.parentRunId` = '{parent}'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


class Store:
    """What the page shows, read from the tracking store."""

    def __init__(self, registered_model: str, experiment: str):
        import os

        import mlflow

        from dyag_mlops.tracking import DEFAULT_EXPERIMENT, configure

        configure()
        self.client = mlflow.MlflowClient()
        self.registered_model = registered_model
        experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise DyagError(f"--experiment {experiment}: no such experiment in the tracking store (run the pipeline first)")
        self.experiment_id = found.experiment_id

    def pipeline_runs(self) -> tuple[Any, list[Any]]:
        parent = latest_run(self.client, self.experiment_id, "main")
        if parent is None:
            return None, []
        evaluations = self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`dyag.stage` = 'evaluate'"
        )
        return parent, sorted(evaluations, key=lambda r: r.data.tags.get("dyag.system", ""))

    def candidates(self) -> list[dict]:
        """Registered versions (newest first, aliases named) and the systems of the latest pipeline run."""
        from mlflow.exceptions import MlflowException

        found = []
        try:
            model = self.client.get_registered_model(self.registered_model)
            versions = self.client.search_model_versions(f"name = '{self.registered_model}'")
        except MlflowException:
            model, versions = None, []
        aliases: dict[str, list[str]] = {}
        for alias, version in ((model.aliases or {}) if model else {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for v in sorted(versions, key=lambda v: -int(v.version)):
            named = f" @{', @'.join(sorted(aliases[str(v.version)]))}" if str(v.version) in aliases else ""
            found.append({
                "uri": f"models:/{self.registered_model}/{v.version}",
                "label": f"{self.registered_model} v{v.version}{named} ({v.tags.get('dyag.system', '?')})",
            })
        parent, evaluations = self.pipeline_runs()
        for run in evaluations:
            if uri := run.data.tags.get("dyag.model_uri"):
                found.append({"uri": uri, "label": f"{run.data.tags.get('dyag.system')} of {parent.info.run_name}"})
        return found

    def questions(self) -> list[dict]:
        """The eval set of the latest pipeline run: question, expected answer."""
        from dyag_mlops.data.evalset import demo_eval_path, load_eval_set

        _, evaluations = self.pipeline_runs()
        if not evaluations:
            return []
        path = evaluations[0].data.params.get("eval_file") or str(demo_eval_path())
        if not Path(path).is_file():
            return []
        return [{"question": i.question, "expected": i.expected} for i in load_eval_set(path)]

    def comparison(self) -> dict:
        """The latest compare run: its table (system x metric), verdict and run id."""
        import json

        import mlflow

        run = latest_run(self.client, self.experiment_id, "compare")
        if run is None:
            return {}
        table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/comparison_table.json") if self._has(run, "comparison_table.json") else {}
        rows = [dict(zip(table["columns"], row)) for row in table.get("data", [])] if table else []
        return {"run_id": run.info.run_id, "summary": run.data.tags.get("mlflow.note.content", ""), "rows": json.loads(json.dumps(rows, default=str))}

    def _has(self, run: Any, path: str) -> bool:
        return any(a.path == path for a in self.client.list_artifacts(run.info.run_id))

    def promote(self, version: str) -> dict:
        """The registry rule of `dyag registry promote`, once a compare run exists."""
        from dyag_mlops.evaluation.compare import promote

        if latest_run(self.client, self.experiment_id, "compare") is None:
            raise DyagError("no compare run in this experiment: nothing decides what to promote (run the pipeline or dyag compare-models)")
        return promote(self.registered_model, version)


class Answerer:
    """Loaded candidate models (the few last used), answering one question."""

    def __init__(self, capacity: int = LOADED_MODELS):
        self.capacity = capacity
        self.models: OrderedDict[str, Any] = OrderedDict()

    def model(self, uri: str) -> Any:
        import mlflow

        if uri in self.models:
            self.models.move_to_end(uri)
        else:
            self.models[uri] = mlflow.pyfunc.load_model(uri)
            while len(self.models) > self.capacity:
                self.models.popitem(last=False)
        return self.models[uri]

    def ask(self, uri: str, question: str, expected: str = "") -> dict:
        import pandas as pd

        from dyag_mlops.evaluation.evaluate import is_correct, question_scores

        began = time.perf_counter()
        try:
            model = self.model(uri)
            began = time.perf_counter()  # the answer's time, not the first load's
            row = model.predict(pd.DataFrame({"question": [question]})).iloc[0]
            answer, sources, error = str(row["answer"]), [s for s in str(row["sources"]).split(",") if s], str(row["error"])
        except Exception as exc:  # one candidate failing does not hide the others' answers
            answer, sources, error = "", [], f"{type(exc).__name__}: {exc}"
        result = {"uri": uri, "answer": answer, "sources": sources, "error": error, "seconds": round(time.perf_counter() - began, 2)}
        if expected:
            from rouge_score import rouge_scorer

            scores = question_scores(answer, expected, rouge_scorer.RougeScorer(["rougeL"]))
            result["correct"] = bool(answer) and is_correct(answer, expected, scores, question)
        return result


def make_app(store: Store, answerer: Answerer) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse
    from pydantic import BaseModel

    class Ask(BaseModel):
        question: str
        candidates: list[str]
        expected: str = ""

    class Promote(BaseModel):
        version: str

    # (no `from __future__ import annotations` in this module: FastAPI reads
    # these local classes from the handlers' annotations)
    app = FastAPI(title="dyag app")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text("utf-8")

    @app.get("/api/candidates")
    def candidates() -> list[dict]:
        return store.candidates()

    @app.get("/api/questions")
    def questions() -> list[dict]:
        return store.questions()

    @app.post("/api/ask")
    def ask(request: Ask) -> list[dict]:
        if not request.question.strip():
            raise HTTPException(400, "type a question")
        if not request.candidates:
            raise HTTPException(400, "choose at least one candidate")
        return [answerer.ask(uri, request.question, request.expected) for uri in request.candidates]

    @app.get("/api/comparison")
    def comparison() -> dict:
        return store.comparison()

    @app.post("/api/promote")
    def promote(request: Promote) -> dict:
        try:
            return store.promote(request.version)
        except DyagError as exc:
            raise HTTPException(400, str(exc)) from None

    return app


def serve(registered_model: str, experiment: str, host: str, port: int, open_browser: bool) -> None:
    import threading
    import webbrowser

    import uvicorn

    app = make_app(Store(registered_model, experiment), Answerer())
    url = f"http://{host}:{port}/"
    print(f"dyag app on {url} (Ctrl-C stops it)")
    if open_browser:
        threading.Timer(1.5, webbrowser.open, [url]).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
