"""The main workflow: every stage as a child run of one parent run.

    mlflow run . --env-manager local          # entry point `main`
    dyag pipeline                             # the same, from the CLI

index_rag -> generate_training (RAFT examples with retrieved chunks) ->
finetune -> evaluate (base, rag, finetuned, hybrid: systems of one model in a row, sharing it) -> compare; with
closed_book_epochs > 0 (the default), a second generate/finetune pair trains a
closed-book adapter on the facts, which finetuned answers with (hybrid keeps
the RAFT adapter). Steps hand artifacts on by run URI (`runs:/ID/...`). A step that
already finished with the same parameters (config hash) and the same code
(git commit), and whose outputs are still on disk, is reused instead of run
again (MLflow's multistep-workflow pattern); a training interrupted with the
same parameters and code resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from dyag_mlops.config import (
    CompareConfig,
    EvaluateConfig,
    FinetuneConfig,
    GenerateConfig,
    IndexConfig,
    PipelineConfig,
)
from dyag_mlops.errors import DyagError
from dyag_mlops.systems.models import release_memory
from dyag_mlops.tracking import config_hash, git_commit, stage_run


def find_finished(stage: str, config: Any) -> Any:
    """A finished run of `stage` with the same parameters and code, or None."""
    import mlflow

    commit = git_commit()
    if commit == "unknown":
        return None  # without a commit we cannot tell whether the code changed
    query = (
        f"tags.`dyag.stage` = '{stage}' and tags.`dyag.config_hash` = '{config_hash(stage, config)}' "
        f"and tags.`dyag.git_commit` = '{commit}' and attributes.status = 'FINISHED'"
    )
    runs = mlflow.search_runs(filter_string=query, order_by=["attributes.start_time DESC"], max_results=1, output_format="list", search_all_experiments=True)
    return runs[0] if runs else None


def step(
    stage: str, config: Any, body: Callable[[Any], Any], outputs: list[Path], reuse: bool, timings: dict, label: str = "",
    release: bool = True,
) -> str:
    """Run one stage as a child run (or reuse a finished one); return its run
    id. `release`: give the stage's memory back once it ends (a full garbage
    collection, which costs time with the pipeline's libraries loaded);
    evaluate stages leave it to evaluate_sharing_model, which releases only
    when it lets a model go."""
    label = label or stage
    began = time.perf_counter()
    if reuse:
        previous = find_finished(stage, config)
        if previous is not None and all(p.exists() for p in outputs):
            print(f"[pipeline] {label}: reusing finished run {previous.info.run_id}")
            timings[label] = 0.0
            return previous.info.run_id
    print(f"[pipeline] {label}: running")
    with stage_run(stage, config, nested=True, run_name=label) as tracker:
        body(tracker)
        run_id = tracker.run_id
    if release:
        release_memory()
    timings[label] = time.perf_counter() - began
    return run_id


def train_raft_adapter(config: PipelineConfig, work: Path, index_dir: str, timings: dict) -> str:
    """generate_training (RAFT examples from the index) -> finetune; the adapter's run URI."""
    from dyag_mlops.data.evalset import demo_eval_path
    from dyag_mlops.train import finetune
    from dyag_mlops.train import generate

    gen_cfg = GenerateConfig(
        corpus=config.corpus,
        method=config.method,
        count=config.count,
        output=str(work / "data" / "dataset.jsonl"),
        with_context=index_dir if config.context_share > 0 else "",
        context_k=config.top_k,
        context_share=config.context_share,
        focus=config.focus,
        schema=config.schema,
        questions_per_example=config.questions_per_example if config.context_share > 0 else 1,
        hurried_share=config.hurried_share,
        # No question of the eval set is trained on, whatever the templates make.
        exclude=config.eval_file or str(demo_eval_path()),
        overwrite=True,
    )
    gen_files = generate.output_paths(gen_cfg.output, True)
    gen_run = step("generate_training", gen_cfg, lambda t: generate.run(gen_cfg, t), list(gen_files.values()), config.reuse, timings)
    # A small --count can leave the val split empty (generate warns):
    # train without validation rather than fail on an empty file.
    has_val = gen_files["val"].is_file() and gen_files["val"].stat().st_size > 0
    ft_cfg = FinetuneConfig(
        dataset=f"runs:/{gen_run}/datasets/{gen_files['train'].name}",
        val=f"runs:/{gen_run}/datasets/{gen_files['val'].name}" if has_val else "",
        output=str(work / "adapter"),
        base_model=config.base_model,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        soup=config.soup,
        max_length=config.max_length,
        precision=config.precision,
        overwrite=True,
    )
    if config.reuse:
        ft_cfg = finetune.resumed_if_interrupted(ft_cfg)
    ft_run = step("finetune", ft_cfg, lambda t: finetune.run(ft_cfg, t), [work / "adapter" / "final"], config.reuse, timings)
    return f"runs:/{ft_run}/adapter"


