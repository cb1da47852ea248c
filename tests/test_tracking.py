import os

import mlflow

from dyag_mlops.config import GenerateConfig
from dyag_mlops.tracking import stage_run


def test_stage_run_tags_and_logs_config():
    config = GenerateConfig(count=3)
    with stage_run("generate_training", config) as tracker:
        run_id = tracker.run_id
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dyag.stage"] == "generate_training"
    assert "dyag.git_commit" in run.data.tags and "dyag.config_hash" in run.data.tags
    assert run.data.params["count"] == "3"
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id)]
    assert "config.yaml" in artifacts


def test_stage_run_joins_an_active_run_without_param_clash(monkeypatch):
    """How `mlflow run` calls an entry point: the run exists (MLFLOW_RUN_ID)
    and already holds the parameters as typed on the command line."""
    mlflow.set_experiment("dyag-tests")
    with mlflow.start_run() as outer:
        mlflow.log_param("val_ratio", "1e-1")  # same value, other spelling
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    with stage_run("generate_training", GenerateConfig()) as tracker:
        assert tracker.run_id == outer.info.run_id
    run = mlflow.get_run(outer.info.run_id)
    assert run.data.params["val_ratio"] == "1e-1"
    assert run.data.tags["dyag.stage"] == "generate_training"


def test_failed_stage_marks_run_failed():
    import pytest

    with pytest.raises(RuntimeError):
        with stage_run("generate_training", GenerateConfig()) as tracker:
            run_id = tracker.run_id
            raise RuntimeError("boom")
    assert mlflow.get_run(run_id).info.status == "FAILED"


def test_sigterm_ends_the_run_killed_and_restores_the_handler():
    """kill, timeout or a scheduler send SIGTERM: the run must not be left
    RUNNING for ever (the default action kills the process on the spot)."""
    import signal

    import pytest

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with stage_run("generate_training", GenerateConfig()) as tracker:
            run_id = tracker.run_id
            os.kill(os.getpid(), signal.SIGTERM)
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_in_a_pipeline_step_kills_the_step_and_the_pipeline():
    import signal

    import pytest

    from dyag_mlops.config import PipelineConfig

    with pytest.raises(KeyboardInterrupt):
        with stage_run("main", PipelineConfig()) as parent:
            with stage_run("generate_training", GenerateConfig(), nested=True) as child:
                os.kill(os.getpid(), signal.SIGTERM)
    assert mlflow.get_run(child.run_id).info.status == "KILLED"
    assert mlflow.get_run(parent.run_id).info.status == "KILLED"


def test_an_interrupted_command_exits_130_with_one_line():
    import pytest

    from dyag_mlops.cli import friendly

    @friendly
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        interrupted()
    assert exit_info.value.code == 130


def test_a_lost_tracking_server_is_named_without_its_password(monkeypatch, capsys):
    from dyag_mlops.errors import report

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:secret@tracking.example:5000")
    lost = Exception("API request to http://tracking.example:5000/api/2.0/mlflow/runs/log-batch failed: Max retries exceeded")
    assert report(lost) == 1
    said = capsys.readouterr().err
    assert "the tracking server http://alice:***@tracking.example:5000 stopped answering" in said and "secret" not in said
    assert report(Exception("Max retries exceeded with url: http://elsewhere:80")) == 1
    assert "stopped answering" not in capsys.readouterr().err  # another host: an ordinary failure


def test_a_store_dyag_creates_keeps_a_write_ahead_log_and_an_existing_one_its_mode(tmp_path, monkeypatch):
    import sqlite3
    from contextlib import closing

    from dyag_mlops.tracking import configure

    def mode(path):
        with closing(sqlite3.connect(path)) as connection:
            return connection.execute("PRAGMA journal_mode").fetchone()[0]

    session_store = mlflow.get_tracking_uri()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
        configure()
        assert mode(tmp_path / "new" / "mlflow.db") == "wal"
        existing = tmp_path / "old.db"
        mlflow.MlflowClient(f"sqlite:///{existing}").search_experiments(max_results=1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{existing}")
        configure()
        assert mode(existing) == "delete"
        # Both stores take runs as before.
        with stage_run("generate_training", GenerateConfig()) as tracker:
            run_id = tracker.run_id
        assert mlflow.MlflowClient(f"sqlite:///{existing}").get_run(run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(session_store)


def test_a_dataset_another_writer_inserts_at_the_same_moment_is_linked_not_an_error(tmp_path, monkeypatch):
    """Two stages logging one dataset at once: MLflow's lookup-then-insert
    loses the race in one of them with a unique-constraint error."""
    from mlflow.exceptions import MlflowException

    from conftest import write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}])
    real = mlflow.log_input
    raced = []

    def racing(dataset, context=None, **kwargs):
        if not raced:
            raced.append(True)
            with mlflow.start_run(nested=True):  # the other writer's run inserts it first
                real(dataset, context=context)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return real(dataset, context=context, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with stage_run("generate_training", GenerateConfig()) as tracker:
        tracker.log_dataset(data, context="train")
        run_id = tracker.run_id
    inputs = mlflow.get_run(run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["train.jsonl"] and raced


def test_clients_built_after_configure_do_not_look_for_an_absent_pyspark(monkeypatch):
    """Every MlflowClient looks for a running Spark. Where pyspark is absent,
    that lookup must not reach the import machinery: on the system-metrics
    thread it deadlocks with `mlflow.genai.evaluate`'s import hooks."""
    import importlib.util
    import sys

    import pytest

    from dyag_mlops.tracking import configure

    monkeypatch.delitem(sys.modules, "pyspark", raising=False)
    if importlib.util.find_spec("pyspark") is not None:
        pytest.skip("pyspark is installed: its import is cached after the first")
    asked = []

    class Recorder:
        def find_spec(self, name, path=None, target=None):
            asked.append(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Recorder(), *sys.meta_path])
    configure()
    asked.clear()
    mlflow.MlflowClient()
    assert not [name for name in asked if name.startswith("pyspark")]
