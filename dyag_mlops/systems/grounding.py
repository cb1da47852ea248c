"""Grounded answers: decoding constrained to spans of the retrieved context.

A system that answers from retrieved chunks (rag, hybrid) is asked for the
exact value the inventory holds. A 135M model that has found the right line
still miscopies it ("Cotlin" for "Kotlin", "2/01/2018" for "02/01/2018",
"October 2013"), and an untrained one wanders off into text that is nowhere in
the context. With grounding on, the answer can only be a run of tokens of
one line of the context, or the refusal: the model still chooses *which*
span (its scores), but cannot invent one. A span of a `Label: value` line
starts at the line or at its value (an answer is a field's value, and a
small model free to start inside one dropped its first words), or, in a
prose value, after a word the question says (the answer to a question on a
detail follows the words it repeats); a span of another line starts at any
of its words. A question asking for figures ("How many …?") is answered
from prose by a span that starts at a number, or at the short words just
before it ("plus de 300 …"): a small model free to start at the line
copied the whole sentence around the figure. A span ends anywhere on its
line, but a value that is no prose ends at an item's end only (a small
model cut "Team X <x@y.fr> : <x@y.fr>" after its first address), and prose
copied from its start at a sentence's end (it stopped a long description
after its first word, the document's name). A prefix
tree (trie) of the token ids of every such span constrains transformers'
`prefix_allowed_tokens_fn` (sampling) or `decode_spans` (greedy: the
tree's unbranched paths are checked several tokens per forward pass).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from dyag_mlops.data.inventory import FIELD_LINE, QUALIFIED_ITEMS, STEM, value_kind
from dyag_mlops.data.text import normalise

# A word starts at the start of a line or after a space or an opening
# punctuation mark.
WORD_START = re.compile(r"(?:^|(?<=[\s(:,;«\"'/]))\S")
CHUNK_NUMBER = re.compile(r"^\[\d+\]\s*")
# A value of no kind (inventory.VALUE_KINDS), no list of qualified items
# and at least this many words is prose.
PROSE_WORDS = 8


def _prose(value: str) -> bool:
    return len(value.split()) >= PROSE_WORDS and not value_kind([value]) and not QUALIFIED_ITEMS.match(value.strip())


def context_spans(chunks: Sequence[str], question: str = "", figures: bool = False) -> list[str]:
    """The longest span from each allowed start of each context line (the
    line and its value for a field line, each word otherwise) to the line's
    end. In a prose value, a span may also start after a word (4+ letters)
    the question says: "Why was it abandoned?" of "…, abandoned in 2022 for
    lack of funding". With `figures` (the question asks for figures), a
    prose value that holds a number is entered at its numbers only."""
    return [text for text, _ in _spans(chunks, question, figures)]


def _spans(chunks: Sequence[str], question: str, figures: bool = False) -> list[tuple[str, re.Pattern | None]]:
    """`context_spans`, each with where it may end besides its line's end:
    a value that is no prose at an item's end (ITEM_END), prose from its
    start at a sentence's end (SENTENCE_STOP), any other span anywhere (None)."""
    said = {w[:STEM] for w in normalise(question).split() if len(w) >= 4}
    spans = []
    for chunk in chunks:
        for line in chunk.splitlines():
            line = CHUNK_NUMBER.sub("", line).rstrip()
            field = FIELD_LINE.match(line)
            if field:
                prose = _prose(field.group("value"))
                words = list(WORD_START.finditer(line, field.start("value")))
                numbers = [i for i, word in enumerate(words) if line[word.start()].isdigit()]
                if figures and prose and numbers:
                    spans += [(line[words[_figure_start(line, words, i)].start():], None) for i in numbers]
                    continue
                stops = SENTENCE_STOP if prose else ITEM_END
                spans += [(line, stops), (line[field.start("value"):], stops)]
                if said and prose:
                    spans += [(line[after.start():], None) for echo, after in zip(words, words[1:]) if _stem(line, echo) in said]
            else:
                spans += [(line[m.start():], None) for m in WORD_START.finditer(line)]
    return spans


# Where an answer copying a value that is no prose may end: before a list's
# separator, or at the value's end. "Equipe X <x@y.fr> : <x@y.fr>" is
# copied whole, not cut after its first address; "libc6, libssl3" may stop
# at "libc6".
ITEM_END = re.compile(r"(?=[,;]\s)")
# Where prose copied from its start may end: after a sentence's last mark.
SENTENCE_STOP = re.compile(r"(?<=[.!?])(?=\s)")
# A key of a node of a span trie: an answer may end there.
END = -1
# How many short words before a number a span of it may start with.
FIGURE_LEAD = 2


def _figure_start(line: str, words: list[re.Match], i: int) -> int:
    """The word a span holding the number that word i begins starts at: it,
    or up to FIGURE_LEAD words before it of at most 4 letters ("plus de")."""
    start = i
    while start > max(0, i - FIGURE_LEAD) and len(line[words[start - 1].start():].split(maxsplit=1)[0]) <= 4:
        start -= 1
    return start


