"""The one chat-formatting path, in the wording of the corpus's language.

The system prompt, the refusal and the headings come from the schema
(inventory.Schema). Training (finetune), generation of datasets, query and
evaluation all build their prompts here, so a model is always asked a question exactly the way it
was trained to answer it. A fine-tuned model that never stops is almost always
a template mismatch between training and inference; sharing these functions
rules that out.
"""

from __future__ import annotations

from typing import Any, Sequence

from dyag_mlops.data.inventory import FIELD_LINE, Schema

# For base models that ship no chat template (ChatML, as SmolLM2 and Qwen use).
# It is saved with the adapter so inference formats exactly like training.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def strip_field_label(answer: str, chunks: Sequence[str]) -> str:
    """The value of an answer written as a whole line of a chunk ("Statut:
    En production" -> "En production"); any other answer unchanged. Only a
    label that begins a line of one of the chunks is taken off, so a value
    that itself holds a colon stays whole."""
    match = FIELD_LINE.match(answer)
    if not match:
        return answer
    label = match.group("label").strip()
    for chunk in chunks:
        for line in chunk.splitlines():
            found = FIELD_LINE.match(line)
            if found and found.group("label").strip() == label:
                return match.group("value").strip()
    return answer


def question_separator(schema: Schema) -> str:
    """Between the retrieved chunks and the question in a user turn."""
    return f"\n\n{schema.question_heading}"


def user_content(question: str, context: Sequence[str] | None, schema: Schema) -> str:
    """The user turn: the question, preceded by retrieved chunks when there are some."""
    if not context:
        return question
    blocks = "\n\n".join(f"[{i}] {chunk.strip()}" for i, chunk in enumerate(context, start=1))
    return f"{schema.context_heading}\n{blocks}{question_separator(schema)}{question}"


def bare_question(content: str, schema: Schema) -> str:
    """The question of a user turn, without the context before it."""
    return content.rpartition(question_separator(schema))[2]


def build_messages(
    question: str,
    context: Sequence[str] | None = None,
    answer: str | None = None,
    *,
    schema: Schema,
    example: Sequence[dict] = (),
) -> list[dict]:
    """System + user (+ assistant) messages for one question, in the
    schema's language; `example` (user/assistant turns of a worked example)
    comes between the system prompt and the question."""
    messages = [{"role": "system", "content": schema.system_prompt}, *example]
    messages.append({"role": "user", "content": user_content(question, context, schema)})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the defined fallback."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def render_prompt(tokenizer: Any, messages: Sequence[dict]) -> str:
    """Text the model sees before it answers: every turn up to (not including)
    the last assistant turn, plus the generation prompt."""
    ensure_chat_template(tokenizer)
    turns = list(messages)
    if turns and turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def render_turns(tokenizer: Any, messages: Sequence[dict]) -> list[tuple[str, str]]:
    """The conversation cut into (text before an answer, the answer) pairs,
    one per assistant turn; joined in order they give the whole rendered
    conversation. An answer is exactly what the template writes for that
    assistant turn, end-of-turn marker included, so the model learns to stop;
    a one-question example gives one pair. Training puts its loss on the
    answers only."""
    ensure_chat_template(tokenizer)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training example must end with an assistant turn")
    pairs: list[tuple[str, str]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_prompt(tokenizer, messages[: i + 1])
        full = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the chat template does not render each turn as a prefix of the conversation")
        pairs.append((prompt[len(done):], full[len(prompt):]))
        done = full
    return pairs


