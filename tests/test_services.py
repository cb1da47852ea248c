"""The shared servers of scripts/services.sh (PostgreSQL, an MLflow server on it
with proxied artifacts, a ChromaDB server) and the pipeline run against them,
on the tiny model. Skipped, with the reason, where PostgreSQL cannot be installed."""

import json
import os
import socket
import signal
import subprocess
import sys
import time
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


def pipeline_command(services: dict, tiny_model_dir: Path, work: Path, experiment: str, *params: str) -> list[str]:
    return ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", experiment,
            "-P", f"base_model={tiny_model_dir}", "-P", "epochs=0.05", "-P", "limit=4", "-P", f"workdir={work}",
            "-P", "min_questions=1", "-P", f"chroma_host=127.0.0.1:{services['CHROMA_PORT']}", *params]


def client_env(services: dict) -> dict:
    env = {**services, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{services['MLFLOW_PORT']}", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    return env


def test_services_answer_and_stop(services):
    status = subprocess.run(["bash", "scripts/services.sh", "status"], cwd=ROOT, env=services, capture_output=True, text=True)
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["postgres", "running"], ["mlflow", "running"], ["chroma", "running"]]


def test_the_pipeline_runs_against_the_servers(services, tiny_model_dir, tmp_path):
    env = client_env(services)
    tracking = env["MLFLOW_TRACKING_URI"]
    cmd = pipeline_command(services, tiny_model_dir, tmp_path / "work", "services",
                           "-P", "systems=base,rag,hybrid", "-P", "registered_model=services-qa")
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


def test_corpora_on_one_chroma_server_keep_their_own_collections(services, tmp_path):
    """By default each corpus gets its own collection on the server; a named
    collection shared by two corpora, or holding another embedding model's
    vectors, is refused, not replaced; an index whose collection another
    writer replaced says so instead of answering from it."""
    import chromadb

    from conftest import write_jsonl
    from dyag_mlops.config import IndexConfig
    from dyag_mlops.errors import DyagError
    from dyag_mlops.retrieval import rag

    host = f"127.0.0.1:{services['CHROMA_PORT']}"
    other = write_jsonl(tmp_path / "other.jsonl", [
        {"id": f"pkg{i}", "content": f"Package: tool{i}\nVersion: 1.{i}\nMaintainer: Team {i}"} for i in range(5)])
    demo = rag.run(IndexConfig(index=str(tmp_path / "demo"), chroma_host=host))
    mine = rag.run(IndexConfig(corpus=str(other), index=str(tmp_path / "other"), chroma_host=host))
    assert demo.collection != mine.collection and demo.collection.startswith("dyag-")
    again = rag.run(IndexConfig(index=str(tmp_path / "demo-again"), chroma_host=host))  # another client, same corpus
    assert again.collection == demo.collection and again.chunks_embedded == 0
    with rag.Retriever(str(tmp_path / "demo")) as retriever, rag.Retriever(str(tmp_path / "other")) as others:
        assert retriever.collection.count() == demo.chunks_total and others.collection.count() == 5

    rag.run(IndexConfig(index=str(tmp_path / "a"), chroma_host=host, collection="team"))
    with pytest.raises(DyagError, match="'team' on .* holds another corpus"):
        rag.run(IndexConfig(corpus=str(other), index=str(tmp_path / "b"), chroma_host=host, collection="team"))
    rag.run(IndexConfig(corpus=str(other), index=str(tmp_path / "b"), chroma_host=host, collection="team", rebuild=True))
    with pytest.raises(DyagError, match="another writer changed it"):
        rag.Retriever(str(tmp_path / "a"))

    client = chromadb.HttpClient(host="127.0.0.1", port=int(services["CHROMA_PORT"]))
    client.get_collection("team").modify(metadata={rag.OWNER_MODEL: "intfloat/multilingual-e5-small"})
    with pytest.raises(DyagError, match="embedding model 'intfloat/multilingual-e5-small'"):
        rag.run(IndexConfig(corpus=str(other), index=str(tmp_path / "b"), chroma_host=host, collection="team"))