def train_closed_book_adapter(config: PipelineConfig, work: Path, timings: dict) -> str:
    """generate_training (the facts, no context) -> finetune; the adapter's run URI.

    The facts asked in the phrasings of the augmented method (aliases, two
    facts at once), `closed_book_count` questions spread over them (every
    fact once before any twice), 30 % typed in a hurry, all in the train
    split, 8 questions on different facts per conversation: the adapter
    learns the facts themselves, which the finetuned system (no retrieval)
    needs; hybrid keeps the RAFT adapter, which reads a narrowed sheet better
    (docs/quality.md). The count fixes the training time whatever the
    corpus's size; a large corpus gets fewer phrasings of each fact.
    """
    from dyag_mlops.data.evalset import demo_eval_path
    from dyag_mlops.train import finetune
    from dyag_mlops.train import generate

    gen_cfg = GenerateConfig(
        corpus=config.corpus,
        method="augmented",
        count=config.closed_book_count,
        output=str(work / "data_closed_book" / "dataset.jsonl"),
        val_ratio=0.0,
        test_ratio=0.0,
        hurried_share=0.3,
        questions_per_example=8,
        schema=config.schema,
        exclude=config.eval_file or str(demo_eval_path()),
        overwrite=True,
    )
    files = generate.output_paths(gen_cfg.output, True)
    gen_run = step(
        "generate_training", gen_cfg, lambda t: generate.run(gen_cfg, t), list(files.values()),
        config.reuse, timings, "generate_closed_book",
    )
    ft_cfg = FinetuneConfig(
        dataset=f"runs:/{gen_run}/datasets/{files['train'].name}",
        output=str(work / "closed_book_adapter"),
        base_model=config.base_model,
        epochs=config.closed_book_epochs,
        lr=config.closed_book_lr,
        batch_size=1,  # examples of 8 questions, up to 570 tokens: already long
        grad_accum=1,
        max_length=768,  # 8 questions and answers: 570 tokens at most on the demo corpus
        precision=config.precision,
        overwrite=True,
    )
    if config.reuse:
        ft_cfg = finetune.resumed_if_interrupted(ft_cfg)
    ft_run = step(
        "finetune", ft_cfg, lambda t: finetune.run(ft_cfg, t), [work / "closed_book_adapter" / "final"],
        config.reuse, timings, "finetune_closed_book",
    )
    return f"runs:/{ft_run}/adapter"


