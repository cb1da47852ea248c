"""The catalogue of bad inputs and faults (docs/reliability.md): each case runs
a `dyag` command as a user would and asserts its exit status, its one-line
message (no traceback) and that nothing was lost: files that existed keep
their bytes, and no temporary file is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from conftest import SAMPLES, write_jsonl
from dyag_mlops.cli import main

GOOD_ROWS = [
    {"id": f"c{i}", "content": f"Name: tool{i}\nStatus: {status}\nOwner: team {i}", "metadata": {"nom": f"tool{i}"}}
    for i, status in enumerate(["active", "retired", "active", "planned"])
]
EVAL_ROWS = [{"question": f"What is the status of tool{i}?", "expected_answer": s} for i, s in enumerate(["active", "retired", "active", "planned"])]
CHAT_ROW = {"messages": [{"role": "user", "content": "Status of tool1?"}, {"role": "assistant", "content": "retired"}]}


def files(tmp: Path) -> dict[str, str]:
    """The inputs every case may point at, written in `tmp`."""
    write_jsonl(tmp / "good.jsonl", GOOD_ROWS)
    write_jsonl(tmp / "eval.jsonl", EVAL_ROWS)
    write_jsonl(tmp / "chat.jsonl", [CHAT_ROW] * 4)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.jsonl").write_text("\n  \n")
    (tmp / "badjson.jsonl").write_text(json.dumps(GOOD_ROWS[0]) + "\n{not json\n")
    (tmp / "array.jsonl").write_text("[1, 2]\n")
    (tmp / "latin1.jsonl").write_bytes(b'{"id": "a", "content": "Name: caf\xe9\\nStatus: ok"}\n')
    (tmp / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp / "good.jsonl").read_bytes())
    write_jsonl(tmp / "dup.jsonl", [GOOD_ROWS[0], GOOD_ROWS[0]])
    write_jsonl(tmp / "nocontent.jsonl", [{"id": "a", "content": 42}])
    write_jsonl(tmp / "badmeta.jsonl", [{"id": "a", "content": "Name: x", "metadata": "x"}])
    write_jsonl(tmp / "huge.jsonl", [{"id": "a", "content": "Name: x\nDescription: " + "word " * 30_000}])
    (tmp / "md_latin1").mkdir()
    (tmp / "md_latin1" / "a.md").write_bytes(b"# Caf\xe9\n\n## Status\n\nok\n")
    (tmp / "md_empty").mkdir()
    (tmp / "parc.md").write_text("# tool1\n\n**Status:** active\n\n---\n\n# tool2\n\n**Status:** retired\n")
    (tmp / "blank_md.md").write_text("\n\n")
    (tmp / "records.json").write_text(json.dumps([{"name": "tool1", "status": "active"}, {"name": "tool2", "status": "retired"}]))
    (tmp / "numbers.json").write_text("[1, 2]")
    (tmp / "broken.json").write_text('{"applications": [\n  {"name": }\n]}')
    (tmp / "sheet.csv").write_text("name;status\ntool1;active\ntool2;retired\n")
    (tmp / "twin_columns.csv").write_text("name,name\ntool1,x\n")
    (tmp / "long_row.csv").write_text("name,status\ntool1,active,extra\n")
    (tmp / "notindex").mkdir()
    (tmp / "notindex" / "precious.txt").write_text("mine")
    (tmp / "afile").write_text("mine")
    write_jsonl(tmp / "eval_noanswer.jsonl", [{"question": "What is tool1?"}])
    write_jsonl(tmp / "eval_noquestion.jsonl", [{"question": "  ", "expected_answer": "x"}])
    (tmp / "eval_latin1.jsonl").write_bytes(b'{"question": "caf\xe9 ?", "expected_answer": "x"}\n')
    write_jsonl(tmp / "chat_badrole.jsonl", [{"messages": [{"role": "wizard", "content": "x"}]}])
    (tmp / "schema_latin1.json").write_bytes(b'{"language": "caf\xe9"}')
    (tmp / "notresults.json").write_text('{"hello": 1}')
    (tmp / "used_out").mkdir()
    (tmp / "used_out" / "precious.txt").write_text("mine")
    for split in ("train", "val", "test", "manifest"):
        (tmp / f"taken_{split}.jsonl" if split != "manifest" else tmp / "taken_manifest.json").write_text("mine\n")
    return {p.name.split(".")[0]: str(p) for p in tmp.iterdir()}


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    message: str = ""  # a regex the last line of stderr must match ("" for exit 0)
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None
    kept: tuple[str, ...] = ()  # inputs whose bytes must not change


CASES = [
    # -- corpora
    Case("corpus-missing", ["inspect-corpus", "{tmp}/nope.jsonl"], 2, r"nope\.jsonl: corpus not found"),
    Case("corpus-empty", ["inspect-corpus", "{empty}"], 2, r"empty\.jsonl: the corpus is empty"),
    Case("corpus-blank-lines", ["index-rag", "{blank}", "--index", "{tmp}/ix"], 2, r"the corpus is empty"),
    Case("corpus-invalid-json", ["generate-training", "{badjson}", "--output", "{tmp}/d"], 2, r"badjson\.jsonl:2: invalid JSON"),
    Case("corpus-not-an-object", ["inspect-corpus", "{array}"], 2, r"array\.jsonl:1: expected a JSON object"),
    Case("corpus-latin1", ["generate-training", "{latin1}", "--output", "{tmp}/d"], 2, r"latin1\.jsonl:1: not UTF-8"),
    Case("corpus-latin1-index", ["index-rag", "{latin1}", "--index", "{tmp}/ix"], 2, r"latin1\.jsonl:1: not UTF-8"),
    Case("corpus-binary", ["inspect-corpus", "{binary}"], 2, r"binary\.jsonl:1: not UTF-8"),
    Case("corpus-bom", ["inspect-corpus", "{bom}"], 0),
    Case("corpus-duplicate-ids", ["inspect-corpus", "{dup}"], 2, r"chunk id 'c0' appears more than once"),
    Case("corpus-content-not-text", ["inspect-corpus", "{nocontent}"], 2, r"nocontent\.jsonl:1: a chunk needs a string 'content'"),
    Case("corpus-metadata-not-object", ["inspect-corpus", "{badmeta}"], 2, r"badmeta\.jsonl:1: 'metadata' must be an object"),
    Case("corpus-huge-chunk", ["generate-training", "{huge}", "--output", "{tmp}/d"], 2, r"huge\.jsonl:1: a chunk of 150,021 characters"),
    Case("markdown-latin1", ["inspect-corpus", "{md_latin1}"], 2, r"a\.md:1: not UTF-8"),
    Case("markdown-empty-folder", ["inspect-corpus", "{md_empty}"], 2, r"md_empty: the corpus is empty"),
    Case("markdown-file", ["inspect-corpus", "{parc}"], 0),
    Case("json-records", ["inspect-corpus", "{records}"], 0),
    Case("json-not-objects", ["inspect-corpus", "{numbers}"], 2, r"numbers\.json \(item 1\): expected a JSON object, got int"),
    Case("json-invalid", ["inspect-corpus", "{broken}"], 2, r"broken\.json:2: invalid JSON"),
    Case("csv", ["inspect-corpus", "{sheet}"], 0),
    Case("csv-twin-columns", ["inspect-corpus", "{twin_columns}"], 2, r"twin_columns\.csv:1: the header needs a distinct"),
    Case("csv-long-row", ["inspect-corpus", "{long_row}"], 2, r"long_row\.csv: row 2 has 3 cells, the header 2"),
    Case("markdown-file-blank", ["inspect-corpus", "{blank_md}"], 2, r"blank_md\.md: the corpus is empty"),
    Case("sample-one-field-per-chunk", ["inspect-corpus", str(SAMPLES / "corpus.jsonl")], 0),
    Case("sample-markdown", ["inspect-corpus", str(SAMPLES / "corpus_md")], 0),
    # -- generate-training
    Case("generate-good", ["generate-training", "{good}", "--output", "{tmp}/d", "--count", "8"], 0),
    Case(
        "generate-refuses-overwrite", ["generate-training", "{good}", "--output", "{tmp}/taken", "--count", "8"], 2,
        r"output exists: .*taken_.* \(pass --overwrite", kept=("taken_train", "taken_val", "taken_test", "taken_manifest"),
    ),
    Case("generate-bad-method", ["generate-training", "{good}", "--method", "magic"], 2, r"--method"),
    Case("generate-negative-count", ["generate-training", "{good}", "--count", "-1"], 2, r"--count"),
    Case("generate-unknown-schema", ["generate-training", "{good}", "--schema", "klingon"], 2, r"--schema klingon"),
    Case("generate-schema-latin1", ["generate-training", "{good}", "--schema", "{schema_latin1}"], 2, r"schema_latin1\.json:1: not UTF-8"),
    Case("validate-good", ["generate-training", "--validate", "{chat}"], 0),
    Case("validate-bad-role", ["generate-training", "--validate", "{chat_badrole}"], 1, r"chat_badrole\.jsonl:1"),
    Case("validate-latin1", ["generate-training", "--validate", "{latin1}"], 1, r"latin1\.jsonl:1: not UTF-8"),
    # -- index-rag
    Case("index-not-a-dyag-index", ["index-rag", "{good}", "--index", "{notindex}"], 2, r"is not a dyag index", kept=("notindex/precious",)),
    Case("index-is-a-file", ["index-rag", "{good}", "--index", "{afile}"], 2, r"afile: exists and is not a directory", kept=("afile",)),
    Case("index-bad-ranking", ["index-rag", "{good}", "--index", "{tmp}/ix", "--ranking", "psychic"], 2, r"ranking"),
    Case("index-negative-chunk-size", ["index-rag", "{good}", "--index", "{tmp}/ix", "--chunk-size", "-5"], 2, r"--chunk-size"),
    # -- eval sets
    Case("split-missing", ["split-eval", "{tmp}/nope.jsonl"], 2, r"nope\.jsonl: no such file"),
    Case("split-latin1", ["split-eval", "{eval_latin1}"], 2, r"eval_latin1\.jsonl:1: not UTF-8"),
    Case("eval-no-answer", ["evaluate-base", "{eval_noanswer}"], 2, r"eval_noanswer\.jsonl:1"),
    Case("eval-blank-question", ["evaluate-base", "{eval_noquestion}"], 2, r"eval_noquestion\.jsonl:1: no question"),
    Case("evaluate-rag-no-index", ["evaluate-rag", "{eval}", "--index", "{tmp}/nope"], 2, r"nope: no such index directory"),
    Case("evaluate-top-k-zero", ["evaluate-rag", "{eval}", "--index", "{tmp}/nope", "--top-k", "0"], 2, r"--top-k"),
    Case("evaluate-batch-zero", ["evaluate-base", "{eval}", "--batch-size", "0"], 2, r"--batch-size"),
    # -- query
    Case("query-empty-question", ["query-rag", "", "--index", "{tmp}/nope"], 2, r"QUESTION is empty"),
    Case("query-blank-question", ["query-finetuned", "   ", "--model", "{tmp}/nope"], 2, r"QUESTION is empty"),
    Case("query-top-k-zero", ["query-rag", "q?", "--index", "{tmp}/nope", "--top-k", "0"], 2, r"--top-k"),
    Case("query-max-tokens-zero", ["query-rag", "q?", "--index", "{tmp}/nope", "--max-tokens", "0"], 2, r"--max-tokens"),
    Case("query-negative-temperature", ["query-rag", "q?", "--index", "{tmp}/nope", "--temperature", "-1"], 2, r"--temperature"),
    Case("query-no-index", ["query-rag", "q?", "--index", "{tmp}/nope"], 2, r"nope: no such index directory"),
    Case("query-no-adapter", ["query-finetuned", "q?", "--model", "{tmp}/nope"], 2, r"nope"),
    Case("query-unknown-run", ["query-finetuned", "q?", "--model", "runs:/0123456789abcdef/adapter"], 2, r"--model runs:/0123456789abcdef/adapter: cannot download"),
    # -- finetune
    Case("finetune-no-dataset", ["finetune", "--dataset", "{tmp}/nope.jsonl", "--output", "{tmp}/ft"], 2, r"nope"),
    Case("finetune-invalid-dataset", ["finetune", "--dataset", "{badjson}", "--output", "{tmp}/ft"], 2, r"badjson\.jsonl"),
    Case("finetune-output-not-empty", ["finetune", "--dataset", "{chat}", "--output", "{used_out}"], 2, r"used_out is not empty", kept=("used_out/precious",)),
    Case("finetune-4bit-on-cpu", ["finetune", "--dataset", "{chat}", "--output", "{tmp}/ft", "--quantize", "4bit", "--device", "cpu"], 2, r"--quantize 4bit .* needs a CUDA GPU"),
    Case("finetune-zero-lr", ["finetune", "--dataset", "{chat}", "--lr", "0"], 2, r"--lr"),
    Case("finetune-empty-base", ["finetune", "--dataset", "{chat}", "--output", "{tmp}/ft", "--base-model", " "], 2, r"--base-model is empty"),
    Case("finetune-missing-gguf", ["finetune", "--dataset", "{chat}", "--output", "{tmp}/ft", "--base-model", "{tmp}/nope.gguf"], 2, r"nope\.gguf: no such GGUF file"),
    Case("finetune-soup-dora", ["finetune", "--dataset", "{chat}", "--soup", "2", "--dora"], 2, r"--soup"),
    # -- compare and registry
    Case("compare-unknown-run", ["compare-models", "--run-ids", "0123456789abcdef,fedcba9876543210"], 2, r"--run-ids 0123456789abcdef: no such run"),
    Case("compare-not-results", ["compare-models", "--rag-results", "{notresults}", "--finetuned-results", "{notresults}"], 2, r"notresults\.json: not an evaluate results JSON"),
    Case("compare-bad-metric", ["compare-models", "--primary-metric", "vibes", "--rag-results", "{notresults}"], 2, r"vibes|notresults"),
    Case("compare-zero-bootstrap", ["compare-models", "--n-bootstrap", "0"], 2, r"--n-bootstrap"),
    Case("compare-bad-confidence", ["compare-models", "--confidence", "1.5"], 2, r"--confidence"),
    # -- tracking store
    Case(
        "store-unreachable", ["generate-training", "{good}", "--output", "{tmp}/d"], 2,
        r"tracking store http://127\.0\.0\.1:9 does not answer", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    ),
    Case(
        "store-password-hidden", ["index-rag", "{good}", "--index", "{tmp}/ix"], 2,
        r"http://user:\*\*\*@127\.0\.0\.1:9 does not answer", env={"MLFLOW_TRACKING_URI": "http://user:hunter2@127.0.0.1:9"},
    ),
]


def digests(tmp: Path) -> dict[str, str]:
    return {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, tmp_path: Path) -> None:
    names = files(tmp_path)
    before = digests(tmp_path)
    args = [a.format(tmp=tmp_path, **names) for a in case.args]
    result = CliRunner().invoke(main, args, env=case.env, catch_exceptions=True)
    stderr = result.stderr
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == case.code, (result.exit_code, result.output)
    if case.message:
        last = [line for line in stderr.splitlines() if line.strip()][-1]
        assert last.startswith("Error:") or case.code == 1, last
        assert __import__("re").search(case.message, last), last
    after = digests(tmp_path)
    for name in case.kept:
        key = next(k for k in before if k.startswith(name))
        assert after.get(key) == before[key], f"{key} changed"
    leftovers = [k for k in after if k not in before and (k.endswith(".tmp") or ".staging-" in k or ".old-" in k)]
    assert not leftovers, leftovers


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 60


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    names = files(tmp_path)
    quiet = CliRunner().invoke(main, ["inspect-corpus", names["latin1"]])
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output
    loud = CliRunner().invoke(main, ["--debug", "inspect-corpus", names["latin1"]])
    assert isinstance(loud.exception, Exception) and not isinstance(loud.exception, SystemExit)
    os.environ.pop("DYAG_DEBUG", None)


def test_an_unexpected_failure_is_one_line(monkeypatch, capsys) -> None:
    from dyag_mlops.errors import report

    assert report(ZeroDivisionError("division by zero")) == 1
    assert capsys.readouterr().err.strip() == "Error: ZeroDivisionError: division by zero (DYAG_DEBUG=1 shows the traceback)"
    assert report(OSError(28, "No space left on device", "/data/out.jsonl")) == 1
    assert capsys.readouterr().err.strip() == "Error: /data/out.jsonl: No space left on device"


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    from dyag_mlops.data.files import atomic_write_text

    atomic_write_text(tmp_path / "out.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_finetune_leaves_no_empty_output(tmp_path: Path, tiny_model_dir: Path) -> None:
    names = files(tmp_path)
    result = CliRunner().invoke(main, ["finetune", "--dataset", names["chat"], "--output", str(tmp_path / "ft"), "--base-model", str(tmp_path / "nope")])
    assert result.exit_code != 0 and not (tmp_path / "ft").exists()


def test_changing_the_embedding_model_needs_rebuild(tmp_path: Path) -> None:
    from dyag_mlops.retrieval.embeddings import resolve_embedding_model

    names = files(tmp_path)
    index = str(tmp_path / "ix")
    assert CliRunner().invoke(main, ["index-rag", names["good"], "--index", index]).exit_code == 0
    before = digests(tmp_path / "ix")
    other = tmp_path / "other-model"
    shutil.copytree(resolve_embedding_model("all-minilm-l6-v2"), other)
    refused = CliRunner().invoke(main, ["index-rag", names["good"], "--index", index, "--embedding-model", str(other)])
    assert refused.exit_code == 2 and "needs --rebuild" in refused.stderr
    assert digests(tmp_path / "ix") == before
    rebuilt = CliRunner().invoke(main, ["index-rag", names["good"], "--index", index, "--embedding-model", str(other), "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    summary = json.loads(rebuilt.stdout[rebuilt.stdout.index("{"):])
    assert summary["chunks_embedded"] == summary["chunks_total"] and summary["chunks_reused"] == 0


def test_a_resumed_run_closes_the_one_a_kill_left_running(tmp_path: Path) -> None:
    import mlflow

    from dyag_mlops.config import FinetuneConfig
    from dyag_mlops.tracking import stage_run

    config = FinetuneConfig(output=str(tmp_path / "ft"), resume=True)
    client = mlflow.MlflowClient()
    with stage_run("finetune", config) as first:
        pass
    client.update_run(first.run_id, status="RUNNING")  # as a process killed with SIGKILL leaves it
    with stage_run("finetune", config) as second:
        pass
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert client.get_run(first.run_id).data.tags["dyag.closed_by"] == second.run_id
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_shared_batches_answer_each_request_its_own_questions() -> None:
    import threading
    import time

    from dyag_mlops.systems.predictor import SharedBatches

    calls = []

    def answer(questions):
        calls.append(len(questions))
        time.sleep(0.05)
        return [q.upper() for q in questions]

    batches = SharedBatches(answer)
    results = {}

    def client(i):
        results[i] = batches.answer([f"q{i}a", f"q{i}b"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [f"Q{i}A", f"Q{i}B"] for i in range(8)}
    assert sum(calls) == 16 and len(calls) < 8  # requests that waited were answered together


@pytest.fixture(scope="module")
def served_model(tiny_model_dir, tmp_path_factory):
    """A base system on the tiny model, logged and served by `mlflow models serve` on localhost."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from dyag_mlops.config import EvaluateConfig
    from dyag_mlops.config import SystemSpec
    from dyag_mlops.systems.predictor import log_system_model
    from dyag_mlops.tracking import stage_run

    workdir = tmp_path_factory.mktemp("served")
    with stage_run("evaluate", EvaluateConfig(system="base")) as tracker:
        uri = log_system_model(tracker, workdir, SystemSpec("base", base_model=str(tiny_model_dir), max_new_tokens=4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    # The server runs `uvicorn` from PATH: this interpreter's folder first (CI calls .venv/bin/python).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [*mlflow_cli, "models", "serve", "-m", uri, "-p", str(port), "--host", "127.0.0.1", "--env-manager", "local"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"), env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/ping", timeout=1).read()
                break
            except OSError:
                assert server.poll() is None, (workdir / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        else:
            pytest.fail("the model server did not start: " + (workdir / "server.log").read_text()[-3000:])
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def invoke(url: str, body) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


SERVED_CASES = [
    ("question", {"dataframe_records": [{"question": "Status of tool1?"}]}, 200, '"error": ""'),
    ("inputs-list", {"inputs": ["Status of tool1?", "Owner of tool2?"]}, 200, '"answer"'),
    ("empty-question", {"dataframe_records": [{"question": ""}]}, 400, "non-empty string"),
    ("number-question", {"dataframe_records": [{"question": 42}]}, 400, "non-empty string"),
    ("null-question", {"dataframe_records": [{"question": None}]}, 400, "non-empty string"),
    # (the model's signature names the input it needs)
    ("other-column", {"dataframe_records": [{"q": "Status of tool1?"}]}, 400, "missing inputs ['question']"),
    ("no-records", {"dataframe_records": []}, 400, "missing inputs ['question']"),
    ("one-bad-row", {"dataframe_records": [{"question": "Status of tool1?"}, {"question": " "}]}, 200, "non-empty string"),
    ("not-json", b"{not json", 400, ""),
]


@pytest.mark.parametrize("name,body,status,text", SERVED_CASES, ids=[c[0] for c in SERVED_CASES])
def test_served_model_answers_questions_only(served_model, name, body, status, text) -> None:
    code, content = invoke(served_model, body)
    assert code == status, content
    assert text in content
    assert "Traceback" not in content and 'File "' not in content


def test_served_model_under_load_answers_every_request(served_model) -> None:
    """200 requests from 8 clients at once: every one answered, no 5xx."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"dataframe_records": [{"question": f"Status of tool{i % 4}?"}]} for i in range(200)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = [code for code, _ in pool.map(lambda b: invoke(served_model, b), bodies)]
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}


def test_two_index_writers_at_once_both_finish(tmp_path: Path) -> None:
    """Two `dyag index-rag` on one new index: the second waits for the first's lock."""
    import subprocess
    import sys

    names = files(tmp_path)
    command = [sys.executable, "-m", "dyag_mlops.cli", "index-rag", names["good"], "--index", str(tmp_path / "ix")]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "Traceback" not in "".join(err for _, err in outputs)
    summaries = [json.loads(out[out.index("{"):]) for out, _ in outputs]
    assert sorted(s["chunks_embedded"] for s in summaries) == [0, len(GOOD_ROWS)]  # the second reuses the first's work


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: a read-only store cannot be simulated")
def test_a_read_only_store_is_one_line(tmp_path: Path) -> None:
    names = files(tmp_path)
    store = tmp_path / "ro"
    store.mkdir()
    (store / "mlflow.db").write_bytes(b"")
    (store / "mlflow.db").chmod(0o444)
    store.chmod(0o555)
    result = CliRunner().invoke(main, ["generate-training", names["good"], "--output", str(tmp_path / "d")], env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"})
    assert result.exit_code == 2 and "is not writable" in result.stderr


def test_an_adapter_on_another_base_is_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    """An adapter without dyag's manifest, asked to load on a base of other shapes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    wider = tmp_path / "wider"
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(wider)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, wider / name)
    result = CliRunner().invoke(main, ["query-finetuned", "Status of tool1?", "--model", str(adapter), "--base-model", str(wider)])
    assert result.exit_code == 2, result.output
    assert "does not fit base model" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output


def test_an_overlong_question_is_cut_with_a_warning(tiny_model_dir: Path) -> None:
    from dyag_mlops.systems.predictor import MAX_QUESTION_TOKENS, load_predictor

    predictor = load_predictor("base", base_model=str(tiny_model_dir), max_new_tokens=2)
    long, blank, short = predictor.answer(["word " * 20_000, "  ", "Status of tool1?"])
    assert long.error is None and f"first {MAX_QUESTION_TOKENS} of" in long.warning
    assert long.question.startswith("word word")  # the answer keeps the question as asked
    assert blank.error == "empty question" and blank.tokens == 0
    assert short.error is None and short.warning is None


def test_an_entry_point_names_the_parameter(capsys) -> None:
    from dyag_mlops.config import GenerateConfig
    from dyag_mlops.entry import run_entrypoint

    for value, said in (("abc", "expected a number"), ("2.5", "expected a whole number")):
        with pytest.raises(SystemExit) as stop:
            run_entrypoint("generate_training", GenerateConfig, lambda config, tracker: None, ["--count", value])
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip() == f"Error: parameter count: {said}, got {value!r}"


@pytest.fixture(scope="module")
def built_index(tmp_path_factory) -> Path:
    from dyag_mlops.config import IndexConfig
    from dyag_mlops.retrieval import rag

    tmp = tmp_path_factory.mktemp("hostile-index")
    write_jsonl(tmp / "good.jsonl", GOOD_ROWS)
    rag.run(IndexConfig(corpus=str(tmp / "good.jsonl"), index=str(tmp / "ix")))
    return tmp / "ix"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"collection": "elsewhere"}, r"collection 'elsewhere' not found"),
        ({"embedding_dimension": 7}, r"differ in dimension; rebuild the index"),
        ({"ranking": "psychic"}, r"ranking must be one of"),
        (None, r"unreadable index manifest"),
    ],
    ids=["other-collection", "other-dimension", "unknown-ranking", "corrupt"],
)
def test_an_index_whose_manifest_disagrees_is_one_line(built_index: Path, tmp_path: Path, change, message) -> None:
    index = tmp_path / "ix"
    shutil.copytree(built_index, index)
    manifest = index / "index_manifest.json"
    if change is None:
        manifest.write_text("{half a manifest")
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **change}))
    result = CliRunner().invoke(main, ["query-rag", "Status of tool1?", "--index", str(index)])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and __import__("re").search(message, last), last
