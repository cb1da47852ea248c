"""Stage evaluate: one system answers an eval set; metrics, table, results JSON.

    dyag evaluate-finetuned data/dataset_test.jsonl --model outputs/adapter

Per question and averaged, with the same names for every system:
exact_match, token_f1, rouge_l and contains on normalised text (case, accents,
punctuation, whitespace ignored), semantic_similarity (MiniLM cosine), and
`correct`: a refusal expected must be a refusal (any language); otherwise an
exact match, token_f1 >= 0.8, or the expected answer inside a prediction at
most twice as long (plus 8 tokens), so a dumped chunk does not count. dyag's
evaluate-rag figures are kept too (success_rate, exact_match_rate,
avg_time_seconds, avg_tokens, total_tokens). A failed question counts as
wrong. docs/metrics.md.
"""

from __future__ import annotations

import functools

import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dyag_mlops.config import EvaluateConfig
from dyag_mlops.data.evalset import EvalItem, demo_eval_path, load_eval_set
from dyag_mlops.data.files import atomic_write_json, file_digest, refuse_overwrite
from dyag_mlops.data.text import normalise
from dyag_mlops.retrieval.focus import word_vectors_version
from dyag_mlops.tracking import NullTracker

QUALITY_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "contains", "semantic_similarity", "bertscore_f1", "correct")
# The scores each question's trace carries in the UI's Evaluations view: each
# one is a write per question to the tracking store (docs/decisions/0006);
# every metric of every question is in eval_results.json.
QUESTION_VIEW_METRICS = ("correct", "token_f1")
# BERTScore on the bundled encoder (offline); layer 4 of its 6, as bert-score
# picks a middle-upper layer for the encoders it knows. Not rescaled: scores
# compare systems on one eval set, not with published figures.
BERTSCORE_LAYER = 4
# Answers are short: in batches of 16 each pads to a near length, twice as
# fast as batches of 64 (docs/decisions/0005); scores move by 1e-7.
SIMILARITY_BATCH = 16
UNKNOWN_MARKERS = (
    "je ne sais pas",
    "pas disponible",
    "n est pas indique",
    "n est pas precise",
    "aucune information",
    "i don t know",
    "not available",
)


# ---------------------------------------------------------------- metrics


def token_f1(prediction: str, expected: str) -> float:
    pred, gold = normalise(prediction).split(), normalise(expected).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def says_unknown(prediction: str) -> bool:
    text = normalise(prediction)
    return any(marker in text for marker in UNKNOWN_MARKERS)


def question_scores(prediction: str, expected: str, rouge: Any) -> dict[str, float]:
    """Every metric but semantic similarity (computed in one batch) and correct."""
    pred, gold = normalise(prediction), normalise(expected)
    contains = bool(gold) and f" {gold} " in f" {pred} "
    return {
        "exact_match": float(pred == gold),
        "token_f1": token_f1(prediction, expected),
        "rouge_l": rouge.score(gold, pred)["rougeL"].fmeasure if pred and gold else float(pred == gold),
        "bleu": sentence_bleu(pred, gold),
        "contains": float(contains),
    }


def sentence_bleu(prediction: str, expected: str) -> float:
    """sacrebleu's sentence BLEU (0-1) on normalised text; effective order, so
    a two-word answer is not scored on 4-grams it cannot have."""
    import sacrebleu

    if not prediction or not expected:
        return float(prediction == expected)
    # sacrebleu's 100 for an exact answer may come out a hair above it.
    return min(1.0, sacrebleu.sentence_bleu(prediction, [expected], use_effective_order=True).score / 100)


def is_correct(prediction: str, expected: str, scores: dict[str, float], question: str = "") -> bool:
    if says_unknown(expected):
        return says_unknown(prediction)
    if scores["exact_match"]:
        return True
    pred_len, gold_len = len(normalise(prediction).split()), len(normalise(expected).split())
    if scores["contains"] and pred_len <= max(2 * gold_len, gold_len + 8):
        return True
    return token_f1_beyond_question(prediction, expected, question) >= 0.8


def token_f1_beyond_question(prediction: str, expected: str, question: str) -> float:
    """Token F1 over the words the question does not already say, on both sides:
    "142" answers "Combien de lycées publics ... ?" whose expected answer is
    "142 lycées publics", and "lycées publics" does not. Without a question,
    or when it says every expected word, this is the plain token F1."""
    said = set(normalise(question).split())
    gold = [t for t in normalise(expected).split() if t not in said]
    if not gold:
        return token_f1(prediction, expected)
    pred = [t for t in normalise(prediction).split() if t not in said]
    return token_f1(" ".join(pred), " ".join(gold))


