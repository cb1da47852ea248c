"""Tests that load the real bundled smollm2:135m (marked; CI runs them)."""

import pytest

pytestmark = pytest.mark.real_model


def test_bundled_default_model_answers_and_stops():
    from dyag_mlops.systems import Predictor
    from dyag_mlops.models import load_base_model

    model, tokenizer, source = load_base_model("smollm2:135m")
    predictor = Predictor("base", model, tokenizer, max_new_tokens=48)
    answer = predictor.answer_raw(["What is the capital of France?"])[0]
    assert "paris" in answer.lower()
    # generation stops by itself: the end-of-turn token comes before the budget
    texts, counts = predictor._generate([predictor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)])
    assert counts[0] < 48
