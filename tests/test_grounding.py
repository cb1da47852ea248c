import re

import pytest

from conftest import FixedRetriever, demo_profile
from dyag_mlops.data.inventory import cached_schema
from dyag_mlops.systems.grounding import span_texts
from dyag_mlops.systems.prompts import build_messages, render_prompt

FR = cached_schema("fr")
UNKNOWN = FR.unknown_answer
# How the index renders a document: "Label: value" lines.
SHEET = "Nom: SIRENA\nStatut: En production\nTechnologie principale: Java/Spring Boot\nContacts: Marie Dupont (marie.dupont@region-exemple.fr)"


def test_spans_start_at_a_field_lines_start_or_value_other_lines_at_words_and_include_unknown():
    """An inventory's answer is a field's value: a span of a "Label: value"
    line starts at the line or at its value (a small model that started
    inside a value dropped its first words: "Dupont" for "Marie Dupont");
    a line without a label may be answered from any of its words."""
    spans = span_texts([f"[1] {SHEET}\nhébergée à Lyon (Datacenter Gerland)"], UNKNOWN)
    assert "En production" in spans and "Statut: En production" in spans
    assert "Java/Spring Boot" in spans and "Spring Boot" not in spans
    assert "Marie Dupont (marie.dupont@region-exemple.fr)" in spans
    assert not any(s.startswith("Dupont") for s in spans)
    assert "Lyon (Datacenter Gerland)" in spans and "Datacenter Gerland)" in spans  # after a space, after the parenthesis
    assert UNKNOWN in spans
    assert not any(s.startswith("[1]") or "\n" in s for s in spans)
    assert "roduction" not in spans and "erland)" not in spans  # not from inside a word
    # the refusal is the language's: an English context is refused in English
    assert "I don't know" in span_texts(["Status: Active"], "I don't know")
    assert UNKNOWN not in span_texts(["Status: Active"], "I don't know")


def test_a_span_of_prose_may_start_after_a_word_the_question_says():
    """The answer to a question on a detail of a description follows the
    words the question repeats; other values still start at their start."""
    prose = "Description: Projet d'outil d'instruction des avis régionaux, abandonné en 2022 faute de financement."
    spans = span_texts([prose, SHEET], UNKNOWN, "Pourquoi l'outil a-t-il été abandonné ? Marie Dupont le sait ?")
    assert "en 2022 faute de financement." in spans and "d'instruction des avis régionaux, abandonné en 2022 faute de financement." in spans
    assert "faute de financement." not in spans and "2022 faute de financement." not in spans  # not after an unsaid word
    assert not any(s.startswith("Dupont") for s in spans)  # a contact is no prose
    assert "en 2022 faute de financement." not in span_texts([prose], UNKNOWN)  # no question, no such start
    # items qualified in brackets are a list, however long: entered at its start, not after a word
    actors = "Acteurs: ARS/DVSS (Maîtrise d'ouvrage), ARS/DSI (Maîtrise d'œuvre), Observatoire régional de la santé (Utilisateur)"
    spans = span_texts([actors], UNKNOWN, "Qui assure la maîtrise d'œuvre ?")
    assert actors.partition(": ")[2] in spans
    assert not any(s.startswith("Observatoire") for s in spans)


def test_a_question_asking_for_figures_enters_prose_at_its_numbers_only():
    """ "Combien de bâtiments … ?" of a description: the spans start at the
    figure or the short words before it, not at the line; a value that is
    no prose, or prose without a number, keeps its usual starts."""
    prose = "Description: Inventaire des 1 450 bâtiments régionaux avec suivi de plus de 300 sites."
    spans = span_texts([prose, "Contacts: Julie Martin", "Site web: https://x.fr"], UNKNOWN, "Combien de bâtiments ?", figures=True)
    assert "des 1 450 bâtiments régionaux avec suivi de plus de 300 sites." in spans
    assert "plus de 300 sites." in spans
    assert not any(s.startswith(("Description", "Inventaire")) for s in spans)
    assert "Julie Martin" in spans and "https://x.fr" in spans
    assert "Inventaire sans chiffre des bâtiments régionaux et des sites." in span_texts(
        ["Description: Inventaire sans chiffre des bâtiments régionaux et des sites."], UNKNOWN, "Combien ?", figures=True
    )
    assert prose.partition(": ")[2] in span_texts([prose], UNKNOWN, "Combien de bâtiments ?")  # not asked for figures


