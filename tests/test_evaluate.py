import json

import pytest
from rouge_score import rouge_scorer

from conftest import write_jsonl
from dyag_mlops.config import EvaluateConfig
from dyag_mlops.data import evalset
from dyag_mlops.data.evalset import load_eval_set
from dyag_mlops.errors import DyagError
from dyag_mlops.evaluation import evaluate
from dyag_mlops.evaluation.evaluate import is_correct, question_scores, token_f1

ROUGE = rouge_scorer.RougeScorer(["rougeL"])


def scores(pred, gold):
    return question_scores(pred, gold, ROUGE)


def test_exact_match_ignores_case_accents_punctuation_and_spaces():
    assert scores("  EN PRODUCTION. ", "En production")["exact_match"] == 1.0
    assert scores("Hébergement interne", "hebergement  interne!")["exact_match"] == 1.0
    assert scores("En construction", "En production")["exact_match"] == 0.0


def test_token_f1_is_squad_style():
    assert token_f1("datacenter de Lyon", "Datacenter Lyon-Gerland") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert token_f1("", "x") == 0.0


def test_contains_and_the_correct_rule():
    s = scores("Le statut est En production.", "En production")
    assert s["contains"] == 1.0 and is_correct("Le statut est En production.", "En production", s)
    dump = "Nom : SIRENA Statut : En production Hébergement : Datacenter Lyon-Gerland Technologie : Java " * 2
    s = scores(dump, "En production")
    assert s["contains"] == 1.0 and not is_correct(dump, "En production", s)  # dumping a chunk is not answering
    s = scores("En construction", "En production")
    assert not is_correct("En construction", "En production", s)


def test_unknown_questions_need_an_admission():
    assert is_correct("Je ne sais pas.", "Je ne sais pas", scores("Je ne sais pas.", "Je ne sais pas"))
    assert is_correct("Cette information n'est pas disponible.", "Je ne sais pas", scores("x", "Je ne sais pas"))
    assert not is_correct("En production", "Je ne sais pas", scores("En production", "Je ne sais pas"))


@pytest.mark.parametrize("expected", ["I don't know", "Je ne sais pas.", "Cette information n'est pas disponible", "Not available"])
def test_any_refusal_as_expected_answer_makes_a_question_unanswerable(expected):
    """Whatever the language or wording of an eval set's refusal: only an admission is right."""
    for admission in ("I don't know.", "Je ne sais pas", "This is not available."):
        assert is_correct(admission, expected, scores(admission, expected)), (admission, expected)
    for answer in ("En production", "Active", expected.split()[0]):
        assert not is_correct(answer, expected, scores(answer, expected)), (answer, expected)


def test_eval_formats_and_errors(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]}])
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"query": "Q?", "answer": "A", "metadata": {"doc_id": "d1"}}])
    assert load_eval_set(chat)[0].expected == "A"
    assert load_eval_set(flat)[0].doc_id == "d1"
    empty = write_jsonl(tmp_path / "e.jsonl", [{"question": "Q?", "expected_answer": ""}])
    with pytest.raises(DyagError, match=r"e\.jsonl:1: empty expected"):
        load_eval_set(empty)
    noq = write_jsonl(tmp_path / "n.jsonl", [{"expected_answer": "x"}])
    with pytest.raises(DyagError, match=r"n\.jsonl:1: no question"):
        load_eval_set(noq)
    # the bundled hand-written set: its test half by default
    assert load_eval_set("") == load_eval_set(evalset.demo_eval_path("test"))


def read_lines(path):
    return open(path, encoding="utf-8").read().splitlines()


def test_the_bundled_eval_set_is_the_two_halves_split_eval_set_makes(tmp_path):
    dev, test = (load_eval_set(evalset.demo_eval_path(half)) for half in ("dev", "test"))
    assert len(dev) + len(test) >= 120 and len(test) >= 60
    assert not {i.question for i in dev} & {i.question for i in test}  # never tuned on a reported question
    union = tmp_path / "demo_eval_all.jsonl"
    union.write_text("".join(open(evalset.demo_eval_path(h), encoding="utf-8").read() for h in ("dev", "test")), encoding="utf-8")
    halves = evalset.split_eval_set(union, tmp_path / "out")
    assert halves == {"dev": tmp_path / "out" / "demo_eval_dev.jsonl", "test": tmp_path / "out" / "demo_eval_test.jsonl"}
    for half, path in halves.items():
        assert read_lines(path) == read_lines(evalset.demo_eval_path(half)), half


