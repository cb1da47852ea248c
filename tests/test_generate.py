import json
from collections import Counter

import mlflow
import pytest
from click.testing import CliRunner

from conftest import demo_profile, demo_sheets, write_jsonl
from dyag_mlops.cli import main
from dyag_mlops.config import GenerateConfig
from dyag_mlops.data.corpus import corpus_digest, load_corpus
from dyag_mlops.data.inventory import cached_schema, field_questions
from dyag_mlops.data.text import normalise
from dyag_mlops.errors import DyagError
from dyag_mlops.tracking import stage_run
from dyag_mlops.train import generate
from dyag_mlops.train import questions as training_questions

FR = cached_schema("fr")
UNKNOWN = FR.unknown_answer


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def questions(rows):
    return {normalise(r["messages"][1]["content"]) for r in rows}


def test_rule_based_split_holds_unseen_phrasings_of_trained_facts(tmp_path):
    result = generate.run(GenerateConfig(output=str(tmp_path / "qa.jsonl")))
    train, val, test = (read(result.files[s]) for s in ("train", "val", "test"))
    assert len(train) == 8 * len(test) > 0 and len(val) == len(test)  # 80/10/10
    assert not questions(train) & questions(test)
    assert not questions(train) & questions(val)
    assert not questions(val) & questions(test)
    train_facts = {r["metadata"]["fact_id"] for r in train}
    assert {r["metadata"]["fact_id"] for r in test} <= train_facts
    assert result.manifest["splits"]["test"]["fact_coverage_by_train"] == 1.0
    example = train[0]
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert set(example["metadata"]) >= {"doc_id", "field", "method", "chunk_id"}
    assert "status" in result.manifest["splits"]["train"]["per_field"]


def test_answers_come_from_the_corpus(tmp_path):
    result = generate.run(GenerateConfig(output=str(tmp_path / "qa.jsonl"), split=False))
    rows = read(result.files["all"])
    sirena = [r for r in rows if r["metadata"]["doc_id"] == "app-001" and r["metadata"]["field"] == "status"]
    assert sirena and all(r["messages"][2]["content"] == "En production" for r in sirena)
    assert any(r["messages"][2]["content"] == "Je ne sais pas" for r in rows)  # missing fields are taught too


def test_augmented_never_repeats_and_reports_what_it_could_make(tmp_path):
    rule = generate.run(GenerateConfig(output=str(tmp_path / "r.jsonl"), split=False))
    aug = generate.run(GenerateConfig(method="augmented", count=10**6, output=str(tmp_path / "a.jsonl"), split=False))
    rows = read(aug.files["all"])
    pairs = [(r["messages"][1]["content"], r["messages"][2]["content"]) for r in rows]
    assert len(pairs) == len(set(pairs)) > rule.counts["examples_total"]
    assert aug.warnings and "all kept" in aug.warnings[0]
    assert any(" ; " in a for _, a in pairs)  # combined questions


def test_count_and_seed_are_repeatable(tmp_path):
    a = generate.run(GenerateConfig(count=50, seed=7, output=str(tmp_path / "a.jsonl")))
    b = generate.run(GenerateConfig(count=50, seed=7, output=str(tmp_path / "b.jsonl")))
    assert a.counts["examples_total"] == 50
    assert read(a.files["train"]) == read(b.files["train"])


def test_a_count_asks_every_fact_once_before_any_fact_twice(tmp_path):
    """--count spreads the examples over the facts: as many as there are
    facts ask each one once; a uniform sample would leave about a third of
    them unasked and ask others two or three times."""
    every = read(generate.run(GenerateConfig(method="augmented", output=str(tmp_path / "all.jsonl"), split=False)).files["all"])
    facts = {row["metadata"]["fact_id"] for row in every}
    result = generate.run(GenerateConfig(method="augmented", count=len(facts) + 5, output=str(tmp_path / "some.jsonl"), split=False))
    asked = Counter(row["metadata"]["fact_id"] for row in read(result.files["all"]))
    assert set(asked) == facts
    assert sorted(asked.values())[-6:] == [1, 2, 2, 2, 2, 2]


def test_malformed_jsonl_names_file_and_line_and_writes_nothing(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "a", "content": "Statut : En production"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DyagError, match=r"bad\.jsonl:2"):
        generate.run(GenerateConfig(corpus=str(corpus), output=str(tmp_path / "out.jsonl")))
    assert not list(tmp_path.glob("out*"))