def test_two_writers_of_one_corpus_fill_one_collection(services, tmp_path):
    host = f"127.0.0.1:{services['CHROMA_PORT']}"
    env = {**services, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    writers = [
        subprocess.Popen([sys.executable, "-m", "dyag_mlops.cli", "index-rag", "--index", str(tmp_path / f"w{i}"),
                          "--chroma-host", host, "--collection", "shared"], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()[-2000:]
    from dyag_mlops.retrieval import rag

    with rag.Retriever(str(tmp_path / "w0")) as first, rag.Retriever(str(tmp_path / "w1")) as second:
        assert first.collection.count() == second.collection.count() == first.manifest["chunks"]
        assert first.retrieve(["Quel est le statut de SIRENA ?"], top_k=1)[0][0].doc_id == second.retrieve(["Quel est le statut de SIRENA ?"], top_k=1)[0][0].doc_id


def test_two_pipelines_of_different_corpora_at_once(services, tiny_model_dir, tmp_path):
    """Two clients, one server, two corpora at the same time: every run
    finishes, and each comparison holds its own corpus's evaluations only."""
    env = client_env(services)
    debian = ROOT / "corpora" / "debian"
    commands = {
        "demo": pipeline_command(services, tiny_model_dir, tmp_path / "demo", "together-demo", "-P", "systems=base,rag"),
        "debian": pipeline_command(services, tiny_model_dir, tmp_path / "debian", "together-debian", "-P", "systems=base,rag",
                                   "-P", f"corpus={debian / 'corpus.jsonl'}", "-P", f"eval_file={debian / 'eval_dev.jsonl'}"),
    }
    started = {name: subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name, cmd in commands.items()}
    for name, proc in started.items():
        assert proc.wait(timeout=900) == 0, f"{name}: {proc.stderr.read()[-3000:]}"

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    digests = set()
    for name in commands:
        experiment = client.get_experiment_by_name(f"together-{name}")
        runs = client.search_runs([experiment.experiment_id])
        assert runs and all(r.info.status == "FINISHED" for r in runs)
        evaluations = [r for r in runs if r.data.tags.get("dyag.stage") == "evaluate"]
        assert sorted(r.data.tags["dyag.system"] for r in evaluations) == ["base", "rag"]
        compare = next(r for r in runs if r.data.tags.get("dyag.stage") == "compare")
        report = json.loads(Path(client.download_artifacts(compare.info.run_id, "comparison.json", str(tmp_path))).read_text())
        assert set(report["runs"].values()) == {r.info.run_id for r in evaluations}, "a comparison took another pipeline's run"
        assert {r.data.tags["dyag.eval_digest"] for r in evaluations} == {compare.data.tags["dyag.eval_digest"]}
        digests.add(compare.data.tags["dyag.eval_digest"])
    assert len(digests) == 2


def wait_for_stage(client, experiment_name: str, stage: str, proc: subprocess.Popen) -> None:
    """Until a run of `stage` exists in the experiment (the pipeline is in that stage)."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment and client.search_runs([experiment.experiment_id], f"tags.`dyag.stage` = '{stage}'"):
            return
        time.sleep(0.2)
    pytest.fail(f"the pipeline ended before its {stage} stage began: {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def test_postgresql_restarted_mid_pipeline_loses_nothing(services, tiny_model_dir, tmp_path):
    """The MLflow server's database restarts while a pipeline runs: the
    server reconnects (MLflow's client retries what failed meanwhile) and every run finishes."""
    env = client_env(services)
    command = pipeline_command(services, tiny_model_dir, tmp_path / "work", "pg-restart", "-P", "systems=base,rag,hybrid")
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_stage(client, "pg-restart", "finetune", proc)
    bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(Path(services["DYAG_SERVICES"]) / "pg"), "-l",
                    str(Path(services["DYAG_SERVICES"]) / "logs" / "postgres.log"), "-w", "restart", "-m", "fast"],
                   check=True, capture_output=True, env={**os.environ, "PATH": f"{os.environ['PATH']}:/usr/sbin:/sbin"})
    assert proc.wait(timeout=900) == 0, proc.stderr.read()[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("pg-restart").experiment_id])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    assert client.get_model_version_by_alias("dyag-qa", "champion")


def test_a_tracking_server_lost_mid_pipeline_is_named_and_the_rerun_resumes(services, tiny_model_dir, tmp_path):
    """The MLflow server stops while a pipeline runs: the client fails with
    the server's address; once the server is back, the same command reuses
    the stages that finished. (Last in this module: it restarts the server.)"""
    env = {**client_env(services), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    command = pipeline_command(services, tiny_model_dir, tmp_path / "work", "server-lost", "-P", "systems=base,rag,hybrid")
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_stage(client, "server-lost", "finetune", proc)
    server = Path(services["DYAG_SERVICES"]) / "mlflow.pid"
    os.kill(int(server.read_text()), signal.SIGTERM)
    assert proc.wait(timeout=600) != 0
    stderr = proc.stderr.read()
    assert f"the tracking server http://127.0.0.1:{services['MLFLOW_PORT']} stopped answering" in stderr, stderr[-3000:]

    up = subprocess.run(["bash", "scripts/services.sh", "up"], cwd=ROOT, env=services, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    experiment = client.get_experiment_by_name("server-lost")
    indexed = client.search_runs([experiment.experiment_id], "tags.`dyag.stage` = 'index_rag'")
    assert len(indexed) == 1, "the index built before the loss is reused"
    compare = client.search_runs([experiment.experiment_id], "tags.`dyag.stage` = 'compare'")
    assert [r.info.status for r in compare] == ["FINISHED"]