def _stem(line: str, word: re.Match) -> str:
    """The stem of the word of `line` that `word` (a WORD_START match) begins."""
    found = normalise(line[word.start():].split(maxsplit=1)[0]).split()
    return found[0][:STEM] if found else ""


def span_texts(chunks: Sequence[str], refusal: str, question: str = "", figures: bool = False) -> list[str]:
    """Every allowed answer, longest form: the context's spans, plus the
    refusal (none for ""; always when the context has no span). An answer
    may stop at any token of one of these, or where `_spans` says (`span_trie`)."""
    return list(dict.fromkeys(text for text, _ in _answers(chunks, refusal, question, figures)))


def _answers(chunks: Sequence[str], refusal: str, question: str, figures: bool = False) -> list[tuple[str, re.Pattern | None]]:
    """`_spans`, plus the refusal as `span_texts` offers it."""
    spans = _spans(chunks, question, figures)
    if refusal or not spans:
        spans.append((refusal, None))
    return spans


def span_trie(tokenizer: Any, chunks: Sequence[str], refusal: str, question: str = "", figures: bool = False) -> dict:
    """Prefix tree of the token ids of `span_texts(chunks, refusal, question, figures)`:
    {token: subtree}; a node where an answer may end holds END. A span with
    stops (`_spans`: a value that is no prose, prose from its start) may end
    where a token ends at one of them or at its end (a tokenizer without
    offsets: at any token, as any other span)."""
    spans = list(dict.fromkeys(_answers(chunks, refusal, question, figures)))
    encoded = tokenizer([text for text, _ in spans], add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    offsets = encoded.get("offset_mapping") or [None] * len(spans)
    trie: dict = {}
    for (text, stops), ids, marks in zip(spans, encoded["input_ids"], offsets):
        ends = {m.start() for m in stops.finditer(text)} | {len(text)} if stops is not None and marks else None
        node = trie
        for i, token in enumerate(ids):
            node = node.setdefault(token, {})
            if ends is None or marks[i][1] in ends or i == len(ids) - 1:
                node[END] = True
    return trie


def longest_span(trie: dict) -> int:
    """Tokens of the longest answer `trie` allows."""
    longest, stack = 0, [(trie, 0)]
    while stack:
        node, depth = stack.pop()
        longest = max(longest, depth)
        stack += [(child, depth + 1) for token, child in node.items() if token != END]
    return longest


def _next(node: dict) -> list[int]:
    """The tokens that may follow `node`."""
    return [token for token in node if token != END]


class SpanConstraint:
    """`prefix_allowed_tokens_fn` for one batch: row i may only continue a
    path of `tries[i]`; end of answer (EOS) is allowed where the tree says
    (END), and forced when the path leaves the tree."""

    def __init__(self, tries: list[dict], prompt_length: int, eos_token_id: int):
        self.tries, self.prompt_length, self.eos = tries, prompt_length, eos_token_id

    def __call__(self, batch_id: int, input_ids: Any) -> list[int]:
        generated = input_ids[self.prompt_length :].tolist()
        node = self.tries[batch_id]
        for token in generated:
            node = node.get(token) if token != self.eos else None
            if node is None:
                return [self.eos]
        allowed = _next(node)
        if generated and END in node:
            allowed.append(self.eos)
        return allowed or [self.eos]

    def keep(self, rows: Sequence[int]) -> "SpanConstraint":
        """The constraint of the batch made of `rows` of this one."""
        return SpanConstraint([self.tries[r] for r in rows], self.prompt_length, self.eos)


def span_constraint(
    tokenizer: Any,
    contexts: list[list[str]],
    prompt_length: int,
    refusals: Sequence[str],
    questions: Sequence[str] | None = None,
    figures: Sequence[bool] | None = None,
) -> SpanConstraint:
    """The constraint for a batch whose row i holds the chunks `contexts[i]`
    in a prompt padded to `prompt_length` tokens, asks `questions[i]` (for
    figures where `figures[i]`), and may refuse with `refusals[i]` ("": may not)."""
    questions = questions or [""] * len(contexts)
    figures = figures or [False] * len(contexts)
    tries = [span_trie(tokenizer, *row) for row in zip(contexts, refusals, questions, figures)]
    return SpanConstraint(tries, prompt_length, tokenizer.eos_token_id)


# Tokens a row may propose past its last chosen one in one forward pass.
MAX_DRAFT = 16
# Settings of a model's generation config that change which token greedy
# decoding picks; decode_spans leaves a model that sets one to generate.
CHOICE_SETTINGS = (
    "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens",
    "begin_suppress_tokens", "min_new_tokens", "min_length", "forced_bos_token_id", "forced_eos_token_id",
    "exponential_decay_length_penalty",
)


def draft(node: dict, limit: int) -> list[int]:
    """The tokens that follow `node` while the tree does not branch: the
    only way a span can continue, what the model will most often choose."""
    tokens: list[int] = []
    while len(tokens) < limit and len(_next(node)) == 1:
        token = _next(node)[0]
        tokens.append(token)
        node = node[token]
    return tokens


def decode_spans(model: Any, ids: Any, mask: Any, cache: Any, tries: list[dict], eos: int, budget: int) -> list[list[int]] | None:
    """Greedy grounded decoding that checks several tokens per forward pass.

    Once started, a span can mostly continue one way only: each row feeds its
    last chosen token and the tokens its tree allows next where it does not
    branch (`draft`). One pass scores them all; the row keeps the drafted
    tokens the model would have chosen one at a time, then its own choice
    where they part (or the end of the answer). Only the allowed tokens are
    scored. The choices of generate with SpanConstraint (up to the rounding
    of a pass of several tokens), in a few passes instead of one per token.
    `ids`, `mask` and `cache` are a batch's prompts as `Predictor._encode`
    builds them. Returns each row's tokens, ending with `eos` where it ended;
    None for a model whose head is not a plain linear layer on its decoder,
    or whose generation config sets one of CHOICE_SETTINGS (a repetition
    penalty, ...): generate applies those."""
    import torch

    config = getattr(model, "generation_config", None)
    if any(getattr(config, name, None) not in (None, 0, 1.0) for name in CHOICE_SETTINGS):
        return None
    head = model.get_output_embeddings()
    try:
        decoder = model.get_decoder()
    except (AttributeError, ValueError):
        return None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    with torch.inference_mode():
        return _decode_spans(decoder, cache_argument(decoder), head.weight, ids, mask, cache, tries, eos, budget)


def cache_argument(model: Any) -> str:
    """The name of a model's key/value cache argument: `cache` in recent
    transformers 5 releases (which warn on the former name), `past_key_values`
    before. A PEFT model is asked of its base model: it only passes it on."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a model's or generate's output holds, under either name."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def _decode_spans(decoder: Any, cache_name: str, weight: Any, ids: Any, mask: Any, cache: Any, tries: list[dict], eos: int, budget: int) -> list[list[int]]:
    import torch

    past = cache.get_seq_length() if cache is not None else 0
    feed = ids[:, past:]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
    fed: list[list[int]] = [[] for _ in tries]  # each row's fed tokens after its prompt: [chosen, drafted...]
    nodes = list(tries)  # where each row's chosen tokens lead in its tree
    out: list[list[int]] = [[] for _ in tries]
    live = list(range(len(tries)))  # the row of the batch -> its prompt
    first = True  # this pass reads the prompts
    while True:
        result = decoder(input_ids=feed, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache})
        cache = returned_cache(result)
        hidden = result.last_hidden_state
        going, kept = [], []
        for row, prompt in enumerate(live):
            tokens = fed[prompt]
            node, accepted, choice = nodes[prompt], 0, eos
            # The prompt's last position scores the first token; after that,
            # the position of each fed token scores the token after it.
            for j, position in enumerate([feed.shape[1] - 1] if first else range(len(tokens))):
                if j > 0:
                    node = node[tokens[j]]
                # Sorted: a tie goes to the lowest id, as in generate's argmax.
                allowed = sorted([*_next(node), eos] if out[prompt] and END in node else _next(node)) or [eos]
                choice = allowed[int(torch.argmax(hidden[row, position] @ weight[allowed].T))]
                if j + 1 < len(tokens) and choice == tokens[j + 1]:
                    accepted += 1
                    continue
                break
            out[prompt] += tokens[1 : 1 + accepted] + [choice]
            # Drafted tokens the model did not choose stay in the cache, masked out.
            kept.append([1] * (1 + accepted) + [0] * (feed.shape[1] - 1 - accepted))
            nodes[prompt] = node.get(choice, {})
            if choice != eos and len(out[prompt]) < budget:
                going.append(row)
                # Room for the drafts and the choice after them within `budget`.
                fed[prompt] = [choice] + draft(nodes[prompt], min(MAX_DRAFT, budget - len(out[prompt]) - 1))
        if not going:
            return out
        if not first:
            mask = torch.cat([mask[:, : mask.shape[1] - feed.shape[1]], mask.new_tensor(kept)], dim=1)
        first = False
        rows = torch.tensor(going, device=mask.device)
        mask = mask[rows]
        cache.batch_select_indices(rows)
        live = [live[row] for row in going]
        width = max(len(fed[p]) for p in live)
        feed = torch.tensor([fed[p] + [eos] * (width - len(fed[p])) for p in live], device=mask.device)
        positions = mask.long().sum(-1, keepdim=True) + torch.arange(width, device=mask.device)
        mask = torch.cat([mask, mask.new_tensor([[1] * len(fed[p]) + [0] * (width - len(fed[p])) for p in live])], dim=1)
