"""Stage compare: evaluate runs from the tracking store -> winners, report, registry.

    dyag compare-models                       # latest finished evaluate run per system
    dyag compare-models --parent-run-id RUN   # the evaluate runs of one pipeline run

Per metric: every system's value, the best one, its difference to the
runner-up with a paired-bootstrap confidence interval over the per-question
scores (an interval holding 0 is a tie). The overall winner is that of the
primary metric (`correct`), ties broken by the metric, then token_f1, then
speed. Its model is registered (`dyag-qa`); alias `champion` moves to it only
if it beats the current champion significantly (the former one becomes
`previous`). docs/metrics.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyag_mlops.config import CompareConfig
from dyag_mlops.data.files import atomic_write_json, atomic_write_text
from dyag_mlops.errors import DyagError
from dyag_mlops.evaluation.evaluate import QUALITY_METRICS, breakdown, is_correct
from dyag_mlops.tracking import NullTracker, configure

# metric -> (higher is better, per-question column in the results rows or None)
METRICS: dict[str, tuple[bool, str | None]] = {
    **{name: (True, name) for name in QUALITY_METRICS},
    "success_rate": (True, "success"),
    "avg_time_seconds": (False, "time_seconds"),
    "avg_tokens": (False, "tokens"),
    "questions_per_second": (True, None),
}
TIE_BREAKERS = ("token_f1", "avg_time_seconds")


@dataclass
class SystemResult:
    system: str
    run_id: str | None
    eval_digest: str
    metrics: dict[str, float]
    rows: list[dict]
    model_uri: str | None = None
    base_model: str = ""


# ---------------------------------------------------------------- reading


def results_from_file(path: str, system: str) -> SystemResult:
    try:
        data = json.loads(Path(path).read_text("utf-8"))
        meta, metrics, rows = data["metadata"], data["metrics"], data["results"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise DyagError(f"{path}: not an evaluate results JSON ({exc})") from None
    rescore_correct(rows, metrics)
    return SystemResult(
        meta.get("system", system), None, meta.get("eval_digest", ""), metrics, rows, None, meta.get("base_model", "")
    )


def rescore_correct(rows: list[dict], metrics: dict) -> None:
    """`correct` again from the stored answers, with the current rule
    (evaluate.is_correct): every run is compared, and challenged for the
    registry, by the same rule, whenever it was evaluated."""
    needed = {"question", "expected_answer", "generated_answer", "exact_match", "contains"}
    if not rows or not all(needed <= r.keys() for r in rows):
        return  # an older or foreign results file: keep what it says
    for r in rows:
        r["correct"] = 0.0 if r.get("error") else float(is_correct(r["generated_answer"] or "", r["expected_answer"], r, r["question"]))
    metrics["correct"] = sum(r["correct"] for r in rows) / len(rows)


def results_from_run(client: Any, run: Any) -> SystemResult:
    import mlflow

    files = [f.path for f in client.list_artifacts(run.info.run_id, "results") if f.path.endswith(".json")]
    if not files:
        raise DyagError(f"evaluate run {run.info.run_id} has no results JSON artifact")
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=files[0])
    result = results_from_file(local, run.data.tags.get("dyag.system", "?"))
    result.run_id = run.info.run_id
    result.model_uri = run.data.tags.get("dyag.model_uri") or f"runs:/{run.info.run_id}/model"
    return result


def _evaluate_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise DyagError(f"--run-ids {run_id}: no such run in {configure()}") from None
    if run.data.tags.get("dyag.stage") != "evaluate":
        raise DyagError(f"--run-ids {run_id}: not an evaluate run (stage {run.data.tags.get('dyag.stage', 'unknown')})")
    return run


def find_evaluate_runs(client: Any, config: CompareConfig) -> list[Any]:
    """The evaluate runs to compare: ids given, children of a pipeline run, or
    the latest finished run of each system in the experiment."""
    if config.run_ids:
        return [_evaluate_run(client, r.strip()) for r in config.run_ids.split(",") if r.strip()]

    if config.experiment:
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None:
            raise DyagError(f"--experiment {config.experiment}: no such experiment")
        experiment_ids = [experiment.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    query = "tags.`dyag.stage` = 'evaluate' and attributes.status = 'FINISHED'"
    if config.parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{config.parent_run_id}'"
    runs = client.search_runs(experiment_ids, query, order_by=["attributes.start_time DESC"], max_results=500)
    latest: dict[str, Any] = {}
    for run in runs:
        latest.setdefault(run.data.tags.get("dyag.system", "?"), run)
    return list(latest.values())


def gather(config: CompareConfig) -> list[SystemResult]:
    if config.rag_results or config.finetuned_results:
        results = []
        if config.rag_results:
            results.append(results_from_file(config.rag_results, "rag"))
        if config.finetuned_results:
            results.append(results_from_file(config.finetuned_results, "finetuned"))
        return results
    from mlflow import MlflowClient

    configure()
    client = MlflowClient()
    return [results_from_run(client, run) for run in find_evaluate_runs(client, config)]


# ---------------------------------------------------------------- statistics


def paired_bootstrap(a: list[float], b: list[float], n: int, confidence: float, seed: int) -> tuple[float, float, float]:
    """(mean of a - b, low, high): percentile interval of the paired difference."""
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    samples = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(diff.mean()), float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def aligned_scores(results: list[SystemResult], column: str) -> list[list[float]] | None:
    """Per-question scores of each result (in order) on the questions they all answered."""
    keyed = [{(r["question"], r["expected_answer"]): float(r[column]) for r in res.rows if column in r} for res in results]
    common = [k for k in keyed[0] if all(k in other for other in keyed[1:])]
    if not common:
        return None
    return [[scores[k] for k in common] for scores in keyed]


def compare_metric(results: list[SystemResult], metric: str, config: CompareConfig) -> dict:
    higher, column = METRICS[metric]
    values = {r.system: r.metrics[metric] for r in results if metric in r.metrics}
    ranked = sorted(values, key=lambda s: values[s], reverse=higher)
    entry: dict[str, Any] = {"direction": "higher" if higher else "lower", "values": values, "winner": ranked[0] if ranked else None}
    if len(ranked) < 2:
        return entry
    best, second = ranked[0], ranked[1]
    entry["runner_up"] = second
    entry["difference"] = values[best] - values[second]
    if not higher and values[best] > 0:
        entry["speedup"] = values[second] / values[best]
    by_system = {r.system: r for r in results}
    scores = aligned_scores([by_system[best], by_system[second]], column) if column else None
    if scores:
        mean, low, high = paired_bootstrap(scores[0], scores[1], config.n_bootstrap, config.confidence, config.seed)
        entry["ci"] = [low, high]
        significant = low > 0 if higher else high < 0
        if not significant:
            entry["winner"] = "tie"
            entry["tied"] = [s for s in ranked if values[s] == values[best] or s in (best, second)]
    return entry


def overall_winner(results: list[SystemResult], per_metric: dict, primary: str) -> str:
    entry = per_metric[primary]
    if entry["winner"] != "tie":
        return entry["winner"]
    candidates = entry.get("tied") or list(entry["values"])
    values = {r.system: r.metrics for r in results if r.system in candidates}

    def key(system: str) -> tuple:
        m = values[system]
        return (m.get(primary, 0.0), m.get("token_f1", 0.0), -m.get("avg_time_seconds", 0.0))

    return max(candidates, key=key)


def recommendations(results: list[SystemResult], per_metric: dict, winner: str, primary: str) -> list[str]:
    """Advice computed from the measured numbers."""
    by = {r.system: r.metrics for r in results}
    notes = []
    acc = {s: m.get(primary, 0.0) for s, m in by.items()}
    notes.append(
        f"{winner} is the best system on {primary} ({acc[winner]:.1%}); "
        + ", ".join(f"{s}: {v:.1%}" for s, v in sorted(acc.items(), key=lambda kv: -kv[1]) if s != winner)
        + "."
    )
    entry = per_metric[primary]
    if entry.get("ci") and entry["winner"] == "tie":
        notes.append(
            f"The gap on {primary} between {entry['tied'][0]} and {entry['tied'][1]} is not significant "
            f"(CI {entry['ci'][0]:+.3f} to {entry['ci'][1]:+.3f}): evaluate on more questions before choosing on accuracy."
        )
    times = {s: m.get("avg_time_seconds", 0.0) for s, m in by.items()}
    fastest = min(times, key=times.get)
    if times[winner] > 0 and fastest != winner and times[fastest] > 0:
        ratio = times[winner] / times[fastest]
        notes.append(f"{winner} takes {ratio:.1f}x the time per question of {fastest} ({times[winner]:.2f}s vs {times[fastest]:.2f}s).")
    if "rag" in acc and "finetuned" in acc:
        better = "rag" if acc["rag"] > acc["finetuned"] else "finetuned"
        notes.append(
            f"{better} beats the other single approach by {abs(acc['rag'] - acc['finetuned']):.1%} on {primary}; "
            + ("retrieval adapts to corpus updates without retraining." if better == "rag" else "the adapter answers without an index at query time.")
        )
    if "hybrid" in acc and "rag" in acc and acc["hybrid"] > acc["rag"]:
        notes.append(f"Fine-tuning on top of retrieval adds {acc['hybrid'] - acc['rag']:.1%} on {primary} (hybrid vs rag).")
    if "base" in acc and max(acc.values()) - acc["base"] < 0.05:
        notes.append("No system beats the base model by 5 points: more or better training data is needed.")
    return notes


# ---------------------------------------------------------------- reports


def label_breakdown(results: list[SystemResult]) -> dict[str, dict[str, dict[str, float]]]:
    """`correct` of each system per value of each label its questions carry
    (evaluate.breakdown, on the rescored rows): {"category": {"status":
    {"questions": 5, "rag": 0.8, "hybrid": 1.0}}}; {} without labels."""
    merged: dict[str, dict[str, dict[str, float]]] = {}
    for result in results:
        for key, values in breakdown(result.rows).items():
            for value, tally in values.items():
                cell = merged.setdefault(key, {}).setdefault(value, {"questions": tally["questions"]})
                cell[result.system] = tally["correct"]
    return merged


def markdown_report(report: dict) -> str:
    systems = report["systems"]
    lines = [
        "# Model comparison",
        "",
        f"Eval set digest: `{report['eval_digest']}` — overall winner: **{report['winner']}** "
        f"(primary metric `{report['primary_metric']}`)",
        "",
        "| metric | better | " + " | ".join(systems) + " | winner | difference | CI |",
        "|---|---|" + "---|" * len(systems) + "---|---|---|",
    ]
    for metric, entry in report["metrics"].items():
        cells = [f"{entry['values'].get(s, float('nan')):.4g}" for s in systems]
        ci = f"[{entry['ci'][0]:+.3f}, {entry['ci'][1]:+.3f}]" if "ci" in entry else ""
        diff = f"{entry.get('difference', 0):+.4g}" if "difference" in entry else ""
        lines.append(f"| {metric} | {entry['direction']} | " + " | ".join(cells) + f" | {entry['winner']} | {diff} | {ci} |")
    for key, values in report.get("breakdown", {}).items():
        lines += ["", f"## correct by {key}", "", f"| {key} | questions | " + " | ".join(systems) + " |", "|---|---|" + "---|" * len(systems)]
        for value, cell in values.items():
            shares = [f"{100 * cell[s]:.1f} %" if s in cell else "" for s in systems]
            lines.append(f"| {value} | {cell['questions']:g} | " + " | ".join(shares) + " |")
    lines += ["", "## Recommendations", ""] + [f"- {r}" for r in report["recommendations"]]
    if report.get("registry"):
        reg = report["registry"]
        lines += ["", "## Registry", "", f"- {reg['name']} version {reg['version']}: {reg['decision']}"]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> Any:
    import numpy as np
    from matplotlib.figure import Figure  # outside pyplot: nothing holds it once logged

    systems = report["systems"]
    quality = [m for m in QUALITY_METRICS if m in report["metrics"]]
    fig = Figure(figsize=(12, 4.5))
    ax, ax_time = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(quality))
    for i, system in enumerate(systems):
        ax.bar(x + i * width, [report["metrics"][m]["values"].get(system, 0) for m in quality], width, label=system)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, quality, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title("Answer quality (higher is better)")
    # Below the axes: inside, the legend hid the tallest bars.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(systems), frameon=False)
    times = report["metrics"].get("avg_time_seconds", {}).get("values", {})
    ax_time.bar(list(times), list(times.values()), color="gray")
    ax_time.set_title("Seconds per question\n(lower is better)")
    ax_time.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig


def comparison_table(report: dict) -> dict[str, list]:
    """One row per metric: each system's value, the winner, the difference and
    its confidence interval (the table the compare run shows)."""
    systems = report["systems"]
    table: dict[str, list] = {"metric": [], "better": [], **{s: [] for s in systems}, "winner": [], "difference": [], "ci_low": [], "ci_high": []}
    for metric, entry in report["metrics"].items():
        table["metric"].append(metric)
        table["better"].append(entry["direction"])
        for system in systems:
            table[system].append(entry["values"].get(system))
        table["winner"].append(entry["winner"])
        table["difference"].append(entry.get("difference"))
        low, high = entry.get("ci", [None, None])
        table["ci_low"].append(low)
        table["ci_high"].append(high)
    return table


def summary(report: dict) -> str:
    """Who won, by how much, how sure, and what the registry did: one paragraph
    (the compare and pipeline runs' description, the end of `dyag pipeline`)."""
    primary = report["primary_metric"]
    entry = report["metrics"][primary]
    values = entry["values"]
    winner = report["winner"]
    text = f"Winner: {winner} with {primary} {values[winner]:.1%}"
    others = ", ".join(f"{s} {v:.1%}" for s, v in sorted(values.items(), key=lambda kv: -kv[1]) if s != winner)
    if others:
        text += f" ({others})"
    if "ci" in entry:
        best = max(values, key=values.get) if entry["direction"] == "higher" else min(values, key=values.get)
        verdict = "not significant: a tie, broken by token_f1 then speed" if entry["winner"] == "tie" else "significant"
        text += (
            f"; {best} vs {entry['runner_up']}: {entry['difference']:+.1%}, "
            f"{report.get('confidence', 0.95):.0%} CI [{entry['ci'][0]:+.3f}, {entry['ci'][1]:+.3f}], {verdict}"
        )
    text += "."
    if report.get("registry"):
        reg = report["registry"]
        text += f" Registry: {reg['name']} version {reg['version']} {reg['decision']}."
    return text


# ---------------------------------------------------------------- registry


def register_winner(winner: SystemResult, config: CompareConfig, primary: str) -> dict:
    """Register the winner; move `champion` only on a significant improvement."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    version = mlflow.register_model(winner.model_uri, config.registered_model)
    tags = {
        "dyag.system": winner.system,
        "dyag.eval_digest": winner.eval_digest,
        "dyag.source_run": winner.run_id or "",
        "dyag.base_model": winner.base_model,
        **{f"metric.{k}": f"{v:.4f}" for k, v in winner.metrics.items() if k in METRICS},
    }
    for key, value in tags.items():
        client.set_model_version_tag(config.registered_model, version.version, key, value)
    try:
        champion = client.get_model_version_by_alias(config.registered_model, "champion")
    except MlflowException:
        champion = None
    decision = "promoted to champion (no champion before)"
    promote = True
    if len(winner.rows) < config.min_questions:
        promote = False
        decision = f"registered, not promoted: {len(winner.rows)} eval questions decide nothing (--min-questions {config.min_questions})"
    elif champion is not None and champion.version != version.version:
        champion_run = champion.tags.get("dyag.source_run")
        if champion_run:
            previous = results_from_run(client, client.get_run(champion_run))
            scores = aligned_scores([winner, previous], METRICS[primary][1])
            if scores:
                _, low, _ = paired_bootstrap(scores[0], scores[1], config.n_bootstrap, config.confidence, config.seed)
                promote = low > 0
            else:
                promote = winner.metrics.get(primary, 0) > previous.metrics.get(primary, 0)
        decision = (
            f"promoted to champion (beats version {champion.version} significantly on {primary})"
            if promote
            else f"registered, not promoted: does not beat champion version {champion.version} significantly on {primary}"
        )
    if promote:
        move_champion(client, config.registered_model, version.version, champion)
    client.set_model_version_tag(config.registered_model, version.version, "dyag.promoted", str(promote).lower())
    return {"name": config.registered_model, "version": version.version, "promoted": promote, "decision": decision}


def move_champion(client: Any, name: str, version: str, champion: Any) -> None:
    """`champion` to `version`; the version it leaves becomes `previous` (what rollback restores)."""
    if champion is not None and champion.version != version:
        client.set_registered_model_alias(name, "previous", champion.version)
    client.set_registered_model_alias(name, "champion", version)


def promote(name: str, version: str) -> dict:
    """A person's choice: `champion` moves to an evaluated `version` of `name`
    (one a compare run registered), the former champion becomes `previous`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    client = MlflowClient()
    try:
        chosen = client.get_model_version(name, str(version))
    except MlflowException:
        raise DyagError(f"registered model {name!r} has no version {version!r} (see `dyag registry show`)") from None
    if not chosen.tags.get("dyag.system"):
        raise DyagError(f"{name} version {version} was not registered by a compare run: no evaluation to promote it on")
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(chosen.version):
        return {"name": name, "champion": str(chosen.version), "demoted": None}
    move_champion(client, name, chosen.version, champion)
    client.set_model_version_tag(name, chosen.version, "dyag.promoted", "true")
    return {"name": name, "champion": str(chosen.version), "demoted": str(champion.version) if champion else None}


def rollback(name: str) -> dict:
    """Move `champion` back to the version aliased `previous`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    client = MlflowClient()
    try:
        previous = client.get_model_version_by_alias(name, "previous")
    except MlflowException:
        raise DyagError(f"registered model {name!r} has no 'previous' version to roll back to") from None
    current = client.get_model_version_by_alias(name, "champion")
    client.set_registered_model_alias(name, "champion", previous.version)
    client.delete_registered_model_alias(name, "previous")
    return {"name": name, "champion": previous.version, "demoted": current.version}


def registry_listing(name: str) -> list[dict]:
    from mlflow import MlflowClient

    configure()
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise DyagError(f"no registered model named {name!r} (run `dyag compare-models` first)")
    model = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    return [
        {
            "version": v.version,
            "aliases": aliases.get(str(v.version), []),
            "system": v.tags.get("dyag.system", ""),
            "correct": v.tags.get("metric.correct", ""),
            "source_run": v.tags.get("dyag.source_run", ""),
        }
        for v in sorted(versions, key=lambda v: int(v.version))
    ]


# ---------------------------------------------------------------- stage


def run(config: CompareConfig, tracker: NullTracker = NullTracker()) -> dict:
    results = gather(config)
    if len(results) < 2:
        raise DyagError(f"need at least two evaluated systems to compare, found {len(results)} (run `dyag evaluate-*` first)")
    if config.primary_metric not in METRICS:
        raise DyagError(f"--primary-metric {config.primary_metric}: not one of {', '.join(METRICS)}")
    digests = {r.system: r.eval_digest for r in results}
    if len(set(digests.values())) > 1 and not config.force:
        raise DyagError(
            "the runs were evaluated on different eval sets ("
            + ", ".join(f"{s}: {d}" for s, d in digests.items())
            + "); pass --force to compare anyway"
        )
    per_metric = {m: compare_metric(results, m, config) for m in METRICS if any(m in r.metrics for r in results)}
    winner = overall_winner(results, per_metric, config.primary_metric)
    report: dict[str, Any] = {
        "systems": [r.system for r in results],
        "runs": {r.system: r.run_id for r in results},
        "eval_digest": results[0].eval_digest,
        "primary_metric": config.primary_metric,
        "confidence": config.confidence,
        "metrics": per_metric,
        "winner": winner,
        "recommendations": recommendations(results, per_metric, winner, config.primary_metric),
    }
    by_label = label_breakdown(results)
    if by_label:
        report["breakdown"] = by_label
    winning = next(r for r in results if r.system == winner)
    if config.register and winning.model_uri:
        report["registry"] = register_winner(winning, config, config.primary_metric)

    out = Path(config.output_dir)
    atomic_write_json(out / "comparison.json", report)
    atomic_write_text(out / "comparison.md", markdown_report(report))
    fig = chart(report, out / "comparison.png")
    tracker.set_tags({"dyag.winner": winner, "dyag.eval_digest": report["eval_digest"]})
    tracker.log_artifact(out / "comparison.json")
    tracker.log_artifact(out / "comparison.md")
    tracker.log_figure(fig, "comparison.png")
    # A table, not a metric per system and metric: forty one-bar charts would
    # bury the comparison (the evaluate runs hold the metrics, side by side).
    tracker.log_table(comparison_table(report), "comparison_table.json")
    tracker.set_tags({"mlflow.note.content": summary(report) + "\n\n" + markdown_report(report)})
    return report
