"""Tests that load the real bundled smollm2:135m (marked; CI runs them)."""

import pytest

pytestmark = pytest.mark.real_model


def test_bundled_default_model_answers_and_stops():
    from dyag_mlops.systems.models import load_base_model
    from dyag_mlops.systems.predictor import Predictor

    model, tokenizer, source = load_base_model("smollm2:135m")
    predictor = Predictor("base", model, tokenizer, max_new_tokens=48)
    answer = predictor.answer_raw(["What is the capital of France?"])[0]
    assert "paris" in answer.lower()
    # generation stops by itself: the end-of-turn token comes before the budget
    texts, counts = predictor._generate([predictor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)])
    assert counts[0] < 48


def test_any_gguf_file_is_a_base_model(tmp_path, monkeypatch):
    """A GGUF file given as --base-model is materialised once, under a name
    holding its digest, into the same weights the bundled model gets."""
    from safetensors.torch import load_file

    from dyag_mlops.systems.models import bundled_gguf_path, materialise_bundled_model, resolve

    bundled = materialise_bundled_model()
    monkeypatch.setenv("DYAG_HOME", str(tmp_path))
    source = resolve(str(bundled_gguf_path()))
    assert source.startswith(str(tmp_path / "models" / "smollm2-135m-instruct.q4_1-"))
    mtime = (tmp_path / "models").stat().st_mtime_ns
    assert resolve(str(bundled_gguf_path())) == source  # cached: not built twice
    assert (tmp_path / "models").stat().st_mtime_ns == mtime
    ours, theirs = load_file(f"{source}/model.safetensors"), load_file(f"{bundled}/model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours)


def test_finetuned_answers_the_sample_s_questions_from_what_it_learnt(tmp_path):
    """The pipeline's defaults on dyag's one-field-per-chunk sample, asked its
    own 10 questions and the 46 of its dev set: the closed-book adapter,
    with no retrieval, answers well above the base model, which knows none
    of the corpus (56 questions: one seed's luck on a few cannot decide)."""
    from conftest import SAMPLES

    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    questions = tmp_path / "questions.jsonl"
    dev_set = SAMPLES.parents[2] / "corpora" / "dyag-sample" / "eval_dev.jsonl"
    questions.write_text((SAMPLES / "questions.jsonl").read_text() + dev_set.read_text())
    work = tmp_path / "work"
    report = pipeline.run(PipelineConfig(
        corpus=str(SAMPLES / "corpus.jsonl"), eval_file=str(questions), systems="base,finetuned",
        workdir=str(work), registered_model="sample-closed-book", reuse=False,
    ))
    correct = report["metrics"]["correct"]["values"]
    assert correct["base"] <= 0.1 and correct["finetuned"] >= correct["base"] + 0.15, correct
    assert not (work / "adapter").exists()  # no system asked for the RAFT adapter