def semantic_similarities(predictions: list[str], expected: list[str]) -> list[float]:
    """Cosine similarity with the bundled all-MiniLM-L6-v2; raises if unavailable
    (a missing expected metric fails the run rather than vanishing)."""
    from dyag_mlops.retrieval.embeddings import embed_remembered

    # Each distinct text once: many answers are their expected answer.
    a = embed_remembered("all-minilm-l6-v2", predictions, SIMILARITY_BATCH)
    b = embed_remembered("all-minilm-l6-v2", expected, SIMILARITY_BATCH)
    return [float(max(0.0, min(1.0, (x * y).sum()))) for x, y in zip(a, b)]


def bertscore_f1(predictions: list[str], expected: list[str]) -> list[float]:
    """BERTScore F1 (bert-score) per answer, on the bundled all-MiniLM-L6-v2."""
    from dyag_mlops.retrieval.embeddings import resolve_embedding_model

    scorer = _bertscorer(resolve_embedding_model("all-minilm-l6-v2"))
    # An empty side scores 0 (bert-score cannot encode an empty text).
    scored = [i for i, (p, e) in enumerate(zip(predictions, expected)) if p.strip() and e.strip()]
    result = [0.0] * len(predictions)
    if scored:
        _, _, f1 = scorer.score([predictions[i] for i in scored], [expected[i] for i in scored], batch_size=SIMILARITY_BATCH)
        for i, value in zip(scored, f1.tolist()):
            result[i] = float(max(0.0, min(1.0, value)))
    return result


@functools.lru_cache(maxsize=1)
def _bertscorer(model_dir: str) -> Any:
    from bert_score import BERTScorer

    return BERTScorer(model_type=model_dir, num_layers=BERTSCORE_LAYER, device="cpu")


def score_answers(items: list[EvalItem], answers: list[Any]) -> list[dict]:
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    predictions, expected = [a.text or "" for a in answers], [i.expected for i in items]
    similarities = semantic_similarities(predictions, expected)
    bertscores = bertscore_f1(predictions, expected)
    rows = []
    for item, answer, similarity, bertscore in zip(items, answers, similarities, bertscores):
        scores = question_scores(answer.text, item.expected, rouge)
        scores["semantic_similarity"] = similarity
        scores["bertscore_f1"] = bertscore
        scores["correct"] = float(is_correct(answer.text, item.expected, scores, item.question))
        if answer.error:  # a failed question is wrong on every metric, never skipped
            scores = {k: 0.0 for k in scores}
        rows.append(
            {
                "question": item.question,
                "expected_answer": item.expected,
                "generated_answer": answer.text,
                "success": answer.error is None and bool(answer.text.strip()),
                **scores,
                "time_seconds": answer.seconds,
                "tokens": answer.tokens,
                "sources": answer.sources,
                "doc_id": item.doc_id,
                "labels": dict(item.labels),
                "error": answer.error,
                "warning": answer.warning,
            }
        )
    return rows


def aggregate(rows: list[dict], wall_seconds: float) -> dict[str, float]:
    n = len(rows)
    metrics = {name: sum(r[name] for r in rows) / n for name in QUALITY_METRICS}
    total_tokens = sum(r["tokens"] for r in rows)
    metrics.update(
        {
            "success_rate": sum(r["success"] for r in rows) / n,
            "exact_match_rate": metrics["exact_match"],
            "avg_time_seconds": sum(r["time_seconds"] for r in rows) / n,
            "avg_tokens": total_tokens / n,
            "total_tokens": float(total_tokens),
            "questions_per_second": n / wall_seconds if wall_seconds > 0 else 0.0,
            "num_questions": float(n),
        }
    )
    return metrics