def test_a_value_that_is_no_prose_ends_only_at_an_item_s_end(tiny_model_dir):
    """A contact line is copied whole, not cut after its first address; a
    list may stop after one of its items; prose copied from its start after
    one of its sentences, and from a word the question says anywhere."""
    from transformers import AutoTokenizer

    from dyag_mlops.systems.grounding import END, span_trie

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    contact = "Equipe SIRENA - DDT 35 <sirena@exemple.fr> : <sirena@exemple.fr>"
    listed = "GéoPlan, e-Subv"
    first = "SIRENA permet de réserver des salles et des véhicules de service."
    prose = f"{first} Elle remplace les plannings papier des services."
    trie = span_trie(tokenizer, [f"Contacts: {contact}\nApplications liées: {listed}\nDescription: {prose}"], "", "Que remplace SIRENA ?")

    def ends(value: str) -> list[str]:
        node, ids, found = trie, tokenizer(value, add_special_tokens=False)["input_ids"], []
        for i, token in enumerate(ids):
            node = node[token]
            if END in node:
                found.append(tokenizer.decode(ids[: i + 1]))
        return found

    assert ends(contact) == [contact]
    assert ends(listed) == ["GéoPlan", listed]
    assert ends(prose) == [first, prose]
    detail = "les plannings papier des services."  # after "remplace", which the question says
    assert len(ends(detail)) == len(tokenizer(detail, add_special_tokens=False)["input_ids"])


def test_grounding_reads_the_question_the_prompt_asks_without_the_document_s_names(tiny_model_dir, monkeypatch):
    """A misspelt word is corrected in the prompt; the spans that start after
    a word the question says are built from that corrected question too, less
    the words naming the document (its title, its full name): "Ressources"
    of "Système d'Information des Ressources Naturelles" is no place in its
    description an answer starts after."""
    from dyag_mlops.retrieval.rag import Retrieved
    from dyag_mlops.systems import grounding
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    retriever = FixedRetriever(Retrieved("app-001", "app-001", "SIRENA", SHEET, 0.9))
    retriever.spelled = lambda question: question.replace("statu", "statut")
    seen = []

    def recording(tokenizer, contexts, prompt_length, refusals, questions=None, figures=None):
        seen.extend(questions)
        return real(tokenizer, contexts, prompt_length, refusals, questions, figures)

    real = grounding.span_constraint
    monkeypatch.setattr(grounding, "span_constraint", recording)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    predictor = Predictor("rag", model, tokenizer, retriever=retriever, top_k=1, max_new_tokens=4, grounded=True)
    answers = predictor.answer(["Quel est le statu de SIRENA ?", "Que gère le Système d'Information des Ressources Naturelles ?"])
    assert [a.error for a in answers] == [None, None]
    said = [set(re.findall(r"\w+", question)) for question in seen]
    assert said[0] == {"Quel", "est", "le", "statut", "de"}
    assert said[1] == {"Que", "gère", "le", "d", "des"}  # "des": a stop word, no name


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_grounded_answer_is_a_span_of_its_own_context(tiny_model_dir, temperature):
    """A random tiny model writes gibberish; grounded, every answer (greedy or
    sampled) is a piece of one line of its context or 'Je ne sais pas'."""
    import torch

    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    predictor = Predictor("rag", model, tokenizer, max_new_tokens=12, temperature=temperature, schema="fr")
    contexts = [[SHEET], ["Nom: GéoPlan\nHébergement: Cloud interministériel Nubo"], [SHEET, "Site web: https://x.fr"]]
    prompts = [render_prompt(tokenizer, build_messages(f"Question {i} ?", chunks, schema=FR)) for i, chunks in enumerate(contexts)]
    free, _ = predictor._generate(prompts)
    grounded, counts = predictor._generate(prompts, contexts)
    lines = [[line for chunk in chunks for line in chunk.splitlines()] for chunks in contexts]
    assert not all(any(text in line for line in own) for text, own in zip(free, lines) if text)  # the test can fail
    for text, own, count in zip(grounded, lines, counts):
        assert text and count >= 1
        assert text == UNKNOWN or any(text in line for line in own), text