def test_split_eval_set_is_stratified_by_kind_and_deterministic(tmp_path):
    import random
    from collections import Counter

    from click.testing import CliRunner

    from dyag_mlops.cli import main

    kinds = {"typo": 9, "alias": 6, "unanswerable": 5, "paraphrase": 1}
    rows = [
        {"question": f"Question {kind} {n} ?", "expected_answer": f"R{n}", "metadata": {"kind": kind}}
        for kind, count in kinds.items() for n in range(count)
    ]
    rows.append({"question": "Sans genre ?", "expected_answer": "R"})  # no kind: a stratum of its own
    (tmp_path / "a").mkdir()
    first = evalset.split_eval_set(write_jsonl(tmp_path / "a" / "eval.jsonl", rows), tmp_path / "a")
    halves = {half: [json.loads(line) for line in read_lines(path)] for half, path in first.items()}
    assert sorted(map(json.dumps, halves["dev"] + halves["test"])) == sorted(map(json.dumps, rows))  # each row once
    count = {half: Counter((r.get("metadata") or {}).get("kind") for r in chosen) for half, chosen in halves.items()}
    for kind in [*kinds, None]:
        assert abs(count["dev"][kind] - count["test"][kind]) <= 1, kind
    assert len(halves["dev"]) >= len(halves["test"])
    # the same halves whatever the order of the file, each in the file's order
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    (tmp_path / "b").mkdir()
    again = evalset.split_eval_set(write_jsonl(tmp_path / "b" / "eval.jsonl", shuffled), tmp_path / "b")
    for half in ("dev", "test"):
        got = [json.loads(line) for line in read_lines(again[half])]
        assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, halves[half]))
        assert got == [r for r in shuffled if r in got]
    # dyag's eval files carry their kind as a top-level `category`
    categories = ("status", "contacts", "websites", "description")
    dyag_rows = [{"question": f"Q {c} {n} ?", "expected_answer": "R", "category": c} for c in categories for n in range(6)]
    (tmp_path / "c").mkdir()
    dyag_halves = evalset.split_eval_set(write_jsonl(tmp_path / "c" / "eval.jsonl", dyag_rows), tmp_path / "c")
    for path in dyag_halves.values():
        assert Counter(json.loads(line)["category"] for line in read_lines(path)) == dict.fromkeys(categories, 3)
    # the command line: existing halves are kept unless --overwrite
    runner = CliRunner()
    refused = runner.invoke(main, ["split-eval", str(tmp_path / "a" / "eval.jsonl")])
    assert refused.exit_code != 0 and "--overwrite" in refused.output
    done = runner.invoke(main, ["split-eval", str(tmp_path / "a" / "eval.jsonl"), "--overwrite"])
    assert done.exit_code == 0 and "eval_dev.jsonl" in done.output and "eval_test.jsonl" in done.output
    assert {half: [json.loads(line) for line in read_lines(path)] for half, path in first.items()} == halves


def test_evaluate_base_writes_seed_compatible_results(tmp_path, tiny_model_dir):
    eval_file = write_jsonl(
        tmp_path / "eval.jsonl",
        [{"question": f"Quel est le statut de APP{i} ?", "expected_answer": "En production"} for i in range(5)],
    )
    out = tmp_path / "results.json"
    config = EvaluateConfig(
        eval_file=str(eval_file), system="base", base_model=str(tiny_model_dir), output=str(out), max_new_tokens=8, batch_size=2,
        precision="bf16",
    )
    result = evaluate.run(config)
    data = json.loads(out.read_text())
    assert data["metadata"]["dtype"] == "bfloat16"
    assert set(data) == {"metadata", "metrics", "results"}
    for name in ("success_rate", "exact_match_rate", "avg_time_seconds", "avg_tokens", "total_tokens", "correct", "token_f1", "rouge_l", "contains", "semantic_similarity", "questions_per_second"):
        assert name in data["metrics"], name
    assert len(data["results"]) == 5 and data["metadata"]["eval_digest"]
    assert 0 <= result.metrics["semantic_similarity"] <= 1
    assert data["metrics"]["correct"] < 1.0  # a random model does not answer


def test_a_failed_question_counts_as_wrong(tmp_path, tiny_model_dir, monkeypatch):
    from dyag_mlops.systems.predictor import Predictor

    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Q?", "expected_answer": "A"}] * 3)

    def broken(self, prompts):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Predictor, "_generate", broken)
    config = EvaluateConfig(eval_file=str(eval_file), system="base", base_model=str(tiny_model_dir), output=str(tmp_path / "r.json"))
    result = evaluate.run(config)
    assert result.metrics["num_questions"] == 3
    assert result.metrics["success_rate"] == 0.0 and result.metrics["correct"] == 0.0
    assert all(r["error"] for r in result.rows)


