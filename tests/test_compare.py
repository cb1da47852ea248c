import json
import uuid

import mlflow
import pytest

from dyag_mlops.config import CompareConfig, EvaluateConfig, SystemSpec
from dyag_mlops.errors import DyagError
from dyag_mlops.evaluation import compare
from dyag_mlops.evaluation.evaluate import QUALITY_METRICS
from dyag_mlops.systems.predictor import log_system_model
from dyag_mlops.tracking import stage_run


@pytest.fixture()
def experiment(monkeypatch):
    name = f"compare-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    return name


def fake_evaluate_run(tmp_path, system, correct, seconds=1.0, digest="d1", model_base=None, labels=None):
    """An evaluate run with known per-question scores (and labels)."""
    rows = [
        {"question": f"q{i}", "expected_answer": "a", "generated_answer": "a" if c else "b", "success": True,
         **{m: float(c) for m in QUALITY_METRICS}, "time_seconds": seconds, "tokens": 3, "sources": [], "doc_id": None,
         "labels": labels[i] if labels else {}, "error": None}
        for i, c in enumerate(correct)
    ]
    metrics = {m: sum(r[m] for r in rows) / len(rows) for m in QUALITY_METRICS}
    metrics.update(success_rate=1.0, avg_time_seconds=seconds, avg_tokens=3.0, questions_per_second=1 / seconds)
    path = tmp_path / f"results_{system}_{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"metadata": {"system": system, "eval_digest": digest, "base_model": "tiny"}, "metrics": metrics, "results": rows}))
    with stage_run("evaluate", EvaluateConfig(system=system), tags={"dyag.system": system, "dyag.eval_digest": digest}) as tracker:
        tracker.log_metrics(metrics)
        tracker.log_artifact(path, "results")
        if model_base:
            log_system_model(tracker, tmp_path, SystemSpec("base", base_model=str(model_base), max_new_tokens=4))
    return tracker.run_id, path


def config(tmp_path, experiment, **kw):
    return CompareConfig(**{"experiment": experiment, "output_dir": str(tmp_path / "cmp"), "register": False, "n_bootstrap": 500, **kw})


def test_clear_winner_and_lower_is_better(tmp_path, experiment):
    fake_evaluate_run(tmp_path, "rag", [1] * 45 + [0] * 5, seconds=2.0)
    fake_evaluate_run(tmp_path, "finetuned", [1] * 15 + [0] * 35, seconds=0.5)
    report = compare.run(config(tmp_path, experiment))
    assert report["winner"] == "rag"
    assert report["metrics"]["correct"]["winner"] == "rag" and report["metrics"]["correct"]["ci"][0] > 0
    assert report["metrics"]["avg_time_seconds"]["direction"] == "lower"
    assert report["metrics"]["avg_time_seconds"]["winner"] == "finetuned"
    assert report["metrics"]["avg_time_seconds"]["speedup"] == pytest.approx(4.0)
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # pyplot holds no figure of the chart afterwards
    assert "| correct |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert any("rag" in r for r in report["recommendations"])


def test_the_report_gives_each_system_s_correct_per_label(tmp_path, experiment):
    labels = [{"category": "status"}] * 20 + [{"category": "contacts", "difficulty": "hard"}] * 10
    fake_evaluate_run(tmp_path, "rag", [1] * 20 + [0] * 10, labels=labels)
    fake_evaluate_run(tmp_path, "finetuned", [0] * 20 + [1] * 5 + [0] * 5, labels=labels)
    report = compare.run(config(tmp_path, experiment))
    assert report["breakdown"]["category"] == {
        "contacts": {"questions": 10, "rag": 0.0, "finetuned": 0.5},
        "status": {"questions": 20, "rag": 1.0, "finetuned": 0.0},
    }
    assert report["breakdown"]["difficulty"] == {"hard": {"questions": 10, "rag": 0.0, "finetuned": 0.5}}
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## correct by category" in markdown and "| contacts | 10 | " in markdown


def test_a_difference_that_is_not_significant_is_a_tie(tmp_path, experiment):
    fake_evaluate_run(tmp_path, "rag", [1, 0] * 10 + [1])
    fake_evaluate_run(tmp_path, "hybrid", [0, 1] * 10 + [0])
    report = compare.run(config(tmp_path, experiment))
    assert report["metrics"]["correct"]["winner"] == "tie"
    assert report["winner"] in ("rag", "hybrid")


def test_different_eval_sets_are_refused_unless_forced(tmp_path, experiment):
    fake_evaluate_run(tmp_path, "rag", [1, 1, 0], digest="aaa")
    fake_evaluate_run(tmp_path, "base", [0, 1, 0], digest="bbb")
    with pytest.raises(DyagError, match="different eval sets"):
        compare.run(config(tmp_path, experiment))
    assert compare.run(config(tmp_path, experiment, force=True))["winner"]


def test_seed_json_files_are_accepted(tmp_path, experiment):
    _, rag = fake_evaluate_run(tmp_path, "rag", [1] * 30)
    _, ft = fake_evaluate_run(tmp_path, "finetuned", [0] * 30)
    report = compare.run(config(tmp_path, experiment, rag_results=str(rag), finetuned_results=str(ft)))
    assert report["winner"] == "rag"


