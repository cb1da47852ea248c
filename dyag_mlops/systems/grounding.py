"""Grounded answers: decoding constrained to spans of the retrieved context.

A system that answers from retrieved chunks (rag, hybrid) is asked for the
exact value the inventory holds. A 135M model that has found the right line
still miscopies it ("Cotlin" for "Kotlin", "2/01/2018" for "02/01/2018",
"October 2013"), and an untrained one wanders off into text that is nowhere in
the context. With grounding on, the answer can only be a run of tokens that
starts at a word of one line of the context and ends anywhere on that line,
or the refusal: the model still chooses *which* span (its scores), but
cannot invent one. Implemented with transformers' `prefix_allowed_tokens_fn`
over a prefix tree (trie) of the token ids of every such span.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

# A span starts at a word: at the start of a line or after a space or an
# opening punctuation mark.
WORD_START = re.compile(r"(?:^|(?<=[\s(:,;«\"'/]))\S")
CHUNK_NUMBER = re.compile(r"^\[\d+\]\s*")


def context_spans(chunks: Sequence[str]) -> list[str]:
    """The longest span starting at each word start of each context line:
    from there to the end of the line."""
    texts = []
    for chunk in chunks:
        for line in chunk.splitlines():
            line = CHUNK_NUMBER.sub("", line).rstrip()
            texts += [line[m.start():] for m in WORD_START.finditer(line)]
    return texts


def span_texts(chunks: Sequence[str], refusal: str) -> list[str]:
    """Every allowed answer, longest form: the context's spans, plus the
    refusal (none for ""; always when the context has no span). An answer
    may stop at any token of one of these."""
    texts = context_spans(chunks)
    if refusal or not texts:
        texts.append(refusal)
    return list(dict.fromkeys(texts))


def span_trie(tokenizer: Any, chunks: Sequence[str], refusal: str) -> dict:
    """Prefix tree of the token ids of `span_texts(chunks, refusal)`: {token: subtree}."""
    trie: dict = {}
    for ids in tokenizer(span_texts(chunks, refusal), add_special_tokens=False)["input_ids"]:
        node = trie
        for token in ids:
            node = node.setdefault(token, {})
    return trie


class SpanConstraint:
    """`prefix_allowed_tokens_fn` for one batch: row i may only continue a
    path of `tries[i]`; end of answer (EOS) is allowed once it has a token, and
    forced when the path leaves the tree."""

    def __init__(self, tries: list[dict], prompt_length: int, eos_token_id: int):
        self.tries, self.prompt_length, self.eos = tries, prompt_length, eos_token_id

    def __call__(self, batch_id: int, input_ids: Any) -> list[int]:
        generated = input_ids[self.prompt_length :].tolist()
        node = self.tries[batch_id]
        for token in generated:
            node = node.get(token) if token != self.eos else None
            if node is None:
                return [self.eos]
        allowed = list(node)
        if generated:
            allowed.append(self.eos)
        return allowed or [self.eos]

    def keep(self, rows: Sequence[int]) -> "SpanConstraint":
        """The constraint of the batch made of `rows` of this one."""
        return SpanConstraint([self.tries[r] for r in rows], self.prompt_length, self.eos)


def span_constraint(
    tokenizer: Any, contexts: list[list[str]], prompt_length: int, refusals: Sequence[str]
) -> SpanConstraint:
    """The constraint for a batch whose row i holds the chunks `contexts[i]`
    in a prompt padded to `prompt_length` tokens, and may refuse with
    `refusals[i]` ("": may not)."""
    tries = [span_trie(tokenizer, chunks, refusal) for chunks, refusal in zip(contexts, refusals)]
    return SpanConstraint(tries, prompt_length, tokenizer.eos_token_id)
