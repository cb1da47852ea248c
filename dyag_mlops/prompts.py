"""The one system prompt and the one chat-formatting function.

Training (finetune), generation of datasets, query and evaluation all build
their prompts here, so a model is always asked a question exactly the way it
was trained to answer it. A fine-tuned model that never stops is almost always
a template mismatch between training and inference; sharing these functions
rules that out.
"""

from __future__ import annotations

from typing import Any, Sequence

# Short on purpose: every training example and every prompt carries it, and
# on CPU each token of it costs training and answering time.
SYSTEM_PROMPT = "Réponds brièvement avec la valeur exacte de l'inventaire, sinon « Je ne sais pas »."

# Between the retrieved chunks and the question in a user turn.
QUESTION_MARK = "\n\nQuestion : "

# What a system answers when the context or its training has no answer.
UNKNOWN_ANSWER = "Je ne sais pas"

# For base models that ship no chat template (ChatML, as SmolLM2 and Qwen use).
# It is saved with the adapter so inference formats exactly like training.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# A made-up sheet answered question by question, shown before the real question
# to a base model that was never trained on this prompt (the rag system): it
# sees how a question maps to a line of the sheet and when to say it does not
# know. Fine-tuned adapters learnt that from their training set instead, so
# they never get it (it would only cost prompt tokens). Each answer is the
# whole line, label first: naming the field, then copying what follows that
# label in the sheet, is easier for the untrained model than finding the value
# at once; strip_field_label takes the label off again. Measured: rag 4.7 %
# (no example) -> 17.5 % (values only) -> 22.2 % (lines) correct on the
# hand-written set, 14.3 -> 27.9 % on 140 generated questions (docs/quality.md).
WORKED_EXAMPLE_SHEET = """Nom : ORBIS
Nom complet : Outil de Réservation des Bâtiments et Salles
Statut : En production
Hébergement : Datacenter Nantes-Est
Technologie principale : PHP / Symfony
Description : ORBIS permet aux agents de réserver des salles de réunion et des véhicules de service.
MOA : Direction des Moyens Généraux
Contacts : Julie Martin (julie.martin@exemple.fr)
Date de mise en service : 03/05/2016
Site web : https://orbis.exemple.fr"""
WORKED_EXAMPLE_TURNS = (
    ("Quel est le statut de ORBIS ?", "Statut : En production"),
    ("qui contacter pour orbis", "Contacts : Julie Martin (julie.martin@exemple.fr)"),
    ("ORBIS a été mis en service quand ?", "Date de mise en service : 03/05/2016"),
    # A field the sheet lacks: narrowed to it, the sheet is empty (focus.py).
    ("Quelle est la portée géographique de ORBIS ?", UNKNOWN_ANSWER),
    ("c'est développé avec quelle techno ?", "Technologie principale : PHP / Symfony"),
)

# Between a field's label and its value on a line of a sheet ("Statut : En production").
FIELD_SEPARATOR = " : "


def worked_example(focus_schema: str = "") -> list[dict]:
    """The worked example as user/assistant turns (no system prompt). With a
    focus schema every question comes with the sheet narrowed to its field,
    as the real question does (focus.py): rag 73.7 -> 79.5 % against the
    whole sheet once (docs/quality.md, 16th session)."""
    if focus_schema:
        from dyag_mlops.focus import field_router

        router = field_router(focus_schema)
        turns = []
        for question, answer in WORKED_EXAMPLE_TURNS:
            # The very narrowing a real question's sheet gets (focus.narrow_hits).
            _, context = router.focus(WORKED_EXAMPLE_SHEET, question, "ORBIS")
            turns += [{"role": "user", "content": user_content(question, [context])}, {"role": "assistant", "content": answer}]
        return turns
    (first_question, first_answer), *later = WORKED_EXAMPLE_TURNS
    turns = [
        {"role": "user", "content": user_content(first_question, [WORKED_EXAMPLE_SHEET])},
        {"role": "assistant", "content": first_answer},
    ]
    for question, answer in later:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def strip_field_label(answer: str, chunks: Sequence[str]) -> str:
    """The value of an answer written as a whole line of a chunk ("Statut : En
    production" -> "En production"); any other answer unchanged. Only a label
    that begins a line of one of the chunks is taken off, so a value that
    itself holds " : " stays whole."""
    label, separator, value = answer.partition(FIELD_SEPARATOR)
    if not separator or not value.strip():
        return answer
    if any(line.startswith(label + FIELD_SEPARATOR) for chunk in chunks for line in chunk.splitlines()):
        return value.strip()
    return answer


def user_content(question: str, context: Sequence[str] | None = None) -> str:
    """The user turn: the question, preceded by retrieved chunks when there are some."""
    if not context:
        return question
    blocks = "\n\n".join(f"[{i}] {chunk.strip()}" for i, chunk in enumerate(context, start=1))
    return f"Contexte :\n{blocks}{QUESTION_MARK}{question}"


def build_messages(
    question: str,
    context: Sequence[str] | None = None,
    answer: str | None = None,
    *,
    with_worked_example: bool = False,
    focus_schema: str = "",
) -> list[dict]:
    """System + user (+ assistant) messages for one question; with
    `with_worked_example` (and a context), the worked example's turns come
    between the system prompt and the question, narrowed like the question's
    context when a `focus_schema` narrows it."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if with_worked_example and context:
        messages += worked_example(focus_schema)
    messages.append({"role": "user", "content": user_content(question, context)})
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


def split_messages(messages: Sequence[dict]) -> tuple[str, str]:
    """(question, expected answer) of a chat example: last user turn, last assistant turn."""
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    answer = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), "")
    return question, answer
