"""Screenshots of a finished pipeline in MLflow's own web UI, taken in headless
Chromium: the runs of the latest pipeline, its four evaluate runs side by side,
the question-by-question evaluations, the champion's registered version and
the parent run; and `dyag app` asking the two best systems a question of the
eval set. Run by scripts/ui_check.sh, which starts `mlflow ui` and `dyag app`.

    python scripts/ui_check.py --ui http://127.0.0.1:5077 --app http://127.0.0.1:5078 --store sqlite:///mlflow.db --out docs/images
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHROMIUM_FLAGS = [
    # no sandbox as root; no calls home: this machine's network is closed
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]


def latest_pipeline(client, experiment_name: str):
    """The newest finished parent run of the experiment and its evaluate runs."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        sys.exit(f"Error: no experiment {experiment_name!r} in the store: run bash scripts/main.sh first")
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`dyag.stage` = 'main' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not parents:
        sys.exit(f"Error: no finished pipeline run in experiment {experiment_name!r}")
    parent = parents[0]
    evaluations = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`dyag.stage` = 'evaluate'",
    )
    return experiment, parent, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", required=True, help="address of a running `mlflow ui`")
    parser.add_argument("--app", default="", help="address of a running `dyag app` on the same store")
    parser.add_argument("--store", required=True, help="its tracking URI, to find the runs")
    parser.add_argument("--experiment", default="dyag-mlops")
    parser.add_argument("--registered-model", default="dyag-qa")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    import mlflow
    from playwright.sync_api import sync_playwright

    client = mlflow.MlflowClient(tracking_uri=args.store, registry_uri=args.store)
    experiment, parent, evaluations = latest_pipeline(client, args.experiment)
    exp = experiment.experiment_id
    run_ids = json.dumps([r.info.run_id for r in evaluations])
    champion = client.get_model_version_by_alias(args.registered_model, "champion")
    winner = parent.data.tags.get("dyag.winner", "")
    pages = {
        # the four systems side by side on `correct`
        "runs": (f"#/experiments/{exp}/runs?workflowType=machine_learning&compareRunsMode=CHART&searchFilter="
                 f"tags.`mlflow.parentRunId` %3D '{parent.info.run_id}' and tags.`dyag.stage` %3D 'evaluate'", show_correct),
        "compare": (f"#/compare-runs?runs={run_ids}&experiments={json.dumps([exp])}", show_metrics),
        # the winner's answers, question by question, with their scores
        "evaluations": (f"#/experiments/{exp}/evaluation-runs", lambda page: open_evaluation(page, f"evaluate_{winner}")),
        "champion": (f"#/models/{args.registered_model}/versions/{champion.version}", None),
        "parent": (f"#/experiments/{exp}/runs/{parent.info.run_id}", None),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{args.ui}/#/experiments/{exp}")
        page.wait_for_timeout(4000)
        dismiss_popups(page)
        for name, (fragment, action) in pages.items():
            page.goto(f"{args.ui}/{fragment}")
            page.wait_for_timeout(6000)  # the UI keeps polling: no network-idle moment to wait for
            dismiss_popups(page)
            if action:
                action(page)
                page.wait_for_timeout(3000)
            path = out / f"ui-{name}.png"
            page.screenshot(path=str(path))
            print(path)
        if args.app:
            best = sorted(evaluations, key=lambda r: -r.data.metrics.get("correct", 0))[:2]
            ask_in_app(page, args.app, [r.data.tags["dyag.system"] for r in best])
            page.screenshot(path=str(out / "app.png"))
            print(out / "app.png")
        browser.close()


def js_click(locator) -> None:
    """A click the UI's overlays cannot intercept."""
    locator.evaluate("element => element.click()")


def show_correct(page) -> None:
    """Unfold the pipeline run to its evaluate runs; keep the charts of `correct`."""
    js_click(page.locator("[data-component-id*='runnamecellrenderer'][data-component-type='button']").first)
    page.wait_for_timeout(2000)
    page.get_by_placeholder("Search metric charts").fill("correct")


def show_metrics(page) -> None:
    page.get_by_text("Metrics", exact=True).last.evaluate("element => element.scrollIntoView({block: 'start'})")


def open_evaluation(page, run_name: str) -> None:
    """Open one evaluate run's traces: question, answer, expected answer, scores."""
    js_click(page.locator("a#run-name-cell", has_text=run_name).first)


def ask_in_app(page, url: str, systems: list[str]) -> None:
    """Tick the pipeline's `systems` only, pick the eval set's first question, ask."""
    page.goto(url)
    page.wait_for_selector("#candidates input")
    for box in page.locator("#candidates input").all():
        label = box.evaluate("element => element.parentElement.textContent").strip()
        if box.is_checked() != any(label.startswith(f"{system} of ") for system in systems):
            box.click()
    page.wait_for_selector("#questions option:nth-child(2)", state="attached")
    page.select_option("#questions", index=1)
    page.click("#ask-button")
    page.wait_for_selector(".answer", timeout=300_000)


def dismiss_popups(page) -> None:
    """The first-visit tips and the assistant panel cover the page."""
    for label in ("Got it",):
        buttons = page.get_by_role("button", name=label)
        if buttons.count():
            buttons.first.click()
    close = page.locator("[aria-label='Close assistant'], [aria-label='Close']")
    if close.count():
        close.first.click()


if __name__ == "__main__":
    main()