def run(config: PipelineConfig) -> dict:
    from dyag_mlops.evaluation import compare
    from dyag_mlops.retrieval import rag

    work = Path(config.workdir)
    systems = [s.strip() for s in config.systems.split(",") if s.strip()]
    unknown = set(systems) - {"base", "finetuned", "rag", "hybrid"}
    if unknown or len(systems) < 2:
        raise DyagError(f"--systems {config.systems}: give at least two of base, finetuned, rag, hybrid")
    timings: dict[str, float] = {}
    # Each adapter system answers with the adapter that serves it best: the
    # closed-book adapter, when asked for, knows the facts; the RAFT adapter
    # reads a narrowed sheet better (docs/quality.md).
    closed_book = config.closed_book_epochs > 0 and "finetuned" in systems
    raft_adapter = "hybrid" in systems or ("finetuned" in systems and not closed_book)
    name = run_name(config)
    with stage_run("main", config, run_name=name) as parent:
        parent.set_tags({
            "mlflow.runName": name,  # also when `mlflow run` opened the run
            "mlflow.note.content": f"Pipeline on {config.corpus or 'the bundled demo corpus'}, evaluated on "
            f"{config.eval_file or 'the bundled demo questions'}: {', '.join(systems)}. Running.",
        })
        # The index comes first: RAFT training examples hold retrieved chunks.
        index_dir = ""
        if {"rag", "hybrid"} & set(systems) or (raft_adapter and config.context_share > 0):
            index_dir = str(work / "rag_index")
            idx_cfg = IndexConfig(corpus=config.corpus, index=index_dir, ranking=config.ranking, schema=config.schema,
                                  chroma_host=config.chroma_host)
            step("index_rag", idx_cfg, lambda t: rag.run(idx_cfg, t), [Path(index_dir)], config.reuse, timings)

        raft_uri = train_raft_adapter(config, work, index_dir, timings) if raft_adapter else ""
        closed_book_uri = train_closed_book_adapter(config, work, timings) if closed_book else ""
        adapter_of = {"finetuned": closed_book_uri or raft_uri, "hybrid": raft_uri}

        # Systems of one model one after the other (base and rag; finetuned and
        # hybrid when they share the adapter): the second reuses the loaded model.
        run_of: dict[str, str] = {}
        loaded: dict[tuple, Any] = {}
        for system in sorted(systems, key=lambda s: adapter_of.get(s, "")):
            ev_cfg = EvaluateConfig(
                eval_file=config.eval_file,
                system=system,
                model=adapter_of.get(system, ""),
                base_model=config.base_model,
                index=index_dir if system in ("rag", "hybrid") else "",
                limit=config.limit,
                top_k=config.top_k,
                grounded=config.grounded,
                worked_example=config.worked_example,
                focus=config.focus,
                precision=config.precision,
                output=str(work / f"results_{system}.json"),
            )
            run_of[system] = step("evaluate", ev_cfg, lambda t, c=ev_cfg: evaluate_sharing_model(c, t, loaded), [Path(ev_cfg.output)],
                                  config.reuse, timings, f"evaluate_{system}", release=False)
        loaded.clear()
        eval_runs = [run_of[system] for system in systems]

        # The evaluate runs of this pipeline, reused ones included (those belong
        # to an earlier parent run), are compared by id.
        cmp_cfg = CompareConfig(
            run_ids=",".join(eval_runs), registered_model=config.registered_model, output_dir=str(work / "compare"),
            min_questions=config.min_questions,
        )
        report: dict = {}
        step("compare", cmp_cfg, lambda t: report.update(compare.run(cmp_cfg, t)), [], False, timings, release=False)
        # One metric for the whole, the stages in a table: eight one-bar charts told nothing.
        parent.log_metrics({"pipeline_seconds": sum(timings.values())})
        parent.log_table({"stage": list(timings), "seconds": [round(v, 1) for v in timings.values()]}, "stage_seconds.json")
        parent.set_tags({"dyag.winner": report.get("winner", ""), "mlflow.note.content": compare.summary(report)})
        for stage, seconds in timings.items():
            print(f"[pipeline] {stage:<20} {seconds:8.1f} s")
        print(closing_words(report, parent.run_id))
    return report


def evaluate_sharing_model(config: EvaluateConfig, tracker: Any, loaded: dict[tuple, Any]) -> Any:
    """evaluate.run with the language model of the system evaluated just
    before (`loaded`, this function's own record) when it is the same one;
    another model is let go before this one loads."""
    from dyag_mlops.evaluation import evaluate
    from dyag_mlops.systems.predictor import load_predictor

    # The adapter by the name it was given: a runs:/ URI downloads to a new folder each time.
    key = (config.model if config.system in ("finetuned", "hybrid") else "", config.base_model, config.device, config.precision)
    previous = loaded.pop(key, None)
    if loaded:  # another system's model: let it go before this one loads
        loaded.clear()
        release_memory()
    predictor = load_predictor(config.system_spec(), model_from=previous)
    del previous
    loaded[key] = predictor
    return evaluate.run(config, tracker, predictor=predictor)


def run_name(config: PipelineConfig) -> str:
    """pipeline-<corpus>-<hash of the parameters>: runs of one setting share a name."""
    corpus = Path(config.corpus).stem if config.corpus else "demo"
    return f"pipeline-{corpus}-{config_hash('main', config)[:6]}"


def closing_words(report: dict, run_id: str | None) -> str:
    """The comparison as the terminal shows it: systems x main metrics, the
    verdict, and where to see the runs."""
    import mlflow

    from dyag_mlops.evaluation.compare import summary
    from dyag_mlops.tracking import ui_hint

    metrics = [m for m in ("correct", "token_f1", "avg_time_seconds") if m in report["metrics"]]
    lines = ["", f"{'system':<10}" + "".join(f"{m:>18}" for m in metrics)]
    for system in report["systems"]:
        cells = [report["metrics"][m]["values"].get(system) for m in metrics]
        lines.append(f"{system:<10}" + "".join(f"{v:>18.3f}" if v is not None else f"{'-':>18}" for v in cells))
    lines += ["", summary(report)]
    run = mlflow.get_run(run_id) if run_id else None
    if run is not None:
        lines += ui_hint(run.info.experiment_id, run_id)
    return "\n".join(lines)
