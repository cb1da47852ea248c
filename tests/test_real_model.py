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
