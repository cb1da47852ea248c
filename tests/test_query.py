"""query-finetuned / query-rag as a user runs them, and llm-based generation
against a local OpenAI-compatible endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner

from conftest import write_jsonl
from dyag_mlops.cli import main
from dyag_mlops.config import FinetuneConfig, GenerateConfig
from dyag_mlops.data.inventory import cached_schema
from dyag_mlops.systems.prompts import build_messages
from dyag_mlops.train import finetune
from dyag_mlops.train import generate

FR = cached_schema("fr")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("adapter")
    data = write_jsonl(tmp / "train.jsonl", [{"messages": build_messages("Statut de SIRENA ?", answer="En production", schema=FR)}] * 8)
    return finetune.run(FinetuneConfig(dataset=str(data), output=str(tmp / "out"), base_model=str(tiny_model_dir), epochs=1, batch_size=4, grad_accum=1)).adapter_dir


def test_query_finetuned_direct_and_interactive(adapter):
    runner = CliRunner()
    direct = runner.invoke(main, ["query-finetuned", "Statut de SIRENA ?", "--model", adapter, "--max-tokens", "8"])
    assert direct.exit_code == 0, direct.output
    chat = runner.invoke(main, ["query-finetuned", "--model", adapter, "--max-tokens", "8"], input="Statut de SIRENA ?\nEt HYDRA ?\n/exit\n")
    assert chat.exit_code == 0, chat.output
    assert chat.output.count("> ") >= 3  # two questions answered, then /exit
    eof = runner.invoke(main, ["query-finetuned", "--model", adapter, "--max-tokens", "4"], input="")
    assert eof.exit_code == 0  # Ctrl-D ends cleanly


@pytest.mark.parametrize("flag, source", [("--focus", "app-001#status"), ("--no-focus", "app-001")])
def test_query_rag_narrows_the_sheet_unless_told_not_to(tiny_model_dir, demo_index, flag, source):
    result = CliRunner().invoke(main, ["query-rag", "Quel est le statut de SIRENA ?", "--index", demo_index,
                                       "--base-model", str(tiny_model_dir), "--max-tokens", "4", flag])
    assert result.exit_code == 0, result.output
    assert f"[sources: {source}]" in result.stderr  # the sheet, or its status line only


def test_hybrid_query_warns_when_the_adapter_was_trained_otherwise(adapter, demo_index, tmp_path):
    import shutil

    from dyag_mlops.systems.predictor import ADAPTER_MANIFEST

    trained_narrowed = tmp_path / "adapter"
    shutil.copytree(adapter, trained_narrowed)
    manifest = json.loads((trained_narrowed / ADAPTER_MANIFEST).read_text())
    (trained_narrowed / ADAPTER_MANIFEST).write_text(json.dumps({**manifest, "focus": True}))
    runner = CliRunner()
    args = ["query-rag", "Quel est le statut de SIRENA ?", "--index", demo_index, "--model", str(trained_narrowed), "--max-tokens", "4"]
    asked_otherwise = runner.invoke(main, [*args, "--no-focus"])
    assert asked_otherwise.exit_code == 0, asked_otherwise.output
    assert "warning" in asked_otherwise.stderr and "(--focus)" in asked_otherwise.stderr
    as_trained = runner.invoke(main, [*args, "--focus"])
    assert as_trained.exit_code == 0 and "warning" not in as_trained.stderr


def test_query_with_missing_adapter_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["query-finetuned", "Q ?", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such directory" in result.output


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /chat/completions with one supported and one invented pair."""

    seen_auth = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen_auth.append(self.headers.get("Authorization"))
        sheet = body["messages"][0]["content"]
        fields = dict(l.split(" : ", 1) for l in sheet.splitlines() if " : " in l)
        name, status = fields["Nom"], fields["Statut"]
        reply = f"Q: Quel est le statut de {name} ? || R: {status}\nQ: Combien coûte {name} ? || R: 12 millions de licornes"
        payload = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_llm_based_generation_drops_unsupported_pairs(tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": f"a{i}", "content": f"Nom : APP{i}\nStatut : En production {i}", "metadata": {"nom": f"APP{i}"}} for i in range(6)],
    )
    monkeypatch.setenv("MY_KEY", "sk-secret")
    try:
        result = generate.run(GenerateConfig(corpus=str(corpus), method="llm-based", llm_url=f"http://127.0.0.1:{server.server_port}/v1",
                                             llm_api_key_env="MY_KEY", output=str(tmp_path / "llm.jsonl"), split=False))
    finally:
        server.shutdown()
    assert result.counts["examples_total"] == 6 and result.counts["dropped_unsupported"] == 6
    assert FakeOpenAI.seen_auth[-1] == "Bearer sk-secret"
    assert "sk-secret" not in json.dumps(result.manifest)


