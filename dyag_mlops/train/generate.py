"""Stage generate-training: corpus -> train/val/test chat datasets.

    dyag generate-training corpus.jsonl --method augmented --output data/qa.jsonl

Methods: rule-based (every field of the corpus asked with its first
templates), augmented (every phrasing, aliases, questions on two fields) and
llm-based (a model writes pairs; one whose answer is not in its chunk is
dropped). Split by fact: every fact keeps a phrasing in train; val and test
hold other phrasings of covered facts; no question is in two splits.
With `--with-context INDEX` (RAFT) each prompt holds what the retriever and
router hand rag and hybrid at answering time; a field the document lacks is
answered with the refusal. `--questions-per-example N` asks N questions on one
context (or N closed-book questions) as one conversation, so the shared
tokens are paid once. docs/architecture.md.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dyag_mlops.config import GenerateConfig
from dyag_mlops.data.corpus import Chunk, corpus_digest, corpus_rows, demo_corpus_path, load_corpus
from dyag_mlops.data.evalset import split_messages
from dyag_mlops.data.files import atomic_write_chunks, atomic_write_json, jsonl_lines, read_jsonl, refuse_overwrite
from dyag_mlops.data.inventory import Schema, build_profile, cached_schema, documents
from dyag_mlops.data.text import normalise
from dyag_mlops.errors import DyagError
from dyag_mlops.systems.prompts import bare_question, build_messages
from dyag_mlops.tracking import NullTracker
from dyag_mlops.train.questions import Examples, Fact, extract_facts, first_occurrences, hurried, make_example, missing_facts, rule_based_examples

# ---------------------------------------------------------------- llm-based

PAIR_LINE = re.compile(r"Q\s*:\s*(?P<q>.+?)\s*\|\|\s*[RA]\s*:\s*(?P<a>.+)")


def llm_examples(chunks: list[Chunk], config: GenerateConfig, schema: Schema, pairs_per_chunk: int = 4) -> tuple[list[dict], int]:
    """(examples, number of pairs dropped as unsupported by their chunk)."""
    from tqdm import tqdm

    ask = _endpoint_writer(config) if config.llm_url else _local_writer(config)
    examples, dropped = [], 0
    for chunk in tqdm(chunks, desc="llm-based generation", unit="chunk"):
        reply = ask(schema.llm_instruction.format(n=pairs_per_chunk, chunk=chunk.content))
        for match in PAIR_LINE.finditer(reply):
            question, answer = match.group("q").strip(), match.group("a").strip()
            if not answer or normalise(answer) not in normalise(chunk.content) or len(normalise(answer)) < 2:
                dropped += 1
                continue
            fact = Fact(chunk.doc_id, chunk.title, "llm", "", answer, chunk.id)
            examples.append(make_example(question, answer, fact, "llm-based", schema, f"{chunk.id}::{normalise(answer)}"))
    return examples, dropped


def _local_writer(config: GenerateConfig) -> Callable[[str], str]:
    from dyag_mlops.systems.predictor import load_predictor

    predictor = load_predictor("base", base_model=config.llm_model, max_new_tokens=256)
    return lambda prompt: predictor.answer_raw([prompt])[0]


def _endpoint_writer(config: GenerateConfig) -> Callable[[str], str]:
    """An OpenAI-compatible chat endpoint; the key comes from an environment
    variable and is never logged."""
    import urllib.request

    key = os.environ.get(config.llm_api_key_env, "")
    url = config.llm_url.rstrip("/") + "/chat/completions"

    def ask(prompt: str) -> str:
        body = json.dumps(
            {"model": config.llm_model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        ).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)["choices"][0]["message"]["content"]
        except Exception as exc:  # network, HTTP or JSON error: name the endpoint, not the key
            raise DyagError(f"--llm-url {config.llm_url}: request failed ({exc})") from None

    return ask


# ---------------------------------------------------------------- split


def split_positions(fact_codes: Any, fact_names: list[str], val_ratio: float, test_ratio: float, seed: int) -> dict[str, list[int]]:
    """Positions of the examples in train/val/test, so that every val/test fact
    keeps a phrasing in train. `fact_codes`: each example's fact, as an index
    into `fact_names`.

    The rule: examples in random order, grouped by fact; facts in random
    order; the test split takes one phrasing per fact, fact after fact, round
    after round (so held-out phrasings spread over as many facts as
    possible), never a fact's last one, until it holds its share; then val
    the same way; train keeps the rest. Computed with numpy sorts rather than
    a Python loop over the rounds: two million examples on a large corpus.

    Each split comes in that random order: train fact by fact (a fact's
    phrasings together, which trainers shuffle anyway), val and test round by
    round (one phrasing of each fact, then a second...). Shuffling every
    example on its own made writing two million lines a third slower, each
    line then read from a random place in memory."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = np.asarray(fact_codes, dtype=np.int64)
    n = len(codes)
    # Examples grouped by fact, each fact's in random order: one sort on the
    # fact with a random tie-break. Cheap, because examples mostly come fact
    # by fact already (timsort merges such runs in near-linear time).
    by_fact = np.argsort(codes * (n + 1) + rng.permutation(n), kind="stable")
    fact_of = codes[by_fact]
    starts = np.flatnonzero(np.r_[True, fact_of[1:] != fact_of[:-1]]) if n else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, n])
    facts = len(starts)  # below, a fact is its number in 0..facts-1, in order of code
    # Facts in random order (drawn over the facts sorted by name, so the order
    # does not depend on how the codes were numbered).
    by_name = np.argsort(np.array([fact_names[c] for c in fact_of[starts]], dtype=object), kind="stable")
    place = np.empty(facts, dtype=np.int64)
    place[by_name[rng.permutation(facts)]] = np.arange(facts)

    left = sizes.copy()  # phrasings of each fact not yet held out: its first `left` in by_fact
    held: dict[str, Any] = {}
    for name, ratio in (("test", test_ratio), ("val", val_ratio)):
        taken = _round_robin(left, place, round(ratio * n))
        # Round r takes from a fact the last phrasing it has left.
        fact = np.repeat(np.arange(facts), taken)
        round_ = np.arange(len(fact)) - np.repeat(np.cumsum(taken) - taken, taken)
        positions = starts[fact] + left[fact] - 1 - round_
        held[name] = by_fact[positions[np.argsort(round_ * facts + place[fact])]]  # by round, then fact
        left = left - taken
    in_order = np.argsort(place)
    lengths = left[in_order]
    train = by_fact[np.repeat(starts[in_order] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())]
    return {"train": train.tolist(), "val": held["val"].tolist(), "test": held["test"].tolist()}