def test_no_field_found_says_what_a_field_looks_like(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "content": "Rien d'utile ici."}])
    with pytest.raises(DyagError, match=r"no field found in .*c\.jsonl.*'Label: value' lines.*'## Label' headings"):
        generate.run(GenerateConfig(corpus=str(corpus), output=str(tmp_path / "o.jsonl")))


def test_empty_corpus_is_an_error(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("\n", encoding="utf-8")
    with pytest.raises(DyagError, match="empty"):
        generate.run(GenerateConfig(corpus=str(corpus), output=str(tmp_path / "o.jsonl")))


def test_existing_outputs_are_not_overwritten_without_asking(tmp_path):
    config = GenerateConfig(output=str(tmp_path / "qa.jsonl"))
    generate.run(config)
    before = (tmp_path / "qa_train.jsonl").read_text()
    with pytest.raises(DyagError, match="--overwrite"):
        generate.run(config)
    generate.run(GenerateConfig(output=str(tmp_path / "qa.jsonl"), overwrite=True, seed=1))
    assert (tmp_path / "qa_train.jsonl").read_text() != before


def test_markdown_corpus_and_english_schema(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "billing.md").write_text("# Billing\n\nStatus: In production\nOwner: Finance team\n\n## Notes\nSome text.\n")
    result = generate.run(GenerateConfig(corpus=str(docs), schema="en", output=str(tmp_path / "en.jsonl"), split=False))
    rows = read(result.files["all"])
    assert any("Billing" in r["messages"][1]["content"] and r["messages"][2]["content"] == "In production" for r in rows)


def test_validate_reports_line_numbers(tmp_path):
    bad = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}]},
            {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": ""}]},
        ],
    )
    problems = generate.validate_dataset(bad)
    assert any(":2:" in p for p in problems) and any(":3:" in p for p in problems)
    assert not any(":1:" in p for p in problems)
    result = CliRunner().invoke(main, ["generate-training", "--validate", str(bad)])
    assert result.exit_code == 1


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    result = CliRunner().invoke(main, ["generate-training", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert "corpus not found" in result.output


def test_generate_run_logs_datasets_to_mlflow(tmp_path):
    # the corpus input is its chunks as read, whatever the file: here a spreadsheet export
    sheet = tmp_path / "tools.csv"
    sheet.write_text("name;status;owner\n" + "".join(f"tool{i};{s};team {i}\n" for i, s in enumerate(["active", "retired", "planned"])))
    config = GenerateConfig(corpus=str(sheet), output=str(tmp_path / "qa.jsonl"))
    with stage_run("generate_training", config) as tracker:
        generate.run(config, tracker)
    run = mlflow.get_run(tracker.run_id)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert {"train", "val", "test", "corpus"} <= set(inputs)
    assert inputs["corpus"].digest == corpus_digest(load_corpus(sheet)) and inputs["corpus"].name == "tools.csv"
    assert run.data.metrics["examples_train"] > 0


def test_with_context_builds_raft_examples_from_the_index(tmp_path, demo_index):
    from dyag_mlops.data.evalset import split_messages
    from dyag_mlops.systems.prompts import build_messages

    config = GenerateConfig(count=80, with_context=demo_index, oracle_share=0.7, focus=False, output=str(tmp_path / "qa.jsonl"), split=False)
    result = generate.run(config)
    rows = read(result.files["all"])
    chunks = demo_sheets()  # the index holds one sheet per document, its id the document's
    oracle = [r for r in rows if r["metadata"]["context"] == "oracle"]
    distractors = [r for r in rows if r["metadata"]["context"] == "distractors"]
    assert len(oracle) + len(distractors) == len(rows) == 80
    assert 0.5 < len(oracle) / len(rows) < 0.9 and distractors
    assert result.manifest["contexts"]["context_oracle"] == len(oracle)
    for row in rows:
        question, answer = split_messages(row["messages"])[0], row["messages"][-1]["content"]
        meta = row["metadata"]
        assert len(meta["context_ids"]) == 1
        assert meta["focus"] is False and meta["schema"] == "fr"
        # the one prompt builder that serves query and evaluation built it
        bare_question = question.rsplit("Question : ", 1)[1]
        assert row["messages"] == build_messages(bare_question, [chunks[i] for i in meta["context_ids"]], answer, schema=FR)
        if meta["context"] == "oracle":
            assert meta["context_ids"] == [meta["doc_id"]]
            assert answer == UNKNOWN or answer in question  # the answer is in the context
        else:
            assert meta["doc_id"] not in meta["context_ids"] and answer == UNKNOWN


@pytest.mark.parametrize("template", ["Quel est le statut de {doc} ?", "l'{doc} est où ?", "{doc}", "Où est {doc}s ?", "Le {doc}-bis et {doc} ?", "X{doc}"])
@pytest.mark.parametrize("name", ["SIRENA", "e-Subv", "GéoPlan", "sig-eau", "A.B.", "Ærø café", "_x_"])
def test_question_key_is_normalise_of_the_question(template, name):
    assert training_questions.question_key(template, name, normalise(name)) == normalise(template.replace("{doc}", name))


def test_with_context_refuses_an_index_of_another_corpus(tmp_path):
    from dyag_mlops.config import IndexConfig
    from dyag_mlops.retrieval import rag

    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "x-1", "content": "Nom : ORBITA\nStatut : En test", "metadata": {"nom": "ORBITA"}}])
    index = str(tmp_path / "index")
    rag.run(IndexConfig(corpus=str(other), index=index))
    with pytest.raises(DyagError, match="holds no chunk of document"):
        generate.run(GenerateConfig(count=20, with_context=index, output=str(tmp_path / "qa.jsonl")))
    assert not (tmp_path / "qa_train.jsonl").exists()  # nothing written


