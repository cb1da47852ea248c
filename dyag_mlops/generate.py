"""Stage generate-training: corpus -> train/val/test chat datasets.

    dyag generate-training corpus.jsonl --method augmented --output data/qa.jsonl

Methods:
- rule-based: fields found through a field schema (labels -> question
  templates); the first four phrasings of each field.
- augmented: every phrasing, the document named by its short and full name,
  plus combined questions over two fields; never the same (question, answer) twice.
- llm-based: a model writes question/answer pairs from each chunk; a pair whose
  answer is not found in its chunk is dropped and counted.

Split: each *fact* (document, field, value) keeps at least one phrasing in
train; the test split holds other phrasings of facts that train covers (what
fine-tuning is meant to learn), val likewise; no question is in two splits.

Context-grounded examples (RAFT, `--with-context INDEX`): the prompt holds
the chunks the retriever returns for the question, exactly as the rag and
hybrid systems will see them at answering time (same retriever, same prompt
builder). In a share of examples the right chunk is replaced by distractors
only and the answer becomes "Je ne sais pas", so the model learns to copy the
value from its context and to admit when the context does not have it.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable

from dyag_mlops.config import GenerateConfig
from dyag_mlops.corpus import Chunk, demo_corpus_path, field_lines, load_corpus
from dyag_mlops.errors import DyagError
from dyag_mlops.files import atomic_write_bytes, atomic_write_json, jsonl_lines, read_jsonl, refuse_overwrite
from dyag_mlops.prompts import UNKNOWN_ANSWER, build_messages, split_messages
from dyag_mlops.text import normalise
from dyag_mlops.tracking import NullTracker

RULE_BASED_PHRASINGS = 4
UNKNOWN_FIELD = "unknown"


# ---------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    combined_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schema:
    language: str
    fields: tuple[FieldSpec, ...]

    def field_for_label(self, label: str) -> FieldSpec | None:
        # A corpus repeats a dozen labels over and over: normalise each once.
        if label not in self._label_cache:
            self._label_cache[label] = self._by_label.get(normalise(label))
        return self._label_cache[label]

    @functools.cached_property
    def _label_cache(self) -> dict[str, FieldSpec | None]:
        return {}

    @functools.cached_property
    def _by_label(self) -> dict[str, FieldSpec]:
        return {normalise(label): spec for spec in reversed(self.fields) for label in spec.labels}

    def all_labels(self) -> list[str]:
        return [label for spec in self.fields for label in spec.labels]


def load_schema(name_or_path: str) -> Schema:
    """A shipped schema (`fr`, `en`) or a user's JSON file of the same shape."""
    if name_or_path in ("fr", "en"):
        text = (resources.files("dyag_mlops") / "resources" / "schemas" / f"{name_or_path}.json").read_text("utf-8")
        where = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise DyagError(f"--schema {name_or_path}: not fr, en or an existing JSON file")
        text, where = path.read_text("utf-8"), str(path)
    try:
        data = json.loads(text)
        specs = tuple(
            FieldSpec(f["name"], tuple(f["labels"]), tuple(f["templates"]), tuple(f.get("combined_with", ())))
            for f in data["fields"]
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DyagError(f"{where}: not a valid field schema ({exc})") from None
    for spec in specs:
        if not spec.templates or any("{doc}" not in t for t in spec.templates):
            raise DyagError(f"{where}: every template of field {spec.name!r} must contain {{doc}}")
    return Schema(data.get("language", "?"), specs)


# ---------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    doc_id: str
    title: str
    field: str
    label: str
    value: str
    chunk_id: str

    @functools.cached_property
    def key(self) -> str:
        # Cached: one string shared by every phrasing of the fact, hashed once.
        return f"{self.doc_id}::{self.field}"


def extract_facts(chunks: list[Chunk], schema: Schema) -> tuple[list[Fact], dict[str, dict[str, str]]]:
    """Facts found through the schema, and each document's aliases (title, full name)."""
    facts: dict[str, Fact] = {}
    aliases: dict[str, dict[str, str]] = defaultdict(dict)
    for chunk in chunks:
        aliases[chunk.doc_id].setdefault("title", chunk.title)
        for label, value in field_lines(chunk.content):
            spec = schema.field_for_label(label)
            if spec is None:
                continue
            fact = Fact(chunk.doc_id, chunk.title, spec.name, label, value, chunk.id)
            facts.setdefault(fact.key, fact)
            if spec.name == "full_name":
                aliases[chunk.doc_id]["full_name"] = value
    return list(facts.values()), dict(aliases)


def missing_facts(facts: list[Fact], chunks: list[Chunk], schema: Schema) -> list[Fact]:
    """For documents that have some fields but not others: facts whose answer is
    that the inventory does not say ("Je ne sais pas"), so a model learns to
    admit it rather than invent."""
    present = {f.key for f in facts}
    documents = {f.doc_id: f for f in facts}
    first_chunk = {}
    for chunk in chunks:
        first_chunk.setdefault(chunk.doc_id, chunk.id)
    unknown = []
    for doc_id, any_fact in documents.items():
        for spec in schema.fields:
            if f"{doc_id}::{spec.name}" not in present:
                unknown.append(Fact(doc_id, any_fact.title, spec.name, spec.labels[0], UNKNOWN_ANSWER, first_chunk[doc_id]))
    return unknown


# ---------------------------------------------------------------- examples


def make_metadata(fact: Fact, method: str, fact_id: str | None = None) -> dict:
    return {
        "doc_id": fact.doc_id,
        "title": fact.title,
        "field": fact.field,
        "method": method,
        "chunk_id": fact.chunk_id,
        "fact_id": fact_id or fact.key,
    }


def make_example(question: str, answer: str, fact: Fact, method: str, fact_id: str | None = None) -> dict:
    return {"messages": build_messages(question, answer=answer), "metadata": make_metadata(fact, method, fact_id)}


def fact_examples(fact: Fact, questions: list[str], method: str) -> list[dict]:
    """One example per phrasing of a fact, equal to make_example's. They share
    the system and answer messages and the metadata, which are therefore
    read-only (add_contexts copies before it changes one): on a large corpus
    that is a million small dicts fewer to build and free."""
    system, _, answer = build_messages("", answer=fact.value)
    metadata = make_metadata(fact, method)
    return [{"messages": [system, {"role": "user", "content": q}, answer], "metadata": metadata} for q in questions]


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


@functools.lru_cache(maxsize=4096)
def _normalised_parts(template: str) -> tuple[str, str] | None:
    """normalise() of the text before and after {doc}, when {doc} stands alone
    (no letter or digit touching it): then normalise(question) is those parts
    joined with normalise(name), and half a million questions need not be
    normalised one by one. None when the shortcut would not be exact."""
    before, sep, after = template.partition("{doc}")
    if not sep or "{doc}" in after:
        return None
    if (before and _is_word_char(before[-1])) or (after and _is_word_char(after[0])):
        return None
    return normalise(before), normalise(after)


def question_key(template: str, name: str, normalised_name: str) -> str:
    """normalise(template with {doc} replaced by name), computed from parts."""
    parts = _normalised_parts(template)
    if parts is None:
        return normalise(template.replace("{doc}", name))
    return " ".join(p for p in (parts[0], normalised_name, parts[1]) if p)


def rule_based_examples(
    facts: list[Fact], schema: Schema, aliases: dict, *, augmented: bool
) -> tuple[list[dict], list[str]]:
    """Examples, and each one's normalised question (the dedupe key)."""
    specs = {s.name: s for s in schema.fields}
    method = "augmented" if augmented else "rule-based"
    examples: list[dict] = []
    keys: list[str] = []
    normalised_names: dict[str, str] = {}  # a document's name serves all its facts
    for fact in facts:
        spec = specs[fact.field]
        templates = spec.templates if augmented else spec.templates[:RULE_BASED_PHRASINGS]
        names = [fact.title]
        if augmented:
            # Not the lowercased title as well: its questions normalise to the
            # title's, so dedupe dropped every one of them (a third of the work).
            names.append(aliases.get(fact.doc_id, {}).get("full_name", fact.title))
        questions = []
        for name in dict.fromkeys(names):
            if name not in normalised_names:
                normalised_names[name] = normalise(name)
            normalised_name = normalised_names[name]
            for template in templates:
                questions.append(template.replace("{doc}", name))
                keys.append(question_key(template, name, normalised_name))
        examples += fact_examples(fact, questions, method)
    if augmented:
        combined = combined_examples(facts, specs)
        examples += combined
        keys += [normalise(ex["messages"][1]["content"]) for ex in combined]
    return examples, keys


def combined_examples(facts: list[Fact], specs: dict[str, FieldSpec]) -> list[dict]:
    """Two questions about one document asked together, answered field by field."""
    by_key = {f.key: f for f in facts}
    examples = []
    for fact in facts:
        if fact.value == UNKNOWN_ANSWER:
            continue
        for other_name in specs[fact.field].combined_with:
            other = by_key.get(f"{fact.doc_id}::{other_name}")
            if other is None or other.value == UNKNOWN_ANSWER or other_name not in specs:
                continue
            for first, second in zip(specs[fact.field].templates[:2], specs[other_name].templates[:2]):
                question = f"{first.replace('{doc}', fact.title)} {second.replace('{doc}', fact.title)}"
                answer = f"{fact.label} : {fact.value} ; {other.label} : {other.value}"
                examples.append(make_example(question, answer, fact, "augmented", f"{fact.key}+{other_name}"))
    return examples


def dedupe(examples: list[dict], keys: list[str] | None = None) -> list[dict]:
    """Drop repeated (question, answer) pairs and any question already asked.
    `keys`: each example's normalised question, when already known."""
    seen: set[str] = set()
    unique = []
    for i, ex in enumerate(examples):
        question = keys[i] if keys is not None else normalise(ex["messages"][1]["content"])
        if question in seen:
            continue
        seen.add(question)
        unique.append(ex)
    return unique


# ---------------------------------------------------------------- llm-based

LLM_INSTRUCTION = (
    "Voici une fiche. Écris {n} paires question/réponse dont la réponse se trouve mot pour mot dans la fiche. "
    "Format, une paire par ligne : Q: <question> || R: <réponse>\n\nFiche :\n{chunk}"
)
PAIR_LINE = re.compile(r"Q\s*:\s*(?P<q>.+?)\s*\|\|\s*R\s*:\s*(?P<a>.+)")


def llm_examples(chunks: list[Chunk], config: GenerateConfig, pairs_per_chunk: int = 4) -> tuple[list[dict], int]:
    """(examples, number of pairs dropped as unsupported by their chunk)."""
    from tqdm import tqdm

    ask = _endpoint_writer(config) if config.llm_url else _local_writer(config)
    examples, dropped = [], 0
    for chunk in tqdm(chunks, desc="llm-based generation", unit="chunk"):
        reply = ask(LLM_INSTRUCTION.format(n=pairs_per_chunk, chunk=chunk.content))
        for match in PAIR_LINE.finditer(reply):
            question, answer = match.group("q").strip(), match.group("a").strip()
            if not answer or normalise(answer) not in normalise(chunk.content) or len(normalise(answer)) < 2:
                dropped += 1
                continue
            fact = Fact(chunk.doc_id, chunk.title, "llm", "", answer, chunk.id)
            examples.append(make_example(question, answer, fact, "llm-based", f"{chunk.id}::{normalise(answer)}"))
    return examples, dropped


def _local_writer(config: GenerateConfig) -> Callable[[str], str]:
    from dyag_mlops.systems import load_predictor

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


def split_positions(fact_ids: list[str], val_ratio: float, test_ratio: float, seed: int) -> dict[str, list[int]]:
    """Positions of the examples (whose facts are `fact_ids`) in train/val/test,
    so that every val/test fact keeps a phrasing in train."""
    import numpy as np

    # numpy permutations, not random.shuffle: shuffling half a million
    # examples in pure Python took 2 s of a 10,000-chunk run.
    rng = np.random.default_rng(seed)

    def shuffled(items: list) -> list:
        return [items[i] for i in rng.permutation(len(items)).tolist()]

    # Positions in random order, grouped by fact: each fact's phrasings in random order.
    by_fact: dict[str, list[int]] = defaultdict(list)
    for i in rng.permutation(len(fact_ids)).tolist():
        by_fact[fact_ids[i]].append(i)
    facts = shuffled(sorted(by_fact))
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    targets = {"test": round(test_ratio * len(fact_ids)), "val": round(val_ratio * len(fact_ids))}
    for name in ("test", "val"):
        # Round-robin over facts, one phrasing each, so held-out phrasings spread
        # over as many facts as possible; a fact always keeps one for train.
        while targets[name] > 0:
            moved = False
            for fid in facts:
                if targets[name] == 0:
                    break
                if len(by_fact[fid]) >= 2:
                    splits[name].append(by_fact[fid].pop())
                    targets[name] -= 1
                    moved = True
            if not moved:
                break
    for fid in facts:
        splits["train"].extend(by_fact[fid])
    return {name: shuffled(positions) for name, positions in splits.items()}


def manifest_for(
    splits: dict[str, list[int]], fact_ids: list[str], fields: list[str], requested: int, dropped: int
) -> dict:
    """Counts per split and per field, and fact coverage; `splits` holds
    positions into `fact_ids` / `fields` (each example's)."""
    facts = {name: {fact_ids[i] for i in positions} for name, positions in splits.items()}
    train_facts = facts.get("train", set())
    manifest: dict[str, Any] = {"requested": requested, "produced": len(fact_ids), "dropped_unsupported": dropped, "splits": {}}
    for name, positions in splits.items():
        held = facts[name]
        manifest["splits"][name] = {
            "examples": len(positions),
            "facts": len(held),
            "per_field": dict(sorted(Counter(fields[i] for i in positions).items())),
            # share of this split's facts that the training split also teaches
            "fact_coverage_by_train": round(len(held & train_facts) / len(held), 4) if held else None,
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
    from dyag_mlops.rag import Retriever

    rng = random.Random(config.seed + 1)
    chosen = [ex for ex in examples if rng.random() < config.context_share]
    counts = {"context_oracle": 0, "context_distractors_only": 0, "context_oracle_inserted": 0}
    if not chosen:
        return counts
    k = config.context_k
    with Retriever(config.with_context) as retriever:
        questions = [split_messages(ex["messages"])[0] for ex in chosen]
        as_asked = retriever.retrieve(questions, top_k=k)
        # Distractors come from the whole index, not only the named document.
        wider = retriever.retrieve(questions, top_k=k + 4, doc_filter=False)
        for ex, question, hits, others in zip(chosen, questions, as_asked, wider):
            meta = ex["metadata"] = dict(ex["metadata"])  # shared by a fact's phrasings: copy before changing
            answer = split_messages(ex["messages"])[1]
            distractors = [h for h in hits + others if h.doc_id != meta["doc_id"]]
            distractors = list({h.chunk_id: h for h in distractors}.values())
            if rng.random() < config.oracle_share or not distractors:
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
                answer = UNKNOWN_ANSWER
                counts["context_distractors_only"] += 1
                meta["context"] = "distractors"
            meta["context_ids"] = [h.chunk_id for h in context]
            ex["messages"] = build_messages(question, [h.content for h in context], answer)
    return counts


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
    warnings: list[str] = []
    dropped = 0
    if config.method == "llm-based":
        examples, dropped = llm_examples(chunks, config)
        keys = None
        if not examples:
            raise DyagError(f"llm-based: every generated pair was unsupported by its chunk ({dropped} dropped)")
    else:
        schema = load_schema(config.schema)
        facts, aliases = extract_facts(chunks, schema)
        if not facts:
            raise DyagError(
                f"no field found in {config.corpus or 'the demo corpus'} with schema {config.schema!r}; "
                f"it looks for lines 'Label : value' with labels: {', '.join(schema.all_labels())}"
            )
        facts += missing_facts(facts, chunks, schema)
        examples, keys = rule_based_examples(facts, schema, aliases, augmented=config.method == "augmented")
    examples = dedupe(examples, keys)
    available = len(examples)
    if config.count and config.count < available:
        examples = random.Random(config.seed).sample(examples, config.count)
    elif config.count > available:
        warnings.append(f"asked for {config.count} examples, the {config.method} method could make {available}")
    context_counts = add_contexts(examples, config) if config.with_context else {}

    # Everything below works on positions into `examples`, which are read once,
    # in the order they were built: after a shuffle, every pass over half a
    # million dicts scattered in memory cost about a second.
    metadata = [ex["metadata"] for ex in examples]
    fact_ids = [m["fact_id"] for m in metadata]
    fields = [m["field"] for m in metadata]
    splits = (
        split_positions(fact_ids, config.val_ratio, config.test_ratio, config.seed)
        if config.split
        else {"all": list(range(len(examples)))}
    )
    for name, positions in splits.items():
        if not positions:
            warnings.append(f"the {name} split is empty: too few phrasings per fact to hold some out (raise --count)")
    manifest = manifest_for(splits, fact_ids, fields, config.count, dropped)
    manifest.update({"method": config.method, "seed": config.seed, "corpus_chunks": len(chunks), "warnings": warnings})
    if config.with_context:
        manifest["contexts"] = {"index": config.with_context, "top_k": config.context_k, **context_counts}
    lines = jsonl_lines(examples)
    for name, positions in splits.items():
        atomic_write_bytes(paths[name], b"".join([lines[i] for i in positions]))
    atomic_write_json(paths["manifest"], manifest)

    if corpus_file.is_file():
        tracker.log_dataset(corpus_file, context="corpus")
    for name in splits:
        tracker.log_dataset(paths[name], context=name)
        tracker.log_artifact(paths[name], "datasets")
    tracker.log_artifact(paths["manifest"], "datasets")
    counts = {f"examples_{name}": len(positions) for name, positions in splits.items()}
    counts.update({"examples_total": len(examples), "corpus_chunks": len(chunks), "dropped_unsupported": dropped})
    counts.update(context_counts)
    tracker.log_metrics(counts)
    return GenerateResult({k: str(v) for k, v in paths.items()}, counts, manifest, warnings)