def one_sheet_retriever():
    """Retrieves SHEET for any question (the demo corpus's profile)."""
    from types import SimpleNamespace

    return FixedRetriever(SimpleNamespace(content=SHEET, chunk_id="app-001", doc_id="app-001", title="SIRENA"))


def test_only_rag_sees_the_worked_example_and_its_answers_stay_in_the_retrieved_sheet(tiny_model_dir):
    import torch

    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    turns = demo_profile().example["turns"]
    assert turns, "the demo corpus gives a worked example"

    def predictor(system, worked_example):
        return Predictor(system, model, tokenizer, retriever=one_sheet_retriever(), top_k=1, max_new_tokens=8,
                         grounded=True, worked_example=worked_example)

    rag = predictor("rag", True)
    assert rag.schema_name == "fr"  # the index's corpus names the language
    (messages,), _ = rag.messages_for(["Quel est le statut de SIRENA ?"])
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(turns) + ["user"]
    assert turns[0]["sheet"] in messages[1]["content"] and SHEET in messages[-1]["content"]
    assert [m["content"] for m in messages[2:-1:2]] == [turn["answer"] for turn in turns]
    for other in (predictor("rag", False), predictor("hybrid", True)):
        (plain,), _ = other.messages_for(["Quel est le statut de SIRENA ?"])
        assert plain == build_messages("Quel est le statut de SIRENA ?", [SHEET], schema=FR)
    for answer in rag.answer(["Quel est le statut de SIRENA ?", "qui contacter ?"]):
        assert answer.text == UNKNOWN or any(answer.text in line for line in SHEET.splitlines()), answer.text
        assert not any(answer.text.startswith(line.partition(": ")[0] + ": ") for line in SHEET.splitlines())


def test_a_whole_line_answer_loses_its_label_and_other_answers_stay_whole():
    from dyag_mlops.systems.prompts import strip_field_label

    assert strip_field_label("Statut: En production", [SHEET]) == "En production"
    assert strip_field_label("Technologie principale: Java/Spring Boot", ["Nom: X", SHEET]) == "Java/Spring Boot"
    # either way of writing a field line: "Label : value" (the demo corpus) and "Label: value" (sheets)
    old_style = SHEET.replace(": ", " : ")
    assert strip_field_label("Statut : En production", [old_style]) == "En production"
    assert strip_field_label("Statut : En production", [SHEET]) == "En production"
    assert strip_field_label("Statut: En production", [old_style]) == "En production"
    assert strip_field_label("En production", [SHEET]) == "En production"
    assert strip_field_label(UNKNOWN, [SHEET]) == UNKNOWN
    # a colon inside a value, or a label that begins no line of the chunks: unchanged
    assert strip_field_label("Note: voir le wiki", [SHEET]) == "Note: voir le wiki"
    assert strip_field_label("Statut: En production", ["Nom: GéoPlan"]) == "Statut: En production"
    assert strip_field_label("Statut: ", [SHEET]) == "Statut: "
    # the corpus's worked example answers whole lines of its sheet (or the refusal),
    # so that stripping the label leaves the value
    turns = demo_profile().example["turns"]
    assert turns
    for turn in turns:
        answer = turn["answer"]
        assert answer == UNKNOWN or answer in turn["sheet"].splitlines()
        if answer != UNKNOWN:
            assert strip_field_label(answer, [turn["sheet"]]) == answer.partition(": ")[2]


