"""Shared fixtures: a tiny random Llama with an in-process BPE tokenizer (no
Hub), a session-wide sqlite tracking store, HF_HUB_OFFLINE=1."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_RUN_ID", None)


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory):
    """Every test logs into one throwaway sqlite store, never the user's."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "dyag-tests"
    yield uri


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-16 Llama and a BPE tokenizer trained in-process on the
    demo corpus, with a ChatML chat template; saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dyag_mlops.data.corpus import load_corpus
    from dyag_mlops.data.inventory import cached_schema
    from dyag_mlops.systems.prompts import FALLBACK_CHAT_TEMPLATE

    out = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # (Byte-level: any text, English included, is tokenised; the vocabulary
    # is the demo corpus's, and the memorisation test depends on it.)
    texts = [c.content for c in load_corpus()] + [cached_schema("fr").system_prompt, "system user assistant Question Contexte"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        # LoRA leaves the (tied) embeddings frozen: with the default 0.02 init
        # the logits could never move far from uniform, and nothing is learnt.
        initializer_range=0.5,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text("tiny random test model\n")
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# Two invented applications in the layouts of dyag's original inventory (its README).
SAMPLES = Path(__file__).resolve().parent / "samples" / "dyag-original-format"


@functools.lru_cache(maxsize=1)
def demo_profile():
    """The corpus profile of the bundled demo corpus (French schema), built once."""
    from dyag_mlops.data.corpus import load_corpus
    from dyag_mlops.data.inventory import build_profile, documents

    return build_profile(documents(load_corpus()), "fr")


class FixedRetriever:
    """A retriever stand-in: the same chunk(s) for any question, with the
    demo corpus's profile, schema and field router (what predictor.Predictor
    reads from a rag.Retriever)."""

    ranking = "lexical"

    def __init__(self, *hits, profile=None):
        from dyag_mlops.data.inventory import cached_schema

        self.hits = list(hits)
        self.profile = profile or demo_profile()
        self.schema = cached_schema(self.profile.schema)

    @property
    def router(self):
        from dyag_mlops.retrieval.rag import field_router

        return field_router(self.profile, self.schema)

    def retrieve(self, questions, top_k=1, doc_filter=None):
        return [list(self.hits[:top_k]) for _ in questions]

    def spelled(self, question):
        return question


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory) -> str:
    """An index of the bundled demo corpus, built once; tests only read it."""
    from dyag_mlops.config import IndexConfig
    from dyag_mlops.retrieval import rag

    index = str(tmp_path_factory.mktemp("demo-index") / "index")
    rag.run(IndexConfig(index=index))
    return index


def demo_sheets() -> dict[str, str]:
    """doc id -> the sheet the demo index stores for it."""
    from dyag_mlops.data.corpus import load_corpus
    from dyag_mlops.data.inventory import documents, render_sheet

    return {d.doc_id: render_sheet(d, demo_profile().name_label) for d in documents(load_corpus())}