def test_registry_promotion_and_rollback(tmp_path, experiment, tiny_model_dir):
    name = f"qa-{uuid.uuid4().hex[:6]}"
    reg = dict(register=True, registered_model=name)
    fake_evaluate_run(tmp_path, "base", [0] * 40)
    fake_evaluate_run(tmp_path, "rag", [1] * 20 + [0] * 20, model_base=tiny_model_dir)
    first = compare.run(config(tmp_path, experiment, **reg))
    assert first["registry"]["promoted"]

    # a challenger that is not significantly better is registered, not promoted
    fake_evaluate_run(tmp_path, "rag", [1] * 21 + [0] * 19, model_base=tiny_model_dir)
    second = compare.run(config(tmp_path, experiment, **reg))
    assert not second["registry"]["promoted"]

    # a clearly better one is promoted; the former champion becomes `previous`
    fake_evaluate_run(tmp_path, "rag", [1] * 40, model_base=tiny_model_dir)
    third = compare.run(config(tmp_path, experiment, **reg))
    assert third["registry"]["promoted"]
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(name, "champion").version == third["registry"]["version"]
    assert client.get_model_version_by_alias(name, "previous").version == first["registry"]["version"]

    rolled = compare.rollback(name)
    assert rolled["champion"] == first["registry"]["version"]
    assert client.get_model_version_by_alias(name, "champion").version == first["registry"]["version"]

    # a person promotes a version by hand (dyag registry promote, the app's button): same aliases
    chosen = compare.promote(name, second["registry"]["version"])
    assert chosen == {"name": name, "champion": str(second["registry"]["version"]), "demoted": str(first["registry"]["version"])}
    assert client.get_model_version_by_alias(name, "previous").version == first["registry"]["version"]
    with pytest.raises(DyagError, match="has no version '99'"):
        compare.promote(name, "99")
    compare.rollback(name)

    # the champion loads as a pyfunc model that answers questions
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    import pandas as pd

    assert model.metadata.get_input_schema().input_names() == ["question"]  # the signature the UI shows
    answers = model.predict(pd.DataFrame({"question": ["Quel est le statut de SIRENA ?"]}))
    assert list(answers.columns) == ["answer", "sources", "error"] and len(answers) == 1
    assert answers["error"][0] == ""
    # a row that is not a question is refused, never answered; the others are answered
    mixed = model.predict(pd.DataFrame({"question": ["Quel est le statut de SIRENA ?", "", 42]}))
    assert list(mixed["error"]) == ["", "question must be a non-empty string", "question must be a non-empty string"]
    assert list(mixed["answer"][1:]) == ["", ""]
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['question'\]"):
        model.predict(pd.DataFrame({"q": ["Quel est le statut de SIRENA ?"]}))
    with pytest.raises(mlflow.exceptions.MlflowException, match="non-empty string"):
        model.predict(pd.DataFrame({"question": [None]}))


def test_a_winner_on_few_questions_is_registered_not_promoted(tmp_path, experiment, tiny_model_dir):
    name = f"qa-{uuid.uuid4().hex[:6]}"
    fake_evaluate_run(tmp_path, "base", [0] * 5)
    fake_evaluate_run(tmp_path, "rag", [1] * 5, model_base=tiny_model_dir)
    report = compare.run(config(tmp_path, experiment, register=True, registered_model=name))
    assert report["winner"] == "rag" and not report["registry"]["promoted"]
    assert "--min-questions 20" in report["registry"]["decision"]
    told = compare.run(config(tmp_path, experiment, register=True, registered_model=name, min_questions=5))
    assert told["registry"]["promoted"]


def test_results_written_under_an_older_correct_rule_are_rescored(tmp_path):
    row = {"question": "Combien de lycées publics sont recensés dans LYCEO ?", "expected_answer": "142 lycées publics",
           "generated_answer": "142", "exact_match": 0.0, "token_f1": 0.5, "contains": 0.0, "correct": 0.0, "error": None}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"metadata": {"system": "rag"}, "metrics": {"correct": 0.0}, "results": [row, {**row, "error": "boom"}]}))
    result = compare.results_from_file(str(path), "rag")
    assert [r["correct"] for r in result.rows] == [1.0, 0.0] and result.metrics["correct"] == 0.5


def test_a_logged_model_installs_without_this_checkout(tmp_path, tiny_model_dir):
    """Its requirements name only packages an index has, and the package travels as code."""
    from pathlib import Path

    from dyag_mlops.config import EvaluateConfig

    with stage_run("evaluate", EvaluateConfig(system="base")) as tracker:
        uri = log_system_model(tracker, tmp_path, SystemSpec("base", base_model=str(tiny_model_dir), max_new_tokens=4))
    local = Path(mlflow.artifacts.download_artifacts(uri))
    requirements = (local / "requirements.txt").read_text().split()
    assert not any(r.startswith("dyag-mlops") or "+" in r for r in requirements), requirements
    assert any(r.startswith("torch==") for r in requirements)
    assert (local / "code" / "dyag_mlops" / "systems" / "predictor.py").is_file()