def demo_examples(augmented=True, titles=None):
    from dyag_mlops.data.corpus import load_corpus
    from dyag_mlops.data.inventory import documents

    docs = documents(load_corpus(None))
    profile = demo_profile()
    facts = training_questions.extract_facts(docs, profile)
    if titles:  # the same facts under awkward document names
        facts = [training_questions.Fact(f.doc_id, titles[i % len(titles)], f.field, f.label, f.value, f.chunk_id) for i, f in enumerate(facts)]
    facts += training_questions.missing_facts(facts, docs, profile, UNKNOWN)
    return training_questions.rule_based_examples(facts, profile, FR, augmented=augmented)


@pytest.mark.parametrize("titles", [None, ["ΣΟΦΙΑ", "Ærø", "A.B.", "ﬁchier", "e-Subv", "_x_", "Quel"]])
def test_keys_are_normalised_questions_and_lines_are_the_example_dicts(titles):
    """The shortcuts of generation give what the plain way would: each dedupe
    key is normalise(question) (combined questions included), each JSON line
    is the example dict serialised, and each example is make_example's."""
    from dyag_mlops.data.files import jsonl_lines

    examples = demo_examples(titles=titles)
    assert any(" ; " in a for a in examples.answers)  # combined questions are there
    assert examples.keys == [normalise(q) for q in examples.questions]
    positions = list(range(len(examples)))[::-1]  # any order, groups revisited
    assert list(examples.jsonl(positions)) == jsonl_lines([examples.example(i) for i in positions])
    i = examples.group_of.index(1)
    meta = examples.metadata[1]
    fact = training_questions.Fact(meta["doc_id"], meta["title"], meta["field"], "", examples.answers[1], meta["chunk_id"])
    assert examples.example(i) == training_questions.make_example(examples.questions[i], fact.value, fact, "augmented", FR)


def test_first_occurrences_keeps_the_first_of_each_key():
    assert training_questions.first_occurrences(["a", "b", "c"]) == [0, 1, 2]
    assert training_questions.first_occurrences(["a", "b", "a", "c", "b"]) == [0, 1, 3]
    assert training_questions.first_occurrences([]) == []


def reference_split(codes, names, val_ratio, test_ratio, seed):
    """split_positions' rule written as the plain loop it replaces, on the same
    random grouping and fact order."""
    import numpy as np
    from collections import defaultdict

    rng = np.random.default_rng(seed)
    by_fact = defaultdict(list)
    for i in np.argsort(np.asarray(codes) * (len(codes) + 1) + rng.permutation(len(codes)), kind="stable").tolist():
        by_fact[codes[i]].append(i)
    present = sorted(by_fact, key=lambda c: names[c])
    facts = [present[j] for j in rng.permutation(len(present))]
    splits = {"train": [], "val": [], "test": []}
    for name, ratio in (("test", test_ratio), ("val", val_ratio)):
        target = round(ratio * len(codes))
        while target:  # one phrasing per fact and round, never a fact's last
            takers = [f for f in facts if len(by_fact[f]) >= 2][:target]
            if not takers:
                break
            splits[name] += [by_fact[f].pop() for f in takers]
            target -= len(takers)
    for f in facts:
        splits["train"] += by_fact[f]
    return splits