def breakdown(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """`correct` per value of each label the answered questions carry (their
    `labels`, evalset.LABEL_KEYS): {"category": {"status": {"questions": 5,
    "correct": 0.8}, ...}, ...}; {} for an eval set without labels."""
    tallies: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for key, value in (row.get("labels") or {}).items():
            tallies.setdefault(key, {}).setdefault(value, []).append(row["correct"])
    return {
        key: {value: {"questions": len(scores), "correct": sum(scores) / len(scores)} for value, scores in sorted(values.items())}
        for key, values in tallies.items()
    }


# ---------------------------------------------------------------- stage


@dataclass
class EvaluateResult:
    output: str
    metrics: dict[str, float]
    rows: list[dict]
    model_uri: str | None
    breakdown: dict[str, dict[str, dict[str, float]]]


def run(config: EvaluateConfig, tracker: NullTracker = NullTracker(), predictor: Any = None) -> EvaluateResult:
    """Evaluate one system. `predictor` may be passed in (the pipeline reuses a
    loaded model); otherwise it is built from the config."""
    from dyag_mlops.systems.predictor import immutable_uri, load_predictor, log_system_model

    output = Path(config.output or f"outputs/results_{config.system}.json")
    refuse_overwrite([output], config.overwrite)
    eval_path = Path(config.eval_file) if config.eval_file else demo_eval_path()
    items = load_eval_set(eval_path)
    if config.limit:
        items = items[: config.limit]
    if predictor is None:
        predictor = load_predictor(config.system_spec())
    from tqdm import tqdm

    began = time.perf_counter()
    answers = []
    step = config.batch_size * 4
    with tqdm(total=len(items), desc=f"evaluate {config.system}", unit="q") as bar:
        for start in range(0, len(items), step):
            answers += predictor.answer([i.question for i in items[start : start + step]])
            bar.update(min(step, len(items) - start))
    wall = time.perf_counter() - began
    rows = score_answers(items, answers)
    metrics = aggregate(rows, wall)
    metrics.update(retrieval_scores(predictor, items, answers, config.top_k))
    if config.verbose:
        for row in rows:
            mark = "OK " if row["correct"] else "NO "
            print(f"{mark}Q: {row['question']}\n    expected: {row['expected_answer']}\n    answer:   {row['generated_answer']}")

    digest = file_digest(eval_path)
    # What auto resolved to on this machine: answers can differ by a few
    # questions between fp32 and bf16 (docs/quality.md).
    dtype = str(getattr(predictor.model, "dtype", "")).replace("torch.", "")
    results = {
        "metadata": {
            "system": config.system,
            "model": config.model,
            "base_model": predictor.base_model,
            "index": config.index,
            "eval_file": str(eval_path),
            "eval_digest": digest,
            "dtype": dtype,
            "num_questions": len(rows),
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "config": {k: v for k, v in vars(config).items()},
        },
        "metrics": metrics,
        "results": rows,
    }
    by_label = breakdown(rows)
    if by_label:
        results["breakdown"] = by_label
    atomic_write_json(output, results)

    tracker.set_tags({"dyag.system": config.system, "dyag.eval_digest": digest, "dyag.base_model": predictor.base_model, "dyag.dtype": dtype})
    if predictor.retriever is not None:
        # The index's setting, not a parameter of this run: shown beside it in the UI.
        tracker.set_tags({"dyag.ranking": predictor.retriever.ranking})
        tracker.set_tags({"dyag.schema": predictor.schema_name})
        if predictor.focus and predictor.retriever.schema.word_vectors:
            # The router's word vectors shape which line each prompt holds.
            tracker.set_tags({"dyag.word_vectors": word_vectors_version(predictor.retriever.schema)})
    eval_dataset = tracker.log_dataset(eval_path, context="eval")
    # The model records the adapter by reference when evaluate got one, else the folder.
    logged_spec = replace(predictor.spec, model=config.model if immutable_uri(config.model) else predictor.adapter_dir,
                          index=predictor.index_dir)
    model_uri = log_system_model(tracker, output.parent, logged_spec, example_question=items[0].question, evaluated=True)
    # The metrics are the run's and, in MLflow 3's model view, the logged
    # model's on this eval set.
    # exact_match_rate stays in the results JSON (evaluate-rag's name), not as a second chart of exact_match.
    logged = {k: v for k, v in metrics.items() if k != "exact_match_rate"}
    tracker.log_metrics(logged, model_uri=model_uri, dataset=eval_dataset)
    tracker.log_table(
        {k: [r[k] if not isinstance(r[k], list) else ",".join(r[k]) for r in rows] for k in rows[0] if k not in ("error", "warning", "labels")},
        "eval_results.json",
    )
    tracker.log_evaluation(rows, QUESTION_VIEW_METRICS, model_uri, eval_dataset)
    if by_label:
        tracker.log_dict(by_label, "eval_breakdown.json")
    tracker.log_artifact(output, "results")
    return EvaluateResult(str(output), metrics, rows, model_uri, by_label)


def retrieval_scores(predictor: Any, items: list[EvalItem], answers: list[Any], top_k: int) -> dict[str, float]:
    """recall_at_k and mrr when the system retrieves and the eval set names documents."""
    if predictor.retriever is None or not any(i.doc_id for i in items):
        return {}
    from dyag_mlops.retrieval.rag import retrieval_metrics

    return retrieval_metrics([a.retrieved for a in answers], [i.doc_id for i in items], top_k)