def test_no_refusal_is_offered_where_the_sheet_kept_the_asked_field():
    assert UNKNOWN not in span_texts(["Statut: En production"], "")
    assert span_texts([""], "") == [""] and span_texts([""], UNKNOWN) == [UNKNOWN]


def test_a_sheet_narrowed_to_the_asked_field_is_answered_from(tiny_model_dir):
    import dataclasses

    import torch

    from dyag_mlops.retrieval.rag import Retrieved
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    kept = Retrieved("app-001#status", "app-001", "SIRENA", "Statut: En production", 1.0, field="status")
    lacking = dataclasses.replace(kept, chunk_id="app-001#website", content="", field="website")
    whole = Retrieved("app-001", "app-001", "SIRENA", SHEET, 1.0)
    predictor = Predictor("rag", model, tokenizer, retriever=FixedRetriever(kept), top_k=1, max_new_tokens=8,
                          grounded=True, focus=True)
    predictor.schema_for(["?"])
    # the router found the field on the document: the answer is there; otherwise the refusal may be given
    assert predictor.refusal_for([kept]) == ""
    assert predictor.refusal_for([lacking]) == predictor.refusal_for([whole]) == predictor.refusal_for([]) == UNKNOWN
    (answer,) = Predictor("rag", model, tokenizer, retriever=FixedRetriever(kept), top_k=1, max_new_tokens=8,
                          grounded=True, focus=False).answer(["Quel est le statut de SIRENA ?"])
    assert answer.text != UNKNOWN and answer.text in "Statut: En production", answer.text


def test_a_question_with_nothing_retrieved_is_refused_without_running_the_model(tiny_model_dir):
    from dyag_mlops.retrieval.rag import Retrieved
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu")
    emptied = Retrieved("app-001#website", "app-001", "SIRENA", "", 1.0, field="website")
    for hits in ([], [emptied]):
        predictor = Predictor("rag", model, tokenizer, retriever=FixedRetriever(*hits), top_k=1, max_new_tokens=8, grounded=True)
        predictor._generate = None  # any generation fails the test
        (answer,) = predictor.answer(["Quel est le site web de SIRENA ?"])
        assert (answer.text, answer.tokens, answer.error) == (UNKNOWN, 0, None)
        assert answer.sources == [h.chunk_id for h in hits]
    # ungrounded, the model answers: it may say anything
    free = Predictor("rag", model, tokenizer, retriever=FixedRetriever(), top_k=1, max_new_tokens=4, grounded=False)
    (answer,) = free.answer(["Quel est le site web de SIRENA ?"])
    assert answer.tokens >= 1