def test_split_positions_follows_the_round_robin_rule():
    import numpy as np

    rng = np.random.default_rng(0)
    for trial in range(200):
        facts, n = int(rng.integers(1, 30)), int(rng.integers(0, 150))
        codes = rng.integers(0, facts, n).tolist()
        names = [f"fact-{x}" for x in rng.permutation(facts)]
        val_ratio, test_ratio = float(rng.choice([0.0, 0.1, 0.3])), float(rng.choice([0.0, 0.1, 0.6]))
        assert generate.split_positions(codes, names, val_ratio, test_ratio, trial) == reference_split(
            codes, names, val_ratio, test_ratio, trial
        ), trial


def test_context_metadata_does_not_leak_to_other_phrasings(tmp_path, demo_index):
    """Phrasings of a fact share their metadata dict until add_contexts
    changes one: an example left without context must not gain a context."""
    config = GenerateConfig(count=0, with_context=demo_index, context_share=0.3, output=str(tmp_path / "qa.jsonl"), split=False)
    rows = read(generate.run(config).files["all"])
    with_context = [r for r in rows if "Contexte :" in r["messages"][1]["content"]]
    assert 0.2 < len(with_context) / len(rows) < 0.4
    assert all(("context" in r["metadata"]) == (r in with_context) for r in rows)
    assert all(("focus" in r["metadata"]) == (r in with_context) for r in rows)
    assert all(r["metadata"]["schema"] == "fr" for r in rows)


def test_questions_on_one_context_become_one_conversation(tmp_path, demo_index):
    from collections import Counter

    from dyag_mlops.systems.prompts import build_messages

    chunks = demo_sheets()
    common = dict(count=300, with_context=demo_index, seed=3, focus=False)  # whole sheets: questions share one
    single = generate.run(GenerateConfig(output=str(tmp_path / "one.jsonl"), **common))
    packed = generate.run(GenerateConfig(output=str(tmp_path / "conv.jsonl"), questions_per_example=4, **common))
    single_train, conversations = read(single.files["train"]), read(packed.files["train"])
    # val and test stay one question each, and identical
    for name in ("val", "test"):
        assert read(single.files[name]) == read(packed.files[name])
    assert len(conversations) == packed.manifest["splits"]["train"]["conversations"] < len(single_train)

    def pairs(rows):
        """(context, bare question, answer) of every question asked."""
        found = []
        for row in rows:
            context = tuple(row["metadata"]["context_ids"])
            turns = row["messages"][1:]
            first = turns[0]["content"].rsplit("Question : ", 1)[1]
            for i in range(0, len(turns), 2):
                found.append((context, first if i == 0 else turns[i]["content"], turns[i + 1]["content"]))
        return Counter(found)

    assert pairs(conversations) == pairs(single_train)  # nothing lost, nothing added
    sizes = Counter(len(r["metadata"]["fact_ids"]) for r in conversations)
    assert max(sizes) == 4 and sizes[4] > sizes[1]
    for row in conversations:
        meta, messages = row["metadata"], row["messages"]
        assert len(set(meta["fact_ids"])) == len(meta["fact_ids"]) == (len(messages) - 1) // 2
        # only the first question carries the context, built by the one prompt builder
        first_question = messages[1]["content"].rsplit("Question : ", 1)[1]
        assert messages[:2] == build_messages(first_question, [chunks[i] for i in meta["context_ids"]], schema=FR)
        assert all("Contexte" not in m["content"] for m in messages[2:])
    assert not generate.validate_dataset(packed.files["train"])


