"""`dyag`: one thin command per stage.

Options are generated from each stage's config dataclass (its defaults and
help texts), a command parses them, opens the stage's MLflow run and calls the
stage's `run(config, tracker)`. Heavy libraries are imported inside commands so
`dyag --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import click

from dyag_mlops.config import (
    PRECISION_HELP,
    PRECISIONS,
    CompareConfig,
    EvaluateConfig,
    ExportConfig,
    FinetuneConfig,
    GenerateConfig,
    IndexConfig,
    PipelineConfig,
    SystemSpec,
)
from dyag_mlops.errors import DyagError


def config_options(config_cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """Click options for every field of a config (except `skip`), with the
    config's defaults and help: the dataclass stays the only copy."""

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(config_cls)):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if f.type in ("bool", bool):
                func = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default, show_default=True, help=help_text)(func)
            else:
                kind = {"int": int, "float": float}.get(str(f.type), str)
                func = click.option(flag, f.name, type=kind, default=f.default, show_default=True, help=help_text)(func)
        return func

    return decorate


def make_config(config_cls: type, **kwargs: Any) -> Any:
    names = {f.name for f in dataclasses.fields(config_cls)}
    try:
        return config_cls(**{k: v for k, v in kwargs.items() if k in names})
    except ValueError as exc:
        raise DyagError(str(exc)) from None


