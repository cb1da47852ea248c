import pytest

from dyag_mlops.grounding import span_texts
from dyag_mlops.prompts import UNKNOWN_ANSWER, build_messages, render_prompt

SHEET = "Nom : SIRENA\nStatut : En production\nTechnologie principale : Java/Spring Boot\nContacts : Marie Dupont (marie.dupont@region-exemple.fr)"


def test_spans_start_at_words_of_one_line_and_include_unknown():
    spans = span_texts([f"[1] {SHEET}"])
    assert "En production" in spans and "Statut : En production" in spans
    assert "Spring Boot" in spans  # after the slash
    assert "marie.dupont@region-exemple.fr)" in spans  # after the parenthesis
    assert UNKNOWN_ANSWER in spans
    assert not any(s.startswith("[1]") or "\n" in s for s in spans)
    assert "roduction" not in spans  # not from inside a word


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_grounded_answer_is_a_span_of_its_own_context(tiny_model_dir, temperature):
    """A random tiny model writes gibberish; grounded, every answer (greedy or
    sampled) is a piece of one line of its context or 'Je ne sais pas'."""
    import torch

    from dyag_mlops.models import load_base_model
    from dyag_mlops.systems import Predictor

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    predictor = Predictor("rag", model, tokenizer, max_new_tokens=12, temperature=temperature)
    contexts = [[SHEET], ["Nom : GéoPlan\nHébergement : Cloud interministériel Nubo"], [SHEET, "Site web : https://x.fr"]]
    prompts = [render_prompt(tokenizer, build_messages(f"Question {i} ?", chunks)) for i, chunks in enumerate(contexts)]
    free, _ = predictor._generate(prompts)
    grounded, counts = predictor._generate(prompts, contexts)
    lines = [[line for chunk in chunks for line in chunk.splitlines()] for chunks in contexts]
    assert not all(any(text in line for line in own) for text, own in zip(free, lines) if text)  # the test can fail
    for text, own, count in zip(grounded, lines, counts):
        assert text and count >= 1
        assert text == UNKNOWN_ANSWER or any(text in line for line in own), text


class OneSheetRetriever:
    """Retrieves SHEET for any question."""

    def retrieve(self, questions, top_k=1):
        from types import SimpleNamespace

        return [[SimpleNamespace(content=SHEET, chunk_id="app-001#0", doc_id="app-001")] for _ in questions]


def test_only_rag_sees_the_worked_example_and_its_answers_stay_in_the_retrieved_sheet(tiny_model_dir):
    import torch

    from dyag_mlops.models import load_base_model
    from dyag_mlops.prompts import WORKED_EXAMPLE_SHEET, WORKED_EXAMPLE_TURNS
    from dyag_mlops.systems import Predictor

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")

    def predictor(system, worked_example):
        return Predictor(system, model, tokenizer, retriever=OneSheetRetriever(), top_k=1, max_new_tokens=8,
                         grounded=True, worked_example=worked_example)

    rag = predictor("rag", True)
    (messages,), _ = rag.messages_for(["Quel est le statut de SIRENA ?"])
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(WORKED_EXAMPLE_TURNS) + ["user"]
    assert WORKED_EXAMPLE_SHEET in messages[1]["content"] and SHEET in messages[-1]["content"]
    for other in (predictor("rag", False), predictor("hybrid", True)):
        (plain,), _ = other.messages_for(["Quel est le statut de SIRENA ?"])
        assert plain == build_messages("Quel est le statut de SIRENA ?", [SHEET])
    for answer in rag.answer(["Quel est le statut de SIRENA ?", "qui contacter ?"]):
        assert answer.text == UNKNOWN_ANSWER or any(answer.text in line for line in SHEET.splitlines()), answer.text
        assert not any(answer.text.startswith(line.partition(" : ")[0] + " : ") for line in SHEET.splitlines())


def test_a_whole_line_answer_loses_its_label_and_other_answers_stay_whole():
    from dyag_mlops.prompts import WORKED_EXAMPLE_SHEET, WORKED_EXAMPLE_TURNS, strip_field_label

    assert strip_field_label("Statut : En production", [SHEET]) == "En production"
    assert strip_field_label("Technologie principale : Java/Spring Boot", ["Nom : X", SHEET]) == "Java/Spring Boot"
    assert strip_field_label("En production", [SHEET]) == "En production"
    assert strip_field_label(UNKNOWN_ANSWER, [SHEET]) == UNKNOWN_ANSWER
    # " : " inside a value, or a label that begins no line of the chunks: unchanged
    assert strip_field_label("Note : voir le wiki", [SHEET]) == "Note : voir le wiki"
    assert strip_field_label("Statut : En production", ["Nom : GéoPlan"]) == "Statut : En production"
    assert strip_field_label("Statut : ", [SHEET]) == "Statut : "
    # the worked example answers whole lines of its sheet (or "Je ne sais pas")
    lines = WORKED_EXAMPLE_SHEET.splitlines()
    assert all(answer == UNKNOWN_ANSWER or answer in lines for _, answer in WORKED_EXAMPLE_TURNS)