def test_a_shared_prompt_start_computed_once_gives_the_same_answers(tiny_model_dir, demo_index, monkeypatch):
    """rag prompts share the system prompt and the worked example: their keys
    and values are computed once per batch and handed to generate as a
    cache, with the padding between the shared start and each prompt's end.
    The answers are those of plain left-padded batches."""
    from dyag_mlops.config import EvaluateConfig
    from dyag_mlops.data.evalset import demo_eval_path, load_eval_set
    from dyag_mlops.systems import predictor

    questions = [item.question for item in load_eval_set(demo_eval_path())][:12]
    spec = EvaluateConfig(system="rag", base_model=str(tiny_model_dir), index=demo_index, top_k=1, batch_size=4,
                          max_new_tokens=12, precision="fp32").system_spec()
    shared = predictor.load_predictor(spec)
    answers = [a.text for a in shared.answer(questions)]
    assert shared._prefix_caches, "no batch shared a start"
    monkeypatch.setattr(predictor, "SHARED_PREFIX", 10**9)
    plain = predictor.load_predictor(spec)
    assert [a.text for a in plain.answer(questions)] == answers
    assert not plain._prefix_caches


def test_free_answers_end_once_they_loop(tiny_model_dir):
    """A free answer whose last tokens repeat one short cycle (three times, over
    LOOP_SPAN tokens at least) ends there; a varied answer, or a cycle seen
    only twice, goes on."""
    import torch

    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import LOOP_SPAN, EndOfAnswer, line_breaks

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    tables = line_breaks(tokenizer, model.get_output_embeddings().weight.shape[0])
    ids = [i for i in range(300, 400) if not tables[0][i]][:24]  # 24 tokens, no line break
    looping, varied = ids[:3] * 8, ids  # "la ville de la ville de ...", no cycle
    twice = ids[:8] * 2 + ids[8:16]
    stop = EndOfAnswer(tables)
    prompt = ids[:3] * 5  # prompt tokens never count
    for step in range(24):
        done = stop(torch.tensor([prompt + r[: step + 1] for r in (looping, varied, twice)])).tolist()
    assert done == [True, False, False]
    assert stop.lengths == [LOOP_SPAN, None, None]


def test_free_answers_end_at_their_first_line_break(tiny_model_dir):
    """Without grounding, a row stops at its first line break after some
    text; the answer is the first line the full decoding would have given."""
    import torch

    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import EndOfAnswer, Predictor, first_line, line_breaks
    from dyag_mlops.systems.prompts import render_prompt

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    tables = line_breaks(tokenizer, model.get_output_embeddings().weight.shape[0])
    [newline], word = tokenizer("\n", add_special_tokens=False)["input_ids"], tokenizer("SIRENA", add_special_tokens=False)["input_ids"][0]
    stop = EndOfAnswer(tables)
    rows = [[newline, word, newline], [word, newline, word]]  # a leading break is not an end
    done = [stop(torch.tensor([r[: step + 1] for r in rows])).tolist() for step in range(3)]
    assert done == [[False, False], [False, True], [True, True]]
    assert stop.lengths == [3, 2]

    with torch.no_grad():  # make the line break likely, so some full answers hold one
        model.get_output_embeddings().weight[newline] *= 3
    predictor = Predictor("base", model, tokenizer, max_new_tokens=24, batch_size=4)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": f"Question {i} ?"}]) for i in range(8)]
    full, full_counts = predictor._generate(prompts)
    short, counts = predictor._generate(prompts, one_line=True)
    assert any("\n" in text for text in full), "no answer went on to a second line"
    assert short == [first_line(text) for text in full]
    assert all(c <= f for c, f in zip(counts, full_counts)) and sum(counts) < sum(full_counts)