def test_closed_book_questions_are_packed_into_conversations_of_different_facts(tmp_path):
    from collections import Counter

    common = dict(count=200, seed=5, val_ratio=0.0, test_ratio=0.0)
    single = generate.run(GenerateConfig(output=str(tmp_path / "one.jsonl"), **common))
    packed = generate.run(GenerateConfig(output=str(tmp_path / "conv.jsonl"), questions_per_example=6, **common))
    single_train, conversations = read(single.files["train"]), read(packed.files["train"])
    assert len(conversations) == packed.manifest["splits"]["train"]["conversations"] < len(single_train) / 4

    def pairs(rows):
        turns = [row["messages"][i : i + 2] for row in rows for i in range(1, len(row["messages"]), 2)]
        return Counter((q["content"], a["content"]) for q, a in turns)

    assert pairs(conversations) == pairs(single_train)  # nothing lost, nothing added
    for row in conversations:
        fact_ids = row["metadata"]["fact_ids"]
        assert len(set(fact_ids)) == len(fact_ids) == (len(row["messages"]) - 1) // 2 <= 6
        assert [m["role"] for m in row["messages"]].count("system") == 1
    assert not generate.validate_dataset(packed.files["train"])
    assert not packed.warnings  # val and test were asked to be empty: no warning that they are


def test_questions_per_example_must_be_positive():
    with pytest.raises(ValueError, match="--questions-per-example"):
        GenerateConfig(questions_per_example=0)


def test_phrasings_asks_each_fact_with_the_first_templates_of_its_field(tmp_path):
    rows = read(generate.run(GenerateConfig(phrasings=2, output=str(tmp_path / "qa.jsonl"), split=False)).files["all"])
    templates = {info.name: field_questions(info, FR) for info in demo_profile().fields}
    # the first two: the schema's first wording and a generic one with the corpus's label
    assert templates["status"][:2] == ["Quel est le statut de {doc} ?", "Quel est le champ « statut » de {doc} ?"]
    per_fact = {}
    for r in rows:
        per_fact.setdefault(r["metadata"]["fact_id"], []).append(r["messages"][1]["content"])
    for fact_id, asked in per_fact.items():
        meta = next(r["metadata"] for r in rows if r["metadata"]["fact_id"] == fact_id)
        first_two = [t.replace("{doc}", meta["title"]) for t in templates[meta["field"]][:2]]
        assert sorted(asked) == sorted(first_two), fact_id


def test_hurried_questions_keep_their_words():
    import random

    rng = random.Random(0)
    question = "Où est hébergée l'application LYCEO ?"
    rewritten = [training_questions.hurried(question, rng) for _ in range(200)]
    assert question not in rewritten
    assert any(q == q.lower() for q in rewritten) and any(not q.endswith("?") for q in rewritten)
    assert any("heberg" in q for q in rewritten)  # accents dropped sometimes
    words = normalise(question).split()
    for q in rewritten:  # same words in the same order, but for one typo
        got = normalise(q).split()
        assert len(got) == len(words) and sum(a != b for a, b in zip(got, words)) <= 1, q
    assert training_questions.hurried("{x} ?!", rng) == "{x} ?!"  # nothing to change: returned as is, no endless loop


def test_hurried_share_rewrites_that_share_of_questions(tmp_path):
    careful = read(generate.run(GenerateConfig(count=200, output=str(tmp_path / "a.jsonl"), split=False)).files["all"])
    rushed = read(generate.run(GenerateConfig(count=200, hurried_share=0.5, output=str(tmp_path / "b.jsonl"), split=False)).files["all"])
    assert [r["metadata"] for r in careful] == [r["metadata"] for r in rushed]  # the same examples
    changed = sum(a["messages"][1]["content"] != b["messages"][1]["content"] for a, b in zip(careful, rushed))
    assert 60 < changed < 140


def test_exclude_keeps_eval_questions_out_of_every_split(tmp_path):
    every = read(generate.run(GenerateConfig(output=str(tmp_path / "all.jsonl"), split=False)).files["all"])
    asked = [r["messages"][1]["content"] for r in every[:30]]
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"question": q.upper(), "expected_answer": "x"} for q in asked])
    result = generate.run(GenerateConfig(exclude=str(eval_file), output=str(tmp_path / "qa.jsonl")))
    generated = set().union(*(questions(read(result.files[s])) for s in ("train", "val", "test")))
    assert not generated & {normalise(q) for q in asked}
    assert result.counts["excluded_eval_questions"] == 30 == result.manifest["excluded_eval_questions"]["dropped"]
    assert len(generated) == len(every) - 30
