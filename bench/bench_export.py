"""An exported model is the same model: adapter vs merged vs GGUF, on an eval set.

    python bench/bench_export.py --model runs:/RUN_ID/adapter [--index DIR] [--eval-file FILE] [--gguf q8_0]

Exports MODEL (`dyag export --gguf TYPE` into a temporary folder), then asks
the eval set's questions, greedy, three ways: the base model with the
adapter, the merged safetensors model, and the GGUF file read back by
transformers; closed-book (the `finetuned` system) and, with `--index`,
reading the retrieved sheet (the `hybrid` system, and the same prompt on the
merged weights). Where llama-cpp-python is installed, the GGUF file also
answers the same prompts through llama.cpp (greedy, same token budget; not
the grounded ones: llama.cpp has no span-constrained decoding). Prints `correct` for each and how many answers are identical
to the adapter's, and the export's time and sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyag_mlops.config import ExportConfig  # noqa: E402
from dyag_mlops.data.evalset import demo_eval_path, load_eval_set  # noqa: E402
from dyag_mlops.evaluation.evaluate import score_answers  # noqa: E402
from dyag_mlops.systems import export  # noqa: E402


def answers(predictor, items) -> tuple[list, float]:
    questions = [i.question for i in items]
    out = []
    for start in range(0, len(questions), 32):
        out += predictor.answer(questions[start : start + 32])
    correct = sum(r["correct"] for r in score_answers(items, out)) / len(items)
    return [a.text for a in out], correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="adapter: directory, runs:/ or models:/ URI")
    parser.add_argument("--eval-file", default=str(demo_eval_path("test")))
    parser.add_argument("--gguf", default="q8_0", choices=["q8_0", "f16"])
    parser.add_argument("--index", default="", help="RAG index: also compare with the retrieved sheet (hybrid)")
    args = parser.parse_args()

    from dyag_mlops.systems.predictor import load_predictor

    items = load_eval_set(args.eval_file)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        began = time.perf_counter()
        result = export.run(ExportConfig(model=args.model, output=str(out), gguf=args.gguf, ollama=True))
        seconds = time.perf_counter() - began
        sizes = {p.name: p.stat().st_size / 1e6 for p in out.iterdir() if p.suffix in (".safetensors", ".gguf")}
        print(f"export: {seconds:.1f} s; " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(sizes.items())))
        schema = load_predictor("finetuned", model=args.model).schema_name
        gguf = str(out / f"model-{args.gguf}.gguf")
        setups = {"closed-book": ("finetuned", {}, "base", {})}
        if args.index:  # hybrid: the adapter reading the sheet; rag without worked example: the same prompt
            for grounded in (True, False):
                reading = {"index": args.index, "grounded": grounded, "focus": True}
                setups["hybrid" if grounded else "hybrid free"] = ("hybrid", reading, "rag", {**reading, "worked_example": False})
        for setup, (adapted, adapted_kw, plain, plain_kw) in setups.items():
            runs = {
                "adapter": lambda: load_predictor(adapted, model=args.model, precision="fp32", **adapted_kw),
                "merged": lambda: load_predictor(plain, base_model=str(out), schema=schema, precision="fp32", **plain_kw),
                f"gguf {args.gguf}": lambda: load_predictor(plain, base_model=gguf, schema=schema, precision="fp32", **plain_kw),
            }
            reference = None
            for name, build in runs.items():
                texts, correct = answers(build(), items)
                reference = reference or texts
                same = sum(a == b for a, b in zip(texts, reference))
                print(f"{setup:<12} {name:<10} correct {correct:6.1%}   answers identical to the adapter's: {same}/{len(items)}")
            if setup != "hybrid":  # llama.cpp has no grounded (span-constrained) decoding
                llama_cpp_answers(setup, gguf, runs["merged"](), items, reference)
        print(f"base model: {result.base_model}; eval set: {args.eval_file} ({len(items)} questions)")


def llama_cpp_answers(setup: str, gguf: str, predictor, items, reference: list[str]) -> None:
    """The predictor's prompts answered by llama.cpp itself, if installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print(f"{setup:<12} llama.cpp  (llama-cpp-python not installed: skipped)")
        return
    from dyag_mlops.evaluation.evaluate import score_answers
    from dyag_mlops.systems.predictor import Answer
    from dyag_mlops.systems.prompts import render_prompt

    llm = Llama(model_path=gguf, n_ctx=2048, verbose=False, seed=0)
    messages, _ = predictor.messages_for([i.question for i in items])
    texts = []
    for turns in messages:
        ids = llm.tokenize(render_prompt(predictor.tokenizer, turns).encode(), add_bos=False, special=True)
        out = llm(ids, max_tokens=predictor.max_new_tokens, temperature=0.0, top_k=1, stop=[predictor.tokenizer.eos_token])
        texts.append(out["choices"][0]["text"].strip())
    correct = sum(r["correct"] for r in score_answers(items, [Answer(i.question, t, 0.0, 0) for i, t in zip(items, texts)])) / len(items)
    same = sum(a == b for a, b in zip(texts, reference))
    print(f"{setup:<12} {'llama.cpp':<10} correct {correct:6.1%}   answers identical to the adapter's: {same}/{len(items)}")


if __name__ == "__main__":
    main()