def friendly(func: Callable) -> Callable:
    """Any failure becomes one line on stderr (errors.report): exit 2 for bad
    input, 1 for other failures, 130 for an interruption (Ctrl-C, SIGTERM)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dyag_mlops.errors import report

        try:
            return func(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as exc:
            sys.exit(report(exc))

    return wrapper


def echo_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dyag-mlops")
@click.option("--debug", is_flag=True, help="Show the traceback of a failure (same as DYAG_DEBUG=1).")
def main(debug: bool) -> None:
    """Build small LLMs that answer questions about a corpus (LoRA fine-tuning,
    RAG or both) and decide with evidence which is best, tracked in MLflow."""
    import os

    from dyag_mlops.errors import DEBUG_VARIABLE

    if debug:
        os.environ[DEBUG_VARIABLE] = "1"


# ---------------------------------------------------------------- models


@main.command()
def models() -> None:
    """List the base-model shortcuts."""
    from dyag_mlops.config import DEFAULT_BASE_MODEL
    from dyag_mlops.systems.models import SHORTCUTS

    click.echo(f"{'shortcut':<14} {'Hugging Face model':<38} {'params':>6} {'min VRAM':>8}  access")
    for name, info in SHORTCUTS.items():
        access = "gated (HF_TOKEN)" if info.gated else "open"
        default = "  (default, bundled offline)" if name == DEFAULT_BASE_MODEL else ""
        click.echo(f"{name:<14} {info.hub_id:<38} {info.parameters:>6} {info.min_vram_gb:>6g} GB  {access}{default}")


# ---------------------------------------------------------------- generate-training


@main.command("generate-training")
@click.argument("corpus", required=False, default="")
@config_options(GenerateConfig, skip=("corpus",))
@click.option("--validate", "validate_file", default="", help="Only check this dataset file and report problems by line.")
@friendly
def generate_training(corpus: str, validate_file: str, **options: Any) -> None:
    """Generate train/val/test chat datasets from CORPUS (default: the demo corpus)."""
    from dyag_mlops.tracking import stage_run
    from dyag_mlops.train import generate

    if validate_file:
        problems = generate.validate_dataset(validate_file)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            sys.exit(1)
        click.echo(f"{validate_file}: valid")
        return
    config = make_config(GenerateConfig, corpus=corpus, **options)
    with stage_run("generate_training", config) as tracker:
        result = generate.run(config, tracker)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    for name, path in result.files.items():
        click.echo(f"{name:>8}: {path}")
    click.echo(", ".join(f"{k}={v}" for k, v in result.counts.items()))


# ---------------------------------------------------------------- finetune


@main.command()
@config_options(FinetuneConfig)
@friendly
def finetune(**options: Any) -> None:
    """Train a LoRA adapter on a chat dataset."""
    from dyag_mlops.tracking import process_rank, stage_run
    from dyag_mlops.train import finetune as stage

    config = make_config(FinetuneConfig, **options)
    with stage_run("finetune", config, tags={"dyag.base_model": config.base_model}) as tracker:
        result = stage.run(config, tracker)
    if process_rank() > 0:
        return  # under accelerate launch, rank 0 reports
    click.echo(f"adapter: {result.adapter_dir}")
    click.echo(", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
    if result.model_uri:
        click.echo(f"model: {result.model_uri}")


# ---------------------------------------------------------------- query


def chat_loop(predictor: Any) -> None:
    """Interactive chat with history; answers streamed; /exit or Ctrl-D ends it."""
    history: list[dict] = []
    click.echo("Ask a question (/exit or Ctrl-D to quit).")
    while True:
        try:
            question = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if question in ("/exit", "/quit"):
            return
        if not question:
            continue
        parts = []
        for piece in predictor.stream(history, question):
            parts.append(piece)
            click.echo(piece, nl=False)
        click.echo()
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(parts).strip()}]
        history = history[-8:]  # keep the prompt short for small models


def query_options(func: Callable) -> Callable:
    for option in reversed(
        [
            click.option("--base-model", default="", help="Base model (default: the adapter's recorded base, else smollm2:135m)."),
            click.option("--temperature", type=click.FloatRange(min=0), default=EvaluateConfig.temperature, show_default=True, help="0: greedy."),
            click.option("--max-tokens", type=click.IntRange(min=1), default=EvaluateConfig.max_new_tokens, show_default=True, help="Maximum tokens per answer."),
            click.option("--device", default="auto", show_default=True, help="auto, cuda, mps or cpu."),
            click.option("--precision", type=click.Choice(PRECISIONS), default=EvaluateConfig.precision, show_default=True, help=PRECISION_HELP),
        ]
    ):
        func = option(func)
    return func


def check_question(question: str | None) -> None:
    """An empty QUESTION is a mistake (a script's empty variable), not a wish
    for the interactive chat, which leaving QUESTION out asks for."""
    if question is not None and not question.strip():
        raise DyagError("QUESTION is empty (leave it out for the interactive chat)")


def answer_or_chat(predictor: Any, question: str | None) -> None:
    if question is not None:
        answer = predictor.answer([question])[0]
        if answer.error:
            raise DyagError(f"generation failed: {answer.error}")
        if answer.warning:
            click.echo(f"warning: {answer.warning}", err=True)
        click.echo(answer.text)
        if answer.sources:
            click.echo(f"[sources: {', '.join(answer.sources)}]", err=True)
    else:
        chat_loop(predictor)


@main.command("query-finetuned")
@click.argument("question", required=False, default=None)
@click.option("--model", required=True, help="Adapter directory, runs:/ or models:/ URI.")
@query_options
@friendly
def query_finetuned(
    question: str | None, model: str, base_model: str, temperature: float, max_tokens: int, device: str, precision: str
) -> None:
    """Ask a fine-tuned model QUESTION (interactive chat without one)."""
    from dyag_mlops.systems.predictor import load_predictor

    check_question(question)
    system = "finetuned"
    if model.startswith("models:/"):
        system = _registered_system(model)
    predictor = load_predictor(SystemSpec(
        system, model=model, base_model=base_model, max_new_tokens=max_tokens, temperature=temperature, device=device,
        precision=precision,
    ))
    answer_or_chat(predictor, question)


def _registered_system(uri: str) -> str:
    """A registered model may be any system; its spec says which."""
    import json
    from pathlib import Path

    import mlflow

    from dyag_mlops.tracking import configure

    configure()
    local = Path(mlflow.artifacts.download_artifacts(uri))
    spec = next(local.rglob("system.json"), None)
    return json.loads(spec.read_text())["system"] if spec else "finetuned"


@main.command("query-rag")
@click.argument("question", required=False, default=None)
@click.option("--index", required=True, help="Index directory built by `dyag index-rag`.")
@click.option("--top-k", type=click.IntRange(min=1), default=EvaluateConfig.top_k, show_default=True, help="Chunks retrieved per question.")
@click.option("--model", default="", help="Adapter for hybrid answering (optional).")
@click.option("--grounded/--free", default=EvaluateConfig.grounded, show_default=True, help="Answer with a span of the retrieved chunks (or the refusal) / free text.")
@click.option("--worked-example/--no-worked-example", default=EvaluateConfig.worked_example, show_default=True, help="Without --model: show the base model a worked example first.")
@click.option("--focus/--no-focus", default=EvaluateConfig.focus, show_default=True, help="Narrow each retrieved sheet to the lines of the asked field (ask an adapter the way it was trained).")
@query_options
@friendly
def query_rag(
    question: str | None, index: str, top_k: int, model: str, grounded: bool, worked_example: bool, focus: bool,
    base_model: str, temperature: float, max_tokens: int, device: str, precision: str,
) -> None:
    """Ask QUESTION with retrieved context (interactive chat without one)."""
    from dyag_mlops.systems.predictor import load_predictor

    check_question(question)
    predictor = load_predictor(SystemSpec(
        "hybrid" if model else "rag", model=model, base_model=base_model, index=index, top_k=top_k,
        max_new_tokens=max_tokens, temperature=temperature, device=device, grounded=grounded,
        worked_example=worked_example, focus=focus, precision=precision,
    ))
    answer_or_chat(predictor, question)


# ---------------------------------------------------------------- evaluate


def evaluate_command(system: str) -> Callable:
    skip = (
        ("eval_file", "system")
        + (("model",) if system in ("base", "rag") else ())
        + (("index", "top_k", "grounded", "focus") if system in ("base", "finetuned") else ())
        + (("worked_example",) if system != "rag" else ())
    )

    @click.argument("eval_file", required=False, default="")
    @config_options(EvaluateConfig, skip=skip)
    @friendly
    def command(eval_file: str, **options: Any) -> None:
        from dyag_mlops.evaluation import evaluate
        from dyag_mlops.tracking import stage_run

        config = make_config(EvaluateConfig, eval_file=eval_file, system=system, **options)
        with stage_run("evaluate", config, tags={"dyag.system": system}, run_name=f"evaluate-{system}") as tracker:
            result = evaluate.run(config, tracker)
        click.echo(f"results: {result.output}")
        for name, value in result.metrics.items():
            click.echo(f"{name:>22}: {value:.4f}")
        for key, values in result.breakdown.items():
            shares = ", ".join(f"{value} {100 * v['correct']:.1f} % ({v['questions']})" for value, v in values.items())
            click.echo(f"correct by {key}: {shares}")

    command.__doc__ = f"Evaluate the {system} system on EVAL_FILE (default: the bundled hand-written set)."
    return command


for _system in ("base", "finetuned", "rag", "hybrid"):
    main.command(f"evaluate-{_system}")(evaluate_command(_system))


@main.command("split-eval")
@click.argument("eval_file")
@click.option("--output-dir", default="", help="Where STEM_dev.jsonl and STEM_test.jsonl go (default: beside EVAL_FILE).")
@click.option("--overwrite", is_flag=True, help="Replace existing halves.")
@friendly
def split_eval(eval_file: str, output_dir: str, overwrite: bool) -> None:
    """Cut EVAL_FILE into a dev half (tune on it) and a test half (report
    it), stratified by metadata.kind."""
    from pathlib import Path

    from dyag_mlops.data.evalset import split_eval_set

    for half, path in split_eval_set(eval_file, output_dir or Path(eval_file).parent, overwrite).items():
        click.echo(f"{half}: {path}")


# ---------------------------------------------------------------- RAG index


@main.command("inspect-corpus")
@click.argument("corpus", required=False, default="")
@click.option("--schema", default=IndexConfig.schema, show_default=True, help="auto, fr, en or a schema JSON file.")
@click.option("--questions", type=int, default=2, show_default=True, help="Sample questions shown per field.")
@click.option("--json", "as_json", is_flag=True, help="Print the corpus profile as JSON.")
@friendly
def inspect_corpus(corpus: str, schema: str, questions: int, as_json: bool) -> None:
    """What the platform understands of CORPUS (default: the demo corpus):
    documents, fields with their coverage, language, sample questions."""
    from dyag_mlops.data.corpus import load_corpus
    from dyag_mlops.data.inventory import build_profile, cached_schema, documents, field_questions

    docs = documents(load_corpus(corpus))
    profile = build_profile(docs, schema)
    if as_json:
        echo_json(profile.to_dict())
        return
    language = cached_schema(profile.schema)
    with_fields = [d for d in docs if d.fields]
    click.echo(f"corpus: {corpus or 'bundled demo corpus'}")
    click.echo(f"documents: {len(docs)} ({len(with_fields)} with fields, {sum(bool(d.free_text) for d in docs)} with free text)")
    click.echo(f"language: {profile.language} (schema {profile.schema}); name line: {profile.name_label!r}")
    click.echo(f"fields ({len(profile.corpus_fields)}):")
    example = with_fields[0] if with_fields else None
    for info in sorted(profile.corpus_fields, key=lambda f: -f.documents):
        known = "schema" if info.templates else "generic questions"
        click.echo(f"  {info.label:<30} {info.documents:>5}/{len(docs)} documents  ({known}; labels: {', '.join(info.labels)})")
        if example is not None:
            for template in field_questions(info, language)[:questions]:
                click.echo(f"      e.g. {template.replace('{doc}', example.title)}")
    aliases = sum(len(v) for v in profile.aliases.values())
    click.echo(f"aliases: {aliases} (documents also named by an alias field)")
    if profile.example:
        click.echo(f"worked example: {profile.example['turns'][0]['title']} ({len(profile.example['turns'])} questions)")



@main.command("index-rag")
@click.argument("corpus", required=False, default="")
@config_options(IndexConfig, skip=("corpus",))
@friendly
def index_rag(corpus: str, **options: Any) -> None:
    """Index CORPUS (default: the demo corpus) into a ChromaDB collection."""
    from dyag_mlops.retrieval import rag
    from dyag_mlops.tracking import stage_run

    config = make_config(IndexConfig, corpus=corpus, **options)
    with stage_run("index_rag", config) as tracker:
        result = rag.run(config, tracker)
    echo_json(dataclasses.asdict(result))


# ---------------------------------------------------------------- compare and registry


@main.command("compare-models")
@config_options(CompareConfig)
@friendly
def compare_models(**options: Any) -> None:
    """Compare evaluated systems from the tracking store; register the winner."""
    from dyag_mlops.evaluation import compare
    from dyag_mlops.tracking import stage_run

    config = make_config(CompareConfig, **options)
    with stage_run("compare", config) as tracker:
        report = compare.run(config, tracker)
    click.echo((__import__("pathlib").Path(config.output_dir) / "comparison.md").read_text("utf-8"))
    click.echo(f"winner: {report['winner']}")


@main.group()
def registry() -> None:
    """Registered models: versions, aliases, rollback."""


@registry.command("show")
@click.option("--name", default=CompareConfig.registered_model, show_default=True)
@friendly
def registry_show(name: str) -> None:
    """List versions and aliases of a registered model."""
    from dyag_mlops.evaluation.compare import registry_listing

    for v in registry_listing(name):
        aliases = ",".join(v["aliases"]) or "-"
        click.echo(f"v{v['version']:<4} {aliases:<20} system={v['system']:<10} correct={v['correct']:<8} run={v['source_run']}")


@registry.command("rollback")
@click.option("--name", default=CompareConfig.registered_model, show_default=True)
@friendly
def registry_rollback(name: str) -> None:
    """Move alias champion back to the previous champion."""
    from dyag_mlops.evaluation.compare import rollback

    result = rollback(name)
    click.echo(f"{name}: champion is now version {result['champion']} (version {result['demoted']} demoted)")


@registry.command("promote")
@click.argument("version")
@click.option("--name", default=CompareConfig.registered_model, show_default=True)
@friendly
def registry_promote(version: str, name: str) -> None:
    """Move alias champion to VERSION (an evaluated version); the former champion becomes previous."""
    from dyag_mlops.evaluation.compare import promote

    result = promote(name, version)
    demoted = f" (version {result['demoted']} is now previous)" if result["demoted"] else ""
    click.echo(f"{name}: champion is now version {result['champion']}{demoted}")


# ---------------------------------------------------------------- export


@main.command("export")
@click.argument("model")
@config_options(ExportConfig, skip=("model",))
@friendly
def export_command(model: str, **options: Any) -> None:
    """Merge the adapter of MODEL (a directory, runs:/ or models:/ URI) into
    its base; with --gguf also a GGUF file, with --ollama a Modelfile."""
    from dyag_mlops.systems import export
    from dyag_mlops.tracking import stage_run

    config = make_config(ExportConfig, model=model, **options)
    with stage_run("export", config) as tracker:
        result = export.run(config, tracker)
    echo_json(dataclasses.asdict(result))
    if "Modelfile" in result.files:
        click.echo(f"Ollama: cd {result.output} && ollama create dyag-qa -f Modelfile && ollama run dyag-qa")


# ---------------------------------------------------------------- app


@main.command("app")
@click.option("--registered-model", default=CompareConfig.registered_model, show_default=True, help="Registered model whose versions are candidates.")
@click.option("--experiment", default="", help="Experiment of the pipeline runs (empty: $MLFLOW_EXPERIMENT_NAME, else dyag-mlops).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--open/--no-open", "open_browser", default=True, show_default=True, help="Open the page in a browser.")
@friendly
def app_command(registered_model: str, experiment: str, host: str, port: int, open_browser: bool) -> None:
    """A local web page: ask candidate models the same question, see the latest comparison, promote a champion."""
    from dyag_mlops.app import serve

    serve(registered_model, experiment, host, port, open_browser)


# ---------------------------------------------------------------- pipeline


@main.command()
@config_options(PipelineConfig)
@friendly
def pipeline(**options: Any) -> None:
    """Run the whole pipeline: generate, finetune, index, evaluate x4, compare."""
    from dyag_mlops import pipeline as stage

    config = make_config(PipelineConfig, **options)
    report = stage.run(config)
    click.echo(f"winner: {report['winner']}")


if __name__ == "__main__":
    main()
