"""One frozen dataclass per stage: the only copy of each stage's defaults.

The CLI options, the MLproject parameters and the pipeline all read their
defaults from here (a test checks that MLproject agrees). Each field carries a
one-line help text in its metadata, used by the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BASE_MODEL = "smollm2:135m"

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RANKINGS = ("lexical", "fused", "dense")
PRECISION_HELP = "auto, fp32, bf16 or fp16 (CUDA only). auto: bf16 on GPUs and CPUs that compute it natively, else fp32 (fp16 on older GPUs)."
FOCUS_HELP = "each retrieved sheet narrowed to the lines of the field the question asks about (a classifier trained on the corpus's fields)."
SCHEMA_HELP = "Field schema: auto (the shipped one of the corpus's language), fr, en or a path to a schema JSON file; it helps with synonyms, question templates and the language's wording, and never filters fields."


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def check_ranking(ranking: str) -> None:
    if ranking not in RANKINGS:
        raise ValueError(f"--ranking must be one of {', '.join(RANKINGS)}, not {ranking!r}")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class GenerateConfig:
    """generate-training: corpus -> train/val/test chat datasets."""

    corpus: str = _f("", "Corpus: JSONL chunks, a JSON file of records or chunks, a CSV export (a row per document), a Markdown file (one document per # Title) or a folder of Markdown files (empty: bundled demo corpus).")
    method: str = _f("rule-based", "rule-based, augmented or llm-based.")
    count: int = _f(0, "Number of examples to produce, spread over the facts (0: every example the method can make).")
    seed: int = _f(42, "Random seed for sampling and splitting.")
    output: str = _f("data/dataset.jsonl", "Output path; with --split, OUT_train/_val/_test.jsonl and OUT_manifest.json.")
    split: bool = _f(True, "Split into train/val/test.")
    val_ratio: float = _f(0.1, "Share of facts whose phrasings go to the validation split.")
    test_ratio: float = _f(0.1, "Share of phrasings held out for the test split.")
    schema: str = _f("auto", SCHEMA_HELP + " With --with-context, the index's.")
    phrasings: int = _f(4, "rule-based: phrasings per fact, the first N templates of its field (augmented: all of them).")
    hurried_share: float = _f(0.0, "rule-based, augmented: share of questions rewritten as typed in a hurry (lowercase, no accents or '?', a typo).")
    exclude: str = _f("", "Eval set (JSONL) whose questions are never generated, so none of them is trained on.")
    llm_model: str = _f(DEFAULT_BASE_MODEL, "llm-based: model that writes the pairs (shortcut, Hub id, directory or .gguf file).")
    llm_url: str = _f("", "llm-based: base URL of an OpenAI-compatible endpoint (instead of a local model).")
    llm_api_key_env: str = _f("OPENAI_API_KEY", "llm-based: environment variable holding the endpoint's API key.")
    with_context: str = _f("", "RAFT: RAG index whose retrieved chunks go into each prompt (empty: closed-book questions).")
    context_k: int = _f(1, "RAFT: chunks per prompt (use the top-k the rag/hybrid systems will answer with).")
    oracle_share: float = _f(0.9, "RAFT: share of context examples holding the right chunk; the others get distractors only and answer the refusal (none where --focus narrows the sheet).")
    context_share: float = _f(1.0, "RAFT: share of examples given a context (the rest stay closed-book).")
    focus: bool = _f(True, "RAFT: " + FOCUS_HELP)
    questions_per_example: int = _f(1, "Train split: up to N questions on one retrieved context (RAFT) or, closed-book, on different facts, asked in one conversation (the prompt's tokens are paid once).")
    overwrite: bool = _f(False, "Replace existing output files.")

    def __post_init__(self) -> None:
        if self.context_k < 1:
            raise ValueError("--context-k must be >= 1")
        if not all(0 <= share <= 1 for share in (self.oracle_share, self.context_share, self.hurried_share)):
            raise ValueError("--oracle-share, --context-share and --hurried-share must be between 0 and 1")
        if self.phrasings < 1:
            raise ValueError("--phrasings must be >= 1")
        if self.method not in ("rule-based", "augmented", "llm-based"):
            raise ValueError(f"--method must be rule-based, augmented or llm-based, not {self.method!r}")
        if self.count < 0:
            raise ValueError("--count must be >= 0")
        if self.questions_per_example < 1:
            raise ValueError("--questions-per-example must be >= 1")
        if not (0 <= self.val_ratio < 1 and 0 <= self.test_ratio < 1 and self.val_ratio + self.test_ratio < 1):
            raise ValueError("--val-ratio and --test-ratio must be in [0, 1) and sum to less than 1")


@dataclass(frozen=True)
class FinetuneConfig:
    """finetune: LoRA / QLoRA training of a base model on a train split."""

    dataset: str = _f("data/dataset_train.jsonl", "Training set (chat JSONL) or runs:/RUN_ID/path of a generate-training run.")
    val: str = _f("", "Validation set (chat JSONL or runs:/ URI); empty: none.")
    output: str = _f("outputs/adapter", "Output directory (checkpoints and final/).")
    base_model: str = _f(DEFAULT_BASE_MODEL, "Base model: shortcut, Hub id, local directory or .gguf file.")
    epochs: float = _f(3.0, "Number of epochs.")
    # One example per forward pass keeps the peak memory of long examples
    # low on a CPU; several are packed into one sequence without padding
    # (the pipeline packs 4 of its ~100-token RAFT examples). On a GPU,
    # --batch-size 8 --grad-accum 1 gives the same optimizer steps faster.
    batch_size: int = _f(1, "Per-device batch size: examples per forward pass, packed into one sequence without padding.")
    grad_accum: int = _f(8, "Gradient accumulation steps (effective batch = batch size x this).")
    lr: float = _f(0.0005, "Peak learning rate.")
    lora_rank: int = _f(16, "LoRA rank r.")
    lora_alpha: int = _f(32, "LoRA alpha.")
    # 0 by default: on CPU, dropout on every LoRA input costs about 30 % of the step time.
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    target_modules: str = _f("all-linear", "Comma-separated module names, or all-linear.")
    max_length: int = _f(512, "Maximum tokens per example (longer ones are truncated).")
    seed: int = _f(42, "Random seed.")
    # Adapters trained alone differ by several points with the seed (LoRA init
    # and example order); the mean of their updates answers better than any of
    # them (docs/decisions/0004-training-defaults.md).
    soup: int = _f(1, "Train N adapters (seeds seed, seed+1, ...) and average their updates into one adapter (a model soup of LoRA rank N x r); N x the training time.")
    dora: bool = _f(False, "Use DoRA (weight-decomposed LoRA).")
    quantize: str = _f("none", "none or 4bit (QLoRA, CUDA only).")
    resume: bool = _f(False, "Resume from the latest checkpoint in --output.")
    init_adapter: str = _f("", "Continue training this adapter (incremental fine-tuning).")
    save_steps: int = _f(50, "Save a checkpoint every N optimizer steps.")
    save_total_limit: int = _f(2, "Keep the last K checkpoints.")
    logging_steps: int = _f(5, "Log metrics every N steps.")
    device: str = _f("auto", "auto, cuda, mps or cpu.")
    precision: str = _f("auto", PRECISION_HELP)
    compile: bool = _f(True, "On a CPU with a C++ compiler, compile the transformer blocks (torch.compile): faster steps after a one-off compilation.")
    overwrite: bool = _f(False, "Replace a non-empty output directory.")

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.quantize not in ("none", "4bit"):
            raise ValueError(f"--quantize must be none or 4bit, not {self.quantize!r}")
        for name in ("batch_size", "grad_accum", "lora_rank", "max_length", "save_steps", "logging_steps", "soup"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError("--epochs and --lr must be > 0")
        if self.soup > 1 and self.dora:
            raise ValueError("--soup averages LoRA updates; DoRA's magnitude vectors cannot be averaged that way (use --no-dora)")


@dataclass(frozen=True)
class IndexConfig:
    """index-rag: corpus -> persistent ChromaDB collection."""

    corpus: str = _f("", "Corpus: JSONL chunks, a JSON file of records or chunks, a CSV export (a row per document), a Markdown file (one document per # Title) or a folder of Markdown files (empty: bundled demo corpus).")
    index: str = _f("outputs/rag_index", "Index directory (ChromaDB persistent store + manifest).")
    # On a shared server a fixed name would let two corpora overwrite each
    # other's vectors; a name from the corpus digest cannot.
    collection: str = _f("", "Collection name (empty: dyag, or dyag-<corpus digest> on a --chroma-host server).")
    embedding_model: str = _f("all-minilm-l6-v2", "Sentence-transformers model (all-minilm-l6-v2 is bundled).")
    chunk_size: int = _f(1200, "Split chunks longer than this many characters (0: never).")
    chroma_host: str = _f("", "host:port of a ChromaDB server instead of the embedded store.")
    # BM25 first: the bundled embedding model is English, corpora need not be;
    # the three rankings are compared in docs/rag.md.
    ranking: str = _f("lexical", "How the index ranks chunks: lexical (BM25, dense hits after), fused (dense + BM25, reciprocal rank fusion) or dense.")
    schema: str = _f("auto", SCHEMA_HELP)
    rebuild: bool = _f(False, "Embed every chunk again; required to change the embedding model of an existing index.")

    def __post_init__(self) -> None:
        if self.chunk_size < 0:
            raise ValueError("--chunk-size must be >= 0")
        check_ranking(self.ranking)


SYSTEMS = ("base", "finetuned", "rag", "hybrid")


@dataclass(frozen=True)
class SystemSpec:
    """One system's settings: built from the command line or from evaluate's
    config, held by its predictor, written as the logged model's system.json,
    read back when the model is served. The fields up to `schema` say how it
    answers; the last four how it runs on this machine (not logged)."""

    system: str = "base"
    model: str = ""  # adapter: directory, runs:/ or models:/ URI (finetuned, hybrid)
    base_model: str = ""  # empty: the adapter's recorded base, else DEFAULT_BASE_MODEL
    index: str = ""  # RAG index directory (rag, hybrid)
    top_k: int = 3
    max_new_tokens: int = 64
    grounded: bool = False
    worked_example: bool = False
    focus: bool = False
    schema: str = "auto"
    batch_size: int = 8
    temperature: float = 0.0
    device: str = "auto"
    precision: str = "auto"

    SERVED = ("system", "base_model", "top_k", "max_new_tokens", "grounded", "worked_example", "focus", "schema")

    def served(self) -> dict[str, Any]:
        """What a logged model records of its system (system.json)."""
        return {name: getattr(self, name) for name in self.SERVED}


@dataclass(frozen=True)
class EvaluateConfig:
    """evaluate: one system answers an eval set; metrics, table and results JSON."""

    eval_file: str = _f("", "Eval set: chat JSONL or {question, expected_answer} JSONL (empty: bundled hand-written set).")
    system: str = _f("finetuned", "base, finetuned, rag or hybrid.")
    model: str = _f("", "Adapter: directory, runs:/ or models:/ URI (finetuned, hybrid).")
    base_model: str = _f("", "Base model (empty: the adapter's recorded base, else smollm2:135m).")
    index: str = _f("", "RAG index directory (rag, hybrid).")
    top_k: int = _f(3, "Chunks retrieved per question (rag, hybrid).")
    limit: int = _f(0, "Evaluate only the first N questions (0: all).")
    # Decoding on CPU is bound by reading the weights once per step, whatever
    # the batch: larger batches answer more questions per weight read.
    batch_size: int = _f(16, "Questions generated together.")
    max_new_tokens: int = _f(160, "Maximum tokens per free answer; a grounded answer (rag, hybrid) is a span of one line and ends with it, however long.")
    temperature: float = _f(0.0, "0: greedy decoding (repeatable).")
    grounded: bool = _f(True, "rag, hybrid: each answer is a span of the retrieved chunks or the refusal (constrained decoding).")
    worked_example: bool = _f(True, "rag: a document of the corpus answered field by field comes before the question (the base model was never trained on this prompt).")
    focus: bool = _f(True, "rag, hybrid: " + FOCUS_HELP)
    output: str = _f("", "Results JSON path (empty: outputs/results_SYSTEM.json).")
    device: str = _f("auto", "auto, cuda, mps or cpu.")
    precision: str = _f("auto", PRECISION_HELP)
    verbose: bool = _f(False, "Print each question with its answer.")
    overwrite: bool = _f(True, "Replace an existing results file.")

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.system not in SYSTEMS:
            raise ValueError(f"--system must be one of {', '.join(SYSTEMS)}, not {self.system!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.top_k < 1 or self.limit < 0:
            raise ValueError("--batch-size, --max-new-tokens and --top-k must be >= 1, --limit >= 0")

    def system_spec(self) -> SystemSpec:
        return SystemSpec(
            self.system, model=self.model, base_model=self.base_model, index=self.index, top_k=self.top_k,
            max_new_tokens=self.max_new_tokens, grounded=self.grounded, worked_example=self.worked_example,
            focus=self.focus, batch_size=self.batch_size, temperature=self.temperature, device=self.device,
            precision=self.precision,
        )


GGUF_TYPES = ("q8_0", "f16")


@dataclass(frozen=True)
class ExportConfig:
    """export: an adapter merged into its base -> safetensors, optionally a GGUF file and an Ollama Modelfile."""

    model: str = _f("", "Adapter: directory, runs:/ or models:/ URI (e.g. models:/dyag-qa@champion).")
    output: str = _f("outputs/export", "Export folder; refused if it exists, unless --overwrite.")
    base_model: str = _f("", "Base model (empty: the adapter's recorded base).")
    gguf: str = _f("", "Also write model-TYPE.gguf: q8_0 or f16 (empty: none).")
    ollama: bool = _f(False, "Also write an Ollama Modelfile (needs --gguf).")
    overwrite: bool = _f(False, "Replace an existing export folder.")

    def __post_init__(self) -> None:
        if self.gguf not in ("", *GGUF_TYPES):
            raise ValueError(f"--gguf must be one of {', '.join(GGUF_TYPES)}, not {self.gguf!r}")
        if self.ollama and not self.gguf:
            raise ValueError("--ollama needs --gguf: an Ollama Modelfile points at a GGUF file")


MIN_QUESTIONS_HELP = "Fewest eval questions on which the winner may be promoted to champion (fewer: registered only)."


@dataclass(frozen=True)
class CompareConfig:
    """compare: evaluate runs from the tracking store -> winners, report, registry."""

    experiment: str = _f("", "Experiment to read (empty: the current one).")
    run_ids: str = _f("", "Comma-separated evaluate run ids (empty: latest finished run per system).")
    parent_run_id: str = _f("", "Compare the evaluate runs that are children of this pipeline run.")
    rag_results: str = _f("", "Seed compatibility: results JSON of a RAG evaluation.")
    finetuned_results: str = _f("", "Seed compatibility: results JSON of a fine-tuned evaluation.")
    primary_metric: str = _f("correct", "Metric that decides the overall winner.")
    n_bootstrap: int = _f(1000, "Paired bootstrap resamples.")
    confidence: float = _f(0.95, "Confidence level of the intervals.")
    registered_model: str = _f("dyag-qa", "Registered model name for the winner.")
    register: bool = _f(True, "Register the winner and move the champion alias.")
    output_dir: str = _f("outputs/compare", "Where comparison.json, comparison.md and the chart go.")
    force: bool = _f(False, "Compare runs evaluated on different eval sets.")
    seed: int = _f(42, "Bootstrap seed.")
    # A winner on a handful of questions decides nothing.
    min_questions: int = _f(20, MIN_QUESTIONS_HELP)

    def __post_init__(self) -> None:
        if self.n_bootstrap < 1 or self.min_questions < 1:
            raise ValueError("--n-bootstrap and --min-questions must be >= 1")
        if not 0 < self.confidence < 1:
            raise ValueError("--confidence must be between 0 and 1")


@dataclass(frozen=True)
class PipelineConfig:
    """main: generate -> finetune -> index -> evaluate x4 -> compare, as child runs."""

    corpus: str = _f("", "Corpus (empty: bundled demo corpus).")
    eval_file: str = _f("", "Eval set (empty: bundled hand-written set).")
    base_model: str = _f(DEFAULT_BASE_MODEL, "Base model for every system.")
    method: str = _f("rule-based", "generate-training method.")
    count: int = _f(700, "Questions generated (80 % train); 0: all.")
    context_share: float = _f(1.0, "Share of training examples that hold retrieved chunks (RAFT); 0: closed-book training only.")
    # One context paid once for several trained answers
    # (docs/decisions/0004-training-defaults.md). A narrowed sheet holds one
    # fact: nothing to pack then.
    questions_per_example: int = _f(4, "RAFT training: questions on one retrieved context asked in one conversation (whole sheets only).")
    # 0: hurried rewrites of RAFT questions did not help hybrid (docs/decisions/0004-training-defaults.md).
    hurried_share: float = _f(0.0, "Share of training questions rewritten as typed in a hurry (generate-training --hurried-share).")
    epochs: float = _f(1.0, "Fine-tuning epochs.")
    # One short epoch: a higher rate than finetune's 3-epoch default, tuned
    # for smollm2:135m; larger models want less (docs/decisions/0004-training-defaults.md).
    lr: float = _f(0.001, "Fine-tuning learning rate (tuned for smollm2:135m; 3e-4 for 0.5B+ models).")
    # A RAFT example is ~100 tokens: one per forward pass leaves two cores
    # mostly waiting on per-operation overhead; four packed into one sequence
    # (no padding) train faster for the same answers
    # (docs/decisions/0004-training-defaults.md).
    batch_size: int = _f(4, "Fine-tuning examples per forward pass, packed into one sequence without padding.")
    grad_accum: int = _f(1, "Fine-tuning forward passes per optimizer step.")
    # 1 keeps the pipeline within its time budget; 3 is the quality setting
    # (docs/decisions/0004-training-defaults.md).
    soup: int = _f(1, "Fine-tuning: adapters trained with different seeds and averaged into one (finetune --soup); N x the training time.")
    max_length: int = _f(512, "Fine-tuning maximum tokens per example.")
    # finetuned is fine-tuning's candidate: without a closed-book adapter it
    # asks the RAFT adapter without context, which mostly refuses. 2400
    # questions (600 steps over two epochs) keep the cost fixed whatever the
    # corpus's size (docs/decisions/0009-finetuned-learns-the-facts.md).
    closed_book_epochs: float = _f(2.0, "Epochs of a closed-book adapter trained on the facts (augmented phrasings, a share typed in a hurry, no context), which finetuned then answers with; hybrid keeps the RAFT adapter. 0: none (finetuned asks the RAFT adapter without context).")
    closed_book_count: int = _f(2400, "Closed-book questions per epoch, spread over the facts (0: every phrasing of every fact); 8 make one training step.")
    closed_book_lr: float = _f(0.003, "Learning rate of the closed-book adapter (closed_book_epochs > 0).")
    limit: int = _f(0, "Evaluate only the first N questions (0: all).")
    top_k: int = _f(1, "Chunks retrieved per question (rag, hybrid); each costs prompt tokens (recall@1 is 1.0 on the demo set, lexical ranking).")
    ranking: str = _f(IndexConfig.ranking, "How the index ranks chunks (index-rag --ranking): lexical, fused or dense.")
    chroma_host: str = _f("", "host:port of a ChromaDB server for the index (empty: the embedded store in the workdir).")
    grounded: bool = _f(True, "rag, hybrid: answers constrained to spans of the retrieved chunks.")
    worked_example: bool = _f(True, "rag: show the base model a worked example before each question.")
    focus: bool = _f(True, "RAFT training, rag, hybrid: " + FOCUS_HELP)
    schema: str = _f("auto", SCHEMA_HELP)
    precision: str = _f("auto", PRECISION_HELP)
    systems: str = _f("base,finetuned,rag,hybrid", "Systems to evaluate.")
    workdir: str = _f("outputs/pipeline", "Where the stages write their files.")
    registered_model: str = _f("dyag-qa", "Registered model name for the winner.")
    min_questions: int = _f(CompareConfig.min_questions, MIN_QUESTIONS_HELP)
    reuse: bool = _f(True, "Reuse a finished step with the same parameters and code.")

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_ranking(self.ranking)


STAGE_CONFIGS = {
    "generate_training": GenerateConfig,
    "finetune": FinetuneConfig,
    "index_rag": IndexConfig,
    "evaluate": EvaluateConfig,
    "compare": CompareConfig,
    "export": ExportConfig,
    "main": PipelineConfig,
}


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def field_help(config_cls: type, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config_cls)}[name]


def from_strings(config_cls: type, values: dict[str, str]) -> Any:
    """Build a config from string values (MLproject parameters), converting each
    to its field's type; unknown names are an error naming them."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown parameter(s) for {config_cls.__name__}: {', '.join(sorted(unknown))}")
    converted: dict[str, Any] = {}
    for name, raw in values.items():
        kind = str(fields[name].type)
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"parameter {name}: expected true or false, got {raw!r}")
            converted[name] = raw.lower() in ("true", "1", "yes")
        elif kind in ("int", "float"):
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"parameter {name}: expected a number, got {raw!r}") from None
            if kind == "int" and not number.is_integer():
                raise ValueError(f"parameter {name}: expected a whole number, got {raw!r}")
            converted[name] = int(number) if kind == "int" else number
        else:
            converted[name] = raw
    return config_cls(**converted)


def mlproject_type(config_cls: type, name: str) -> str:
    kind = str({f.name: f for f in dataclasses.fields(config_cls)}[name].type)
    return {"int": "float", "float": "float"}.get(kind, "string")