def _round_robin(left: Any, place: Any, count: int) -> Any:
    """How many phrasings each fact gives when `count` are taken one per fact
    per round, facts in `place` order, never a fact's last one."""
    import numpy as np

    capacity = np.maximum(left - 1, 0)
    count = min(count, int(capacity.sum()))
    # Full rounds: the most rounds R with sum(min(capacity, R)) <= count.
    low, high = 0, int(capacity.max(initial=0))
    while low < high:
        middle = (low + high + 1) // 2
        if int(np.minimum(capacity, middle).sum()) <= count:
            low = middle
        else:
            high = middle - 1
    taken = np.minimum(capacity, low)
    extra = count - int(taken.sum())
    if extra:  # round `low`, partly: the first facts (by place) that can still give one
        can = np.flatnonzero(capacity > low)
        taken[can[np.argsort(place[can])[:extra]]] += 1
    return taken


def spread_over_facts(positions: list[int], fact_codes: Any, count: int, seed: int) -> list[int]:
    """`count` of `positions`, as many phrasings of each fact as fit: one
    phrasing of every fact, then a second, and so on (facts and phrasings in
    random order). A uniform sample would leave some facts unasked and ask
    others several times. `fact_codes`: each position's fact, as a code."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = np.asarray(fact_codes, dtype=np.int64)
    shuffled = rng.permutation(len(codes))
    by_fact = shuffled[np.argsort(codes[shuffled], kind="stable")]  # a fact's phrasings together, in random order
    fact_of = codes[by_fact]
    starts = np.flatnonzero(np.r_[True, fact_of[1:] != fact_of[:-1]])
    round_ = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    place = rng.permutation(int(codes.max(initial=-1)) + 1)[fact_of]
    chosen = by_fact[np.argsort(round_ * len(place) + place, kind="stable")[:count]]
    return [positions[i] for i in chosen]


def manifest_for(
    splits: dict[str, list[int]], fact_codes: Any, field_codes: Any, field_names: list[str], requested: int, dropped: int
) -> dict:
    """Counts per split and per field, and fact coverage; `splits` holds
    positions into `fact_codes` / `field_codes` (each example's, as codes;
    fields named by `field_names`)."""
    import numpy as np

    fact_codes, field_codes = np.asarray(fact_codes, dtype=np.int64), np.asarray(field_codes, dtype=np.int64)
    facts_count = int(fact_codes.max()) + 1 if len(fact_codes) else 0
    # Which facts each split holds, as a boolean per fact.
    holds = {name: np.bincount(fact_codes[positions], minlength=facts_count) > 0 for name, positions in splits.items()}
    in_train = holds.get("train", np.zeros(facts_count, dtype=bool))
    manifest: dict[str, Any] = {"requested": requested, "produced": len(fact_codes), "dropped_unsupported": dropped, "splits": {}}
    for name, positions in splits.items():
        held = int(holds[name].sum())
        per_field = np.bincount(field_codes[positions], minlength=len(field_names))
        manifest["splits"][name] = {
            "examples": len(positions),
            "facts": held,
            "per_field": {f: int(c) for f, c in sorted(zip(field_names, per_field)) if c},
            # share of this split's facts that the training split also teaches
            "fact_coverage_by_train": round(int((holds[name] & in_train).sum()) / held, 4) if held else None,
        }
    return manifest


# ---------------------------------------------------------------- validation


def validate_dataset(path: str | Path) -> list[str]:
    """Problems in a chat dataset, each naming file and line; empty if valid."""
    problems = []
    count = 0
    try:
        rows = list(read_jsonl(path))
    except DyagError as exc:
        return [str(exc)]
    for lineno, obj in rows:
        count += 1
        where = f"{path}:{lineno}"
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append(f"{where}: 'messages' must be a non-empty list")
            continue
        roles = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                problems.append(f"{where}: message {i} has no valid role (system, user or assistant)")
            elif not isinstance(m.get("content"), str) or not m["content"].strip():
                problems.append(f"{where}: message {i} ({m['role']}) has empty content")
            else:
                roles.append(m["role"])
        if "user" not in roles or "assistant" not in roles:
            problems.append(f"{where}: needs at least one user and one assistant turn")
    if count == 0:
        problems.append(f"{path}: the dataset is empty")
    return problems


# ---------------------------------------------------------------- RAFT contexts


def add_contexts(examples: list[dict], config: GenerateConfig) -> dict[str, int]:
    """Put retrieved chunks into the prompt of `config.context_share` of the
    examples (in place); returns counts of each kind of context."""
    from dyag_mlops.retrieval.focus import narrow_hits
    from dyag_mlops.retrieval.rag import Retriever

    rng = random.Random(config.seed + 1)
    chosen = [ex for ex in examples if rng.random() < config.context_share]
    counts = {"context_oracle": 0, "context_distractors_only": 0, "context_oracle_inserted": 0}
    if not chosen:
        return counts
    k = config.context_k
    with Retriever(config.with_context) as retriever:
        router = retriever.router if config.focus else None
        questions = [split_messages(ex["messages"])[0] for ex in chosen]
        as_asked = retriever.retrieve(questions, top_k=k)
        # Distractors come from the whole index, not only the named document.
        wider = retriever.retrieve(questions, top_k=k + 4, doc_filter=False)
        for ex, question, hits, others in zip(chosen, questions, as_asked, wider):
            meta = ex["metadata"] = dict(ex["metadata"])  # shared by a fact's phrasings: copy before changing
            answer = split_messages(ex["messages"])[1]
            distractors = [h for h in hits + others if h.doc_id != meta["doc_id"]]
            distractors = list({h.chunk_id: h for h in distractors}.values())
            # A narrowed sheet no longer says which document it is from: an
            # answer refused for another document's line could not be learnt
            # from the prompt. The refusals are then those of fields a sheet
            # lacks (missing facts: their narrowed sheet is empty).
            narrowed = router is not None and any(router.entries(h.content) is not None for h in hits)
            if narrowed or rng.random() < config.oracle_share or not distractors:
                context = hits
                if not any(h.doc_id == meta["doc_id"] for h in hits):
                    # Retrieval missed the document: the answer would not be
                    # supported, so the document's own chunk takes the last place.
                    own = retriever.chunks_of(meta["doc_id"])
                    if not own:
                        raise DyagError(
                            f"--with-context {config.with_context}: the index holds no chunk of document "
                            f"{meta['doc_id']!r} of the corpus; build it from the same corpus (dyag index-rag)"
                        )
                    holding = [c for c in own if answer in c.content] or own
                    context = hits[: k - 1] + holding[:1]
                    counts["context_oracle_inserted"] += 1
                counts["context_oracle"] += 1
                meta["context"] = "oracle"
            else:
                context = distractors[:k]
                answer = retriever.schema.unknown_answer
                counts["context_distractors_only"] += 1
                meta["context"] = "distractors"
            context = narrow_hits(router, [question], [context])[0]
            meta["focus"] = narrowed  # the adapter must be asked the same way
            meta["context_ids"] = [h.chunk_id for h in context]
            ex["messages"] = build_messages(question, [h.content for h in context], answer, schema=retriever.schema)
    return counts


def conversations(rows: list[dict], per_conversation: int, schema: Schema) -> list[dict]:
    """RAFT examples that share a retrieved context, asked as one conversation
    of up to `per_conversation` questions: the first turn holds the context
    and the first question, each later turn only a question, each answer is
    trained. A RAFT prompt is ~200 tokens of context for ~10 of answer, so
    this trains on several answers for the price of one context. Never two
    phrasings of one fact in a conversation: the second answer would be a
    copy of the first instead of a look at the context (closed-book: instead
    of a recall). Closed-book rows all share one key, no context, and are
    packed the same way, each turn a question. Rows keep their order (the
    split's random order); a conversation is named by its first row."""
    open_by_context: dict[tuple, list[dict]] = defaultdict(list)
    result: list[dict] = []
    for row in rows:
        meta = row["metadata"]
        context = (meta.get("context"), tuple(meta.get("context_ids", ())))
        question, answer = split_messages(row["messages"])
        question = bare_question(question, schema)  # all of it when closed-book
        target = next(
            (c for c in open_by_context[context] if meta["fact_id"] not in c["metadata"]["fact_ids"]), None
        )
        if target is None:
            target = {"messages": list(row["messages"]), "metadata": {**meta, "fact_ids": [meta["fact_id"]]}}
            result.append(target)
            open_by_context[context].append(target)
        else:
            target["messages"] += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            target["metadata"]["fact_ids"].append(meta["fact_id"])
        if len(target["metadata"]["fact_ids"]) == per_conversation:
            open_by_context[context].remove(target)
    return result


# ---------------------------------------------------------------- stage


@dataclass
class GenerateResult:
    files: dict[str, str]
    counts: dict[str, int]
    manifest: dict
    warnings: list[str] = field(default_factory=list)


def output_paths(output: str, split: bool) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    paths = {"manifest": Path(f"{stem}_manifest.json")}
    if split:
        paths.update({name: Path(f"{stem}_{name}.jsonl") for name in ("train", "val", "test")})
    else:
        paths["all"] = Path(f"{stem}.jsonl")
    return paths


def run(config: GenerateConfig, tracker: NullTracker = NullTracker()) -> GenerateResult:
    # Hundreds of thousands of small dicts, none of them cyclic: the cyclic
    # garbage collector would only rescan them again and again (measured: a
    # third of the time on a 10,000-chunk corpus).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(config, tracker)
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(config: GenerateConfig, tracker: NullTracker) -> GenerateResult:
    paths = output_paths(config.output, config.split)
    refuse_overwrite(list(paths.values()), config.overwrite)
    chunks = load_corpus(config.corpus)
    corpus_file = Path(config.corpus) if config.corpus else demo_corpus_path()
    docs = documents(chunks)
    if config.with_context:
        from dyag_mlops.retrieval.rag import read_profile

        profile = read_profile(config.with_context)  # RAFT prompts are the index's
    else:
        profile = build_profile(docs, config.schema)
    schema = cached_schema(profile.schema)
    warnings: list[str] = []
    dropped = 0
    if config.method == "llm-based":
        rows, dropped = llm_examples(chunks, config, schema)
        if not rows:
            raise DyagError(f"llm-based: every generated pair was unsupported by its chunk ({dropped} dropped)")
        examples = Examples.from_dicts(rows, schema)
    else:
        facts = extract_facts(docs, profile)
        if not facts:
            raise DyagError(
                f"no field found in {config.corpus or 'the demo corpus'}: it looks for 'Label: value' lines "
                "(also 'Label : value', '- **Label**: value') or '## Label' headings with the value below"
            )
        facts += missing_facts(facts, docs, profile, schema.unknown_answer)
        examples = rule_based_examples(
            facts, profile, schema, augmented=config.method == "augmented", phrasings=config.phrasings
        )
    for metadata in examples.metadata:  # shared by a fact's phrasings: one write each
        metadata["schema"] = profile.schema  # how an adapter trained on it must be asked
    kept = first_occurrences(examples.keys)  # never the same question twice
    excluded = 0
    if config.exclude:
        from dyag_mlops.data.evalset import load_eval_set

        held_apart = {normalise(item.question) for item in load_eval_set(config.exclude)}
        before = len(kept)
        kept = [i for i in kept if examples.keys[i] not in held_apart]
        excluded = before - len(kept)
    available = len(kept)
    if config.count and config.count < available:
        kept = spread_over_facts(kept, examples.codes(("fact_id",), kept)[0][0], config.count, config.seed)
    elif config.count > available:
        warnings.append(f"count {config.count}: the {config.method} method makes {available} examples of this corpus, all kept")
    if config.hurried_share and config.method != "llm-based":
        rng = random.Random(config.seed + 2)
        for i in kept:  # after dedupe: examples.keys keep the careful questions' keys
            if rng.random() < config.hurried_share:
                examples.questions[i] = hurried(examples.questions[i], rng)
    (fact_codes, fact_names), (field_codes, field_names) = examples.codes(("fact_id", "field"), kept)
    splits = (
        split_positions(fact_codes, fact_names, config.val_ratio, config.test_ratio, config.seed)
        if config.split
        else {"all": list(range(len(kept)))}
    )
    asked_for = {"val": config.val_ratio, "test": config.test_ratio}  # a split asked to be empty is no news
    for name, positions in splits.items():
        if not positions and asked_for.get(name, 1.0) > 0:
            warnings.append(f"the {name} split is empty: too few phrasings per fact to hold some out (raise --count)")
    manifest = manifest_for(splits, fact_codes, field_codes, field_names, config.count, dropped)
    manifest.update({
        "method": config.method, "seed": config.seed, "corpus_chunks": len(chunks), "schema": profile.schema,
        "warnings": warnings,
    })
    if config.exclude:
        manifest["excluded_eval_questions"] = {"file": config.exclude, "dropped": excluded}

    context_counts: dict[str, int] = {}
    if config.with_context or config.questions_per_example > 1:
        # Each example gets its own prompt (or joins a conversation): serialised as dicts.
        rows = [examples.example(i) for i in kept]
        if config.with_context:
            context_counts = add_contexts(rows, config)
            manifest["contexts"] = {"index": config.with_context, "top_k": config.context_k, **context_counts}
        lines = jsonl_lines(rows)
        for name, positions in splits.items():
            if name == "train" and config.questions_per_example > 1:
                packed = conversations([rows[p] for p in positions], config.questions_per_example, schema)
                context_counts["train_conversations"] = manifest["splits"]["train"]["conversations"] = len(packed)
                atomic_write_chunks(paths[name], jsonl_lines(packed))
            else:
                atomic_write_chunks(paths[name], [lines[p] for p in positions])
    else:
        for name, positions in splits.items():
            atomic_write_chunks(paths[name], examples.jsonl([kept[p] for p in positions]))
    atomic_write_json(paths["manifest"], manifest)

    tracker.log_dataset(corpus_file, "corpus", name=corpus_file.name, rows=corpus_rows(chunks), digest=corpus_digest(chunks))
    for name in splits:
        tracker.log_dataset(paths[name], context=name)
        tracker.log_artifact(paths[name], "datasets")
    tracker.log_artifact(paths["manifest"], "datasets")
    counts = {f"examples_{name}": len(positions) for name, positions in splits.items()}
    counts.update({"examples_total": len(kept), "corpus_chunks": len(chunks), "dropped_unsupported": dropped})
    if config.exclude:
        counts["excluded_eval_questions"] = excluded
    counts.update(context_counts)
    tracker.log_metrics(counts)
    return GenerateResult({k: str(v) for k, v in paths.items()}, counts, manifest, warnings)
