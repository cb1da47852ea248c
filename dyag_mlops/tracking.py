"""MLflow tracking behind one small interface.

`stage_run(stage, config)` opens (or joins) an MLflow run, tags it, logs the
resolved config as params and as `config.yaml`, and yields a `Tracker`. Stage
cores only ever talk to a Tracker; `NullTracker` has the same methods and does
nothing, so code paths that run without MLflow need no "is logging on?" branch.

Tracking URI: `MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db` in the
working directory. Experiment: `MLFLOW_EXPERIMENT_NAME`, default `dyag-mlops`.
Inside `mlflow run`, the run given by `MLFLOW_RUN_ID` is joined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

from dyag_mlops.data.files import exclusive_lock, file_digest, read_jsonl
from dyag_mlops.errors import DyagError, shown_uri

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "dyag-mlops"
SECRET_MARKERS = ("token", "api_key", "apikey", "secret", "password")


SYSTEM_METRIC_STAGES = ("finetune", "evaluate")
# Seconds a tracking server has to answer its health check: a store that is
# down is said at once, not after MLflow's minutes of retries.
STORE_TIMEOUT = 5.0
# Tries at logging a dataset input that a concurrent writer may be inserting too.
LOG_INPUT_TRIES = 3


def configure() -> str:
    """Set the tracking URI (env or sqlite default), checked once (check_store), and return it."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    _skip_absent_spark()
    if _sqlite_path(uri) is not None:
        _sync_at_checkpoints()
    create_local_store(uri)
    return uri


def _skip_absent_spark() -> None:
    """Mark an absent `pyspark` as absent in `sys.modules`, so importing it
    fails at once. The system-metrics thread builds an MlflowClient each
    sample, which imports pyspark to look for a running Spark; on Python
    3.11 that import runs MLflow's import hook under the global import lock,
    while `mlflow.genai.evaluate` holds the hook's lock and imports: the two
    threads wait on each other and the evaluate stage never ends."""
    import importlib.util
    import sys

    if "pyspark" not in sys.modules and importlib.util.find_spec("pyspark") is None:
        sys.modules["pyspark"] = None  # type: ignore[assignment]  # Python's "known absent" marker


@functools.lru_cache(maxsize=None)
def create_local_store(uri: str) -> None:
    """Create a new sqlite store's tables while holding a lock on its folder:
    two processes that create one store at once break MLflow's migrations."""
    path = _sqlite_path(uri)
    if path is None:
        return
    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.parent, f"the tracking store {uri}"):
        # Checked under the lock: a store another process is creating is
        # already a file with bytes in it, before its tables are all there.
        if path.is_file() and path.stat().st_size > 0:
            return
        _write_ahead_log(path)  # before MLflow's first connection, so each of them syncs at checkpoints
        MlflowClient(uri).search_experiments(max_results=1)


def _write_ahead_log(path: Path) -> None:
    """A store dyag creates keeps a write-ahead log (sqlite's WAL mode):
    `mlflow ui` reads while a stage writes, and a commit syncs the disk at
    checkpoints, not each time (synchronous=NORMAL, set per connection by
    `_sync_at_checkpoints`). MLflow commits every trace, span and
    assessment: the per-question view of an evaluation writes hundreds
    (docs/decisions/0006). A store that exists keeps its mode."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


@functools.lru_cache(maxsize=None)
def _sync_at_checkpoints() -> None:
    """synchronous=NORMAL on every sqlite connection of a store in WAL mode
    (sqlite's advice for WAL: the database stays consistent; a power cut may
    lose the last commits, not corrupt it)."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def sync_at_checkpoints(connection: Any, _record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            with contextlib.closing(connection.cursor()) as cursor:
                if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    cursor.execute("PRAGMA synchronous=NORMAL")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (None for any other)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@functools.lru_cache(maxsize=None)