def test_rows_that_ended_leave_the_batch_and_answers_stay_the_same(tiny_model_dir, monkeypatch):
    """Free decoding in stages: the rows that ended are dropped (with their
    part of the cache) between stages; each answer is the one a single stage
    gives."""
    import torch

    from dyag_mlops.systems import predictor as predictor_module
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    [newline] = tokenizer("\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # some answers end early, at a line break
        model.get_output_embeddings().weight[newline] *= 3
    predictor = Predictor("rag", model, tokenizer, max_new_tokens=20, schema="fr")
    prompts = [render_prompt(tokenizer, build_messages(f"Question {i} ?", [SHEET], schema=FR)) for i in range(8)]
    widths = []
    generate = model.generate

    def recorded(**kwargs):
        widths.append(len(kwargs["input_ids"]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recorded)
    monkeypatch.setattr(predictor_module, "ANSWER_STAGE", 1000)
    whole = predictor._generate(prompts, one_line=True)
    assert widths == [len(prompts)]
    monkeypatch.setattr(predictor_module, "ANSWER_STAGE", 2)
    widths.clear()
    assert predictor._generate(prompts, one_line=True) == whole
    assert len(widths) > 2 and min(widths) < len(prompts)  # rows left between stages


@pytest.mark.parametrize("shared_start, budget", [(True, 24), (False, 24), (True, 3)])
def test_grounded_answers_checked_several_tokens_a_pass_equal_generates(tiny_model_dir, monkeypatch, shared_start, budget):
    """decode_spans gives the tokens generate gives with SpanConstraint, in
    fewer forward passes than tokens; with a shared prompt start's cache,
    with left-padded prompts, and with a max_new_tokens shorter than the answers."""
    import torch

    from dyag_mlops.systems import grounding
    from dyag_mlops.systems import predictor as predictor_module
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    with torch.no_grad():  # the end of an answer scores 0: a random model copies more than one token
        model.get_output_embeddings().weight[tokenizer.eos_token_id] = 0
    if not shared_start:
        monkeypatch.setattr(predictor_module, "SHARED_PREFIX", 10**6)
    predictor = Predictor("rag", model, tokenizer, max_new_tokens=budget, schema="fr")
    contexts = [[SHEET], ["Nom: GéoPlan\nHébergement: Cloud interministériel Nubo"], [SHEET, "Site web: https://x.fr"], ["Statut: Abandonné"]] * 2
    prompts = [render_prompt(tokenizer, build_messages(f"Question {i} ?", chunks, schema=FR)) for i, chunks in enumerate(contexts)]
    passes = []
    model.get_decoder().register_forward_hook(lambda *_: passes.append(1))
    with monkeypatch.context() as m:
        m.setattr(grounding, "decode_spans", lambda *args: None)  # generate, one token a pass
        one_by_one = predictor._generate(prompts, contexts)  # (and the shared start's cache)
    passes.clear()
    checked = predictor._generate(prompts, contexts)
    assert checked == one_by_one
    assert len(passes) < max(checked[1])  # several tokens checked in one pass


def test_a_grounded_answer_is_not_cut_at_max_new_tokens(tiny_model_dir):
    """A value that is no prose ends only at an item's end: with
    max_new_tokens=2, the grounded answer is still a whole item, whatever
    its length (a contact with its addresses)."""
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    value = "LEROUX Anne (Cheffe de projet) - DGPR/SRNH <anne.leroux@example.gouv.fr> : <anne.leroux@example.gouv.fr>"
    contexts = [[f"Contacts: {value}"]]
    prompts = [render_prompt(tokenizer, build_messages("Qui contacter ?", chunks, schema=FR)) for chunks in contexts]
    (text,), (count,) = Predictor("rag", model, tokenizer, max_new_tokens=2, schema="fr")._generate(prompts, contexts, refusals=[""])
    assert text in (value, f"Contacts: {value}") and count > 2


def test_a_model_whose_settings_change_greedy_choices_is_left_to_generate(tiny_model_dir):
    """A repetition penalty in the model's generation config (Qwen2.5 sets
    one) is applied by generate: decode_spans declines, and the grounded
    answers are generate's."""
    from dyag_mlops.systems import grounding
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, _ = load_base_model(str(tiny_model_dir), device="cpu", precision="fp32")
    predictor = Predictor("rag", model, tokenizer, max_new_tokens=8, schema="fr")
    prompt = render_prompt(tokenizer, build_messages("Question ?", [SHEET], schema=FR))
    enc = predictor._encode([prompt])
    args = (model, enc["input_ids"], enc["attention_mask"], enc.get("cache"), [{}], tokenizer.eos_token_id, 8)
    assert grounding.decode_spans(*args) is not None
    model.generation_config.repetition_penalty = 1.3
    assert grounding.decode_spans(*args) is None
    text, _ = predictor._generate([prompt], [[SHEET]])
    assert text[0] and any(text[0] in line for line in SHEET.splitlines()) or text[0] == UNKNOWN