def test_correct_is_broken_down_by_each_label_the_questions_carry(tmp_path, tiny_model_dir):
    # dyag's own eval rows: `category`, `difficulty` and `app_id` at the top level.
    rows = [
        {"id": "q1", "question": "Quel est le statut de Marégraphe ?", "expected_answer": "En production", "category": "status", "difficulty": "easy", "app_id": 4107},
        {"id": "q2", "question": "Quel est l'identifiant de Terrabase ?", "expected_answer": "5521", "category": "app_id", "difficulty": "easy", "app_id": "5521"},
        {"question": "Qui finance Terrabase ?", "expected_answer": "Je ne sais pas", "category": "status", "metadata": {"kind": "unanswerable"}},
    ]
    eval_file = write_jsonl(tmp_path / "questions.jsonl", rows)
    items = load_eval_set(eval_file)
    assert [i.doc_id for i in items] == ["4107", "5521", None]
    assert items[2].labels == (("category", "status"), ("kind", "unanswerable"))
    config = EvaluateConfig(eval_file=str(eval_file), system="base", base_model=str(tiny_model_dir), output=str(tmp_path / "r.json"), max_new_tokens=4)
    result = evaluate.run(config)
    correct = [r["correct"] for r in result.rows]
    assert result.breakdown["category"] == {
        "app_id": {"questions": 1, "correct": correct[1]},
        "status": {"questions": 2, "correct": (correct[0] + correct[2]) / 2},
    }
    assert result.breakdown["difficulty"] == {"easy": {"questions": 2, "correct": (correct[0] + correct[1]) / 2}}
    assert set(result.breakdown) == {"category", "difficulty", "kind"}
    assert json.loads((tmp_path / "r.json").read_text())["breakdown"] == result.breakdown


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(DyagError, match="no such directory"):
        evaluate.run(EvaluateConfig(system="finetuned", model=str(tmp_path / "nope"), output=str(tmp_path / "r.json")))


def test_fast_lm_head_gives_the_plain_logits_and_answers(tiny_model_dir):
    import torch

    from dyag_mlops.systems.models import load_base_model, speed_up_lm_head

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    ids = torch.randint(0, model.config.vocab_size, (8, 12))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        plain_gen = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    speed_up_lm_head(model)
    with torch.inference_mode():
        fast = model(input_ids=ids, logits_to_keep=1).logits  # 8 rows: the W @ x.T path
        fast_gen = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert fast.shape == (8, 1, model.config.vocab_size)
    torch.testing.assert_close(fast, plain[:, -1:], rtol=1e-4, atol=1e-5)
    assert torch.equal(fast_gen, plain_gen)


def test_words_the_question_already_says_are_not_required():
    question = "Combien de lycées publics sont recensés dans LYCEO ?"
    assert not is_correct("142", "142 lycées publics", scores("142", "142 lycées publics"))
    assert is_correct("142", "142 lycées publics", scores("142", "142 lycées publics"), question)
    assert not is_correct("143", "142 lycées publics", scores("143", "142 lycées publics"), question)
    assert not is_correct("lycées publics", "142 lycées publics", scores("lycées publics", "142 lycées publics"), question)
    assert is_correct("142 lycées publics", "142 lycées publics", scores("142 lycées publics", "142 lycées publics"), question)
    # a question that says none of the words, answer or expected: plain token F1
    assert not is_correct("Synergie", "système national Synergie", scores("Synergie", "système national Synergie"), "Où vont les données ?")
    assert is_correct("national Synergie", "système national Synergie", scores("national Synergie", "système national Synergie"), "Où vont les données ?")


def test_scoring_an_eval_set_reads_each_question():
    from dyag_mlops.systems.predictor import Answer

    items = [evalset.EvalItem("Combien de lycées publics sont recensés dans LYCEO ?", "142 lycées publics", "app-009", 1)]
    rows = evaluate.score_answers(items, [Answer(items[0].question, "142", 0.1, 2)])
    assert rows[0]["correct"] == 1.0 and rows[0]["token_f1"] == pytest.approx(0.5)


def test_bleu_and_bertscore_rank_answers():
    from dyag_mlops.evaluation.evaluate import bertscore_f1, sentence_bleu

    assert sentence_bleu("en production", "en production") == pytest.approx(1.0)
    assert 0 < sentence_bleu("production", "en production") < 1
    assert sentence_bleu("", "en production") == 0.0
    same, near, far, empty = bertscore_f1(["En production", "production", "Python 3", ""], ["En production"] * 4)
    assert same == pytest.approx(1.0, abs=1e-3) and 1 > near > far and empty == 0.0
