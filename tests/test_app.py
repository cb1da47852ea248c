"""dyag app on a tiny-model pipeline: candidates, questions, answers,
comparison and promotion read from the tracking store; and the page itself
in headless Chromium, where one is installed (scripts/app_check.sh)."""

import os
import shutil
import socket
import threading
import time

import pytest

from dyag_mlops import app as web
from dyag_mlops.errors import DyagError

EXPERIMENT = "app-test"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir):
    """A pipeline (base and rag) run in an experiment of its own."""
    from dyag_mlops import pipeline
    from dyag_mlops.config import PipelineConfig

    before = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    os.environ["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT
    try:
        pipeline.run(PipelineConfig(base_model=str(tiny_model_dir), count=40, epochs=0.05, limit=2, systems="base,rag",
                                    workdir=str(tmp_path_factory.mktemp("app") / "work"), registered_model="app-qa",
                                    min_questions=1, reuse=False))
    finally:
        if before is None:
            os.environ.pop("MLFLOW_EXPERIMENT_NAME")
        else:
            os.environ["MLFLOW_EXPERIMENT_NAME"] = before
    return web.Store("app-qa", EXPERIMENT)


@pytest.fixture(scope="module")
def client(store):
    from fastapi.testclient import TestClient

    return TestClient(web.make_app(store, web.Answerer()))


def test_candidates_are_registered_versions_and_the_pipeline_systems(store):
    labels = [c["label"] for c in store.candidates()]
    assert labels[0].startswith("app-qa v1 @champion (")
    assert {label.split(" of ")[0] for label in labels[1:]} == {"base", "rag"}
    assert all(c["uri"].startswith("models:/") for c in store.candidates())


def test_questions_come_from_the_pipeline_eval_set(store):
    questions = store.questions()
    assert len(questions) > 20 and all(q["question"] and q["expected"] for q in questions)


def test_two_candidates_answer_the_same_question(client, store):
    question = store.questions()[0]
    uris = [c["uri"] for c in store.candidates()[1:3]]
    response = client.post("/api/ask", json={"question": question["question"], "candidates": uris, "expected": question["expected"]})
    assert response.status_code == 200
    answers = response.json()
    assert [a["uri"] for a in answers] == uris
    assert all(isinstance(a["answer"], str) and a["seconds"] >= 0 and isinstance(a["correct"], bool) for a in answers)
    assert client.post("/api/ask", json={"question": " ", "candidates": uris}).status_code == 400
    assert client.post("/api/ask", json={"question": "Statut ?", "candidates": []}).status_code == 400


def test_the_comparison_and_promotion_use_the_registry_rule(client, store):
    comparison = client.get("/api/comparison").json()
    assert comparison["summary"].startswith("Winner:") and {"metric"} <= set(comparison["rows"][0])
    promoted = client.post("/api/promote", json={"version": "1"})
    assert promoted.status_code == 200 and promoted.json()["champion"] == "1"
    refused = client.post("/api/promote", json={"version": "7"})
    assert refused.status_code == 400 and "has no version '7'" in refused.json()["detail"]


def test_promoting_without_a_compare_run_is_refused(store):
    import mlflow

    mlflow.MlflowClient().create_experiment("app-empty")
    empty = web.Store("app-qa", "app-empty")
    with pytest.raises(DyagError, match="no compare run"):
        empty.promote("1")
    assert empty.candidates()[0]["label"].startswith("app-qa v1")  # versions are still candidates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium installed (apt-get install chromium; scripts/app_check.sh does)")
def test_the_page_in_a_real_browser(store):
    """Load the page, ask a question of the eval set to two candidates, read both answers."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (scripts/app_check.sh installs it)")
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(web.make_app(store, web.Answerer()), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1300, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#candidates input")
            assert page.locator("#candidates input:checked").count() == 2
            page.wait_for_selector("#questions option:nth-child(2)", state="attached")
            page.select_option("#questions", index=1)
            page.click("#ask-button")
            page.wait_for_selector(".answer", timeout=120_000)
            cards = page.locator(".answer")
            assert cards.count() == 2
            assert all(cards.nth(i).locator(".text").inner_text().strip() for i in range(2))
            assert page.locator("#expected").inner_text().startswith("Expected: ")
            page.click("#tab-compare")
            page.wait_for_selector("#table table")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