def check_store(uri: str) -> None:
    """A DyagError, within seconds, when the tracking store cannot be used: a
    server that does not answer its health check, a local database or folder
    that cannot be written."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme
    way_out = "start it, or unset MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db"
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            # The health check needs no credentials; urllib would take "user:pw@" for the host.
            health = re.sub(r"//[^/@]+@", "//", uri.rstrip("/")) + "/health"
            with urllib.request.urlopen(health, timeout=STORE_TIMEOUT) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DyagError(f"tracking store {shown_uri(uri)} does not answer its health check ({reason}); {way_out}") from None
        return
    if scheme == "sqlite":
        path = _sqlite_path(uri)
    elif scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme == "file" else uri)
    else:
        return  # another backend (postgresql, databricks...): its own client reports
    if path is None or str(path) in ("", ":memory:"):
        return
    target = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(target, os.W_OK):
        raise DyagError(f"tracking store {uri}: {target} is not writable; point MLFLOW_TRACKING_URI elsewhere")


def git_commit() -> str:
    """The commit of the code that runs (the package's own checkout), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_params(config: Any) -> dict[str, str]:
    """Config as flat string params; fields that look like secrets are left out."""
    params = {}
    for key, value in dataclasses.asdict(config).items():
        if any(marker in key.lower() for marker in SECRET_MARKERS) and not key.endswith("_env"):
            continue
        params[key] = str(value)
    return params


# Parameters that say how a stage treats its output, not what it makes: left
# out of the hash, so a resumed run is found like the run it continues.
RUN_CONTROLS = frozenset({"resume", "overwrite"})


def config_hash(stage: str, config: Any) -> str:
    """Stable digest of a stage's parameters: a finished run with the same hash
    and commit can be reused by the pipeline instead of run again."""
    params = {k: v for k, v in config_params(config).items() if k not in RUN_CONTROLS}
    payload = json.dumps({"stage": stage, **params}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class NullTracker:
    """Same methods as Tracker; does nothing. For runs without MLflow."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_uri: str | None = None, dataset: Any = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, data: dict, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_table(self, data: dict[str, list], artifact_file: str) -> None: ...
    def log_dataset(self, path: str | Path, context: str, name: str | None = None, rows: list[dict] | None = None, digest: str = "") -> Any: ...
    def log_pyfunc_model(
        self, name: str, python_model: Any, artifacts: dict[str, str], as_input: bool = False, tags: dict[str, str] | None = None, **kwargs: Any
    ) -> str | None:
        return None

    def log_evaluation(self, rows: list[dict], metric_names: tuple[str, ...], model_uri: str | None, dataset: Any) -> None: ...


class Tracker(NullTracker):
    """Logs to the active MLflow run."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_uri: str | None = None, dataset: Any = None) -> None:
        """With `model_uri` (models:/m-...) and `dataset`, the metrics are also
        the logged model's, measured on that dataset (MLflow 3 lineage)."""
        import mlflow

        model_id = _model_id(model_uri)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id, dataset=dataset)

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        # `mlflow run` has already logged the entry point's parameters as typed
        # on the command line ("2e-4"); logging "0.0002" again under the same key
        # fails with "Changing param values is not allowed". Keep what is there.
        existing = mlflow.get_run(self.run_id).data.params
        fresh = {k: str(v) for k, v in params.items() if k not in existing}
        if fresh:
            mlflow.log_params(fresh)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifacts(str(path), artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_figure(figure, artifact_file)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        import mlflow

        mlflow.log_table(data=data, artifact_file=artifact_file)

    def log_dataset(self, path: str | Path, context: str, name: str | None = None, rows: list[dict] | None = None, digest: str = "") -> Any:
        """Log a JSONL file (or `rows` read from `path`, with their `digest`)
        as an MLflow dataset input (context train/val/test/eval/corpus), one
        column per field (dataset_frame); returns the dataset, to link
        metrics to it."""
        import warnings

        import mlflow

        path = Path(path)
        frame = dataset_frame(rows if rows is not None else [row for _, row in read_jsonl(path)])
        with warnings.catch_warnings():
            # A local path matches MLflow's "" and "file" sources, one class
            # twice: it warns that the source is ambiguous, and picks it.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                frame, source=str(path.resolve()), name=name or path.name, digest=digest or file_digest(path)
            )
        for attempt in range(LOG_INPUT_TRIES):
            try:
                mlflow.log_input(dataset, context=context)
                break
            except mlflow.exceptions.MlflowException as exc:
                # MLflow looks the dataset up, then inserts it: a second
                # process logging the same dataset in between breaks the
                # store's unique constraint. Logged again, it finds the
                # other's dataset and links it to this run.
                if "unique constraint" not in str(exc).lower() or attempt == LOG_INPUT_TRIES - 1:
                    raise
        return dataset

    def log_pyfunc_model(
        self, name: str, python_model: Any, artifacts: dict[str, str], as_input: bool = False, tags: dict[str, str] | None = None, **kwargs: Any
    ) -> str | None:
        """Log a pyfunc model from this run, `tags` on the logged model; its
        models:/m-... URI. A training run outputs its model. With `as_input`,
        the model (still sourced from this run) is the run's input: MLflow's
        UI counts a run that outputs a model as a training run, and an
        evaluate run evaluates the system."""
        import tempfile

        import mlflow
        from mlflow.entities import LoggedModelInput, LoggedModelStatus
        from mlflow.models import Model

        if not as_input:
            info = mlflow.pyfunc.log_model(name=name, python_model=python_model, artifacts=artifacts, tags=tags, **kwargs)
            uri = info.model_uri
        else:
            client = mlflow.MlflowClient()
            model = mlflow.initialize_logged_model(name=name, source_run_id=self.run_id, tags=tags)
            try:
                with tempfile.TemporaryDirectory() as folder:
                    described = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=self.run_id, model_id=model.model_id)
                    mlflow.pyfunc.save_model(Path(folder) / "model", python_model=python_model, artifacts=artifacts, mlflow_model=described, **kwargs)
                    client.log_model_artifacts(model.model_id, Path(folder) / "model")
            except BaseException:
                mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
                raise
            mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            client.log_inputs(self.run_id, models=[LoggedModelInput(model.model_id)])
            uri = f"models:/{model.model_id}"
        mlflow.set_tag("dyag.model_uri", uri)  # what compare registers
        return uri

    def log_evaluation(self, rows: list[dict], metric_names: tuple[str, ...], model_uri: str | None, dataset: Any) -> None:
        """The per-question results as an MLflow GenAI evaluation: one trace per
        question (question -> answer, sources) carrying the expected answer and
        each of `metric_names` as an assessment, so the UI's Evaluations view compares
        systems question by question. The answers and scores are the ones
        already computed: the scorers only hand them over, and log no run
        metric (the run's metrics are logged once, by evaluate)."""
        import contextlib
        import io
        import os

        import mlflow
        import pandas as pd
        from mlflow.genai.evaluation.lineage import MLFLOW_GENAI_EVALUATE_DATASET_IDENTITY, compute_records_sha256
        from mlflow.genai.scorers import scorer

        # MLflow scores rows on 10 threads by default; on a sqlite store they
        # wait on its connection pool (30 s timeouts, lost traces). One is fast.
        os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "1")
        # Its rate limits pace calls to remote judges (10 rows/s to start);
        # these scorers only hand over scores, so nothing needs pacing.
        os.environ.setdefault("MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT", "0")
        os.environ.setdefault("MLFLOW_GENAI_EVAL_SCORER_RATE_LIMIT", "0")
        scores = {(r["question"], r["expected_answer"], r["generated_answer"]): r for r in rows}

        def handed_over(name: str) -> Any:
            def score(inputs: dict, outputs: dict, expectations: dict) -> float:
                return float(scores[(inputs["question"], expectations["expected_response"], outputs["answer"])][name])

            return scorer(name=name, aggregations=[])(score)

        frame = pd.DataFrame(
            {
                "inputs": [{"question": r["question"]} for r in rows],
                "outputs": [{"answer": r["generated_answer"], "sources": list(r["sources"])} for r in rows],
                "expectations": [{"expected_response": r["expected_answer"]} for r in rows],
            }
        )
        if dataset is not None:  # the eval set evaluate already logged, not a second "dataset" input
            entity = dataset._to_mlflow_entity()
            frame.attrs[MLFLOW_GENAI_EVALUATE_DATASET_IDENTITY] = {
                "name": entity.name,
                "digest": entity.digest,
                "source_type": entity.source_type,
                "source": entity.source,
                "schema": entity.schema,
                "profile": entity.profile,
                "records_sha256": compute_records_sha256(frame),
            }
        model_id = _model_id(model_uri)
        with contextlib.redirect_stdout(io.StringIO()):  # its banner; the stage prints its own summary
            mlflow.genai.evaluate(data=frame, scorers=[handed_over(n) for n in metric_names], model_id=model_id)


