"""The shared servers of scripts/services.sh (PostgreSQL, an MLflow server on it
with proxied artifacts, a ChromaDB server) and the pipeline run against them,
on the tiny model. Skipped, with the reason, where PostgreSQL cannot be installed."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def services():
    import shutil
    import tempfile

    # Not under pytest's private tmp folder: PostgreSQL runs as its own user and must reach its data.
    folder = Path(tempfile.mkdtemp(prefix="dyag-services-"))
    folder.chmod(0o755)
    env = {**os.environ, "DYAG_SERVICES": str(folder), "PG_PORT": str(free_port()),
           "MLFLOW_PORT": str(free_port()), "CHROMA_PORT": str(free_port())}
    up = subprocess.run(["bash", "scripts/services.sh", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if up.returncode != 0 and "PostgreSQL is not installed" in up.stderr:
        pytest.skip(up.stderr.strip())
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    yield env
    subprocess.run(["bash", "scripts/services.sh", "down"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)


def test_services_answer_and_stop(services):
    status = subprocess.run(["bash", "scripts/services.sh", "status"], cwd=ROOT, env=services, capture_output=True, text=True)
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["postgres", "running"], ["mlflow", "running"], ["chroma", "running"]]


def test_the_pipeline_runs_against_the_servers(services, tiny_model_dir, tmp_path):
    tracking = f"http://127.0.0.1:{services['MLFLOW_PORT']}"
    env = {**services, "MLFLOW_TRACKING_URI": tracking, "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # earlier tests' runs leave it set
    cmd = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "services",
           "-P", f"base_model={tiny_model_dir}", "-P", "epochs=0.05", "-P", "limit=4", "-P", f"workdir={tmp_path / 'work'}",
           "-P", "systems=base,rag,hybrid", "-P", "registered_model=services-qa", "-P", "min_questions=1",
           "-P", f"chroma_host=127.0.0.1:{services['CHROMA_PORT']}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # a second client sees the runs, the artifacts (through the server) and the champion
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    experiment = client.get_experiment_by_name("services")
    runs = client.search_runs([experiment.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 8  # parent, index, generate, finetune, 3 evaluate, compare
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    champion = client.get_model_version_by_alias("services-qa", "champion")
    assert champion.tags["dyag.system"] in ("base", "rag", "hybrid")
    stored = Path(services["DYAG_SERVICES"]) / "artifacts"
    assert any(stored.rglob("comparison.md")), "artifacts go to the server's store, not the client's disk"
    manifest = (tmp_path / "work" / "rag_index" / "index_manifest.json").read_text()
    assert f"127.0.0.1:{services['CHROMA_PORT']}" in manifest