def _model_id(model_uri: str | None) -> str | None:
    """The m-... id of a logged model's models:/m-... URI, else None."""
    return model_uri.rsplit("/", 1)[-1] if model_uri and model_uri.startswith("models:/m-") else None


def dataset_frame(rows: list[dict]) -> Any:
    """JSONL rows as a table the MLflow UI can show: a column per field
    (metadata.doc_id ...), lists and objects as JSON text; a chat row also
    gets its question and answer (its last user and assistant turns)."""
    import pandas as pd

    def flat(row: dict) -> dict:
        out = {}
        if isinstance(row.get("messages"), list):
            turns = [m for m in row["messages"] if isinstance(m, dict)]
            out["question"] = next((m.get("content", "") for m in reversed(turns) if m.get("role") == "user"), "")
            out["answer"] = next((m.get("content", "") for m in reversed(turns) if m.get("role") == "assistant"), "")
        for key, value in row.items():
            if isinstance(value, dict) and key == "metadata":
                out.update({f"metadata.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for k, v in out.items()}

    return pd.DataFrame([flat(r) for r in rows])


def set_experiment(name: str) -> None:
    """mlflow.set_experiment, once more if another process created the
    experiment between this one's lookup and its creation."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        experiment = mlflow.set_experiment(name)
    except MlflowException:
        experiment = mlflow.set_experiment(name)
    describe_experiment(experiment.experiment_id)


def describe_experiment(experiment_id: str) -> None:
    """Give the experiment its description, unless it has one (the user's is kept)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if "mlflow.note.content" not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, "mlflow.note.content", EXPERIMENT_DESCRIPTION)


EXPERIMENT_DESCRIPTION = (
    "Runs of dyag-mlops. Each `pipeline-<corpus>-<hash>` run holds one child run per stage: index_rag, "
    "generate_training, finetune, evaluate_<system> (compare them on `correct`), compare (the winner, "
    "its confidence interval and the registry decision, in its description and comparison_table). "
    "The registered model's `champion` alias points to the promoted system."
)


def ui_hint(experiment_id: str, run_id: str) -> list[str]:
    """How to open a run in the MLflow UI, for the tracking URI in use."""
    uri = configure()
    if uri.startswith(("http://", "https://")):
        return ["", f"Open: {shown_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"]
    return [
        "",
        f"See it in the MLflow UI: mlflow ui --backend-store-uri {uri}",
        f"then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}",
    ]


def process_rank() -> int:
    """This process's rank in a multi-process launch (`accelerate launch`,
    `torchrun`: RANK), 0 when launched alone."""
    return int(os.environ.get("RANK", "0") or 0)


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Any,
    *,
    tags: dict[str, str] | None = None,
    nested: bool = False,
    run_name: str | None = None,
) -> Iterator[NullTracker]:
    """Open the MLflow run of one stage and yield its Tracker.

    Joins the run named by MLFLOW_RUN_ID (how `mlflow run` calls an entry
    point); with `nested`, opens a child of the active run (the pipeline).
    The run ends FAILED if the body raises, KILLED if it is interrupted
    (Ctrl-C, or SIGTERM from kill, timeout or a job scheduler).
    Under a multi-process launch only rank 0 records: the other processes get
    a NullTracker, so one launch is one run.
    """
    import mlflow

    if process_rank() > 0:
        yield NullTracker()
        return
    configure()
    joined = os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None and not nested
    if not joined and not nested and mlflow.active_run() is None:
        set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    # start_run() picks up MLFLOW_RUN_ID by itself when it is set.
    # CPU, memory (and GPU) over time, for the stages that take minutes.
    system_metrics = stage in SYSTEM_METRIC_STAGES
    with mlflow.start_run(nested=nested, run_name=run_name or (None if joined else stage), log_system_metrics=system_metrics) as run:
        tracker = Tracker(run.info.run_id)
        if joined:  # `mlflow run` chose the experiment: describe it if it is not yet
            describe_experiment(run.info.experiment_id)
        tracker.set_tags(
            {
                "dyag.stage": stage,
                "dyag.git_commit": git_commit(),
                "dyag.config_hash": config_hash(stage, config),
                **(tags or {}),
            }
        )
        tracker.log_params(config_params(config))
        tracker.log_dict(config_params(config), "config.yaml")
        if getattr(config, "resume", False):
            close_abandoned_runs(stage, run.info.experiment_id, str(getattr(config, "output", "")), run.info.run_id)
        try:
            with sigterm_as_interrupt():
                yield tracker
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")  # start_run's own exit would say FAILED
            raise


def close_abandoned_runs(stage: str, experiment_id: str, output: str, current: str) -> list[str]:
    """End as KILLED the runs of `stage` on the same output that still say
    RUNNING: a process killed outright (SIGKILL, power loss) could not end its
    own run, and the run that resumes its work replaces it."""
    from mlflow import MlflowClient

    client = MlflowClient()
    quoted = output.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`dyag.stage` = '{stage}' and params.output = '{quoted}'",
    )
    closed = [r.info.run_id for r in runs if r.info.run_id != current]
    for run_id in closed:
        client.set_terminated(run_id, "KILLED")
        client.set_tag(run_id, "dyag.closed_by", current)
    return closed


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM unwinds like Ctrl-C (KeyboardInterrupt): the
    run is ended and temporary files are removed, where the default action
    would kill the process and leave its run RUNNING for ever. Only the main
    thread can set a signal handler; elsewhere nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


MLFLOW_URI_PREFIXES = ("runs:/", "models:/", "mlflow-artifacts:")


def download_mlflow_uri(uri: str, option: str) -> Path:
    """Local copy of a runs:/, models:/ or mlflow-artifacts: URI; a failure is a
    DyagError naming the option it came from."""
    import mlflow

    configure()
    try:
        return Path(mlflow.artifacts.download_artifacts(uri))
    except Exception as exc:
        raise DyagError(f"{option} {uri}: cannot download ({exc})") from None
