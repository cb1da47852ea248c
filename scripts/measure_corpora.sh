#!/usr/bin/env bash
# The figures of docs/quality.md: the full pipeline (README's first command)
# on each evaluation corpus, reported on its test half. Extra arguments go to
# every `mlflow run` (e.g. -P closed_book_epochs=2). Tracked in ./mlflow.db.
#   bash scripts/measure_corpora.sh [demo|debian|pydist|fresh ...]
# (fresh: dyag's layout, a corpus no rule was written with in view; not in the default three)
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
[ ${#names[@]} -gt 0 ] && [[ "${names[0]}" != -* ]] || names=(demo debian pydist)
extra=()
for arg in "$@"; do [[ "$arg" == -* || ${#extra[@]} -gt 0 ]] && extra+=("$arg"); done
for name in "${names[@]}"; do
  [[ "$name" == -* ]] && break
  case "$name" in
    demo)   corpus="";                         eval_file="dyag_mlops/resources/demo_eval_test.jsonl" ;;
    debian) corpus="corpora/debian/corpus.jsonl"; eval_file="corpora/debian/eval_test.jsonl" ;;
    pydist) corpus="corpora/pydist/corpus_md";    eval_file="corpora/pydist/eval_test.jsonl" ;;
    fresh)  corpus="corpora/dyag-fresh/corpus.jsonl"; eval_file="corpora/dyag-fresh/eval_test.jsonl" ;;
    *) echo "unknown corpus $name (demo, debian, pydist, fresh)" >&2; exit 2 ;;
  esac
  echo "== $name"
  bash scripts/main.sh -P corpus="$corpus" -P eval_file="$eval_file" -P workdir="outputs/measure-$name" \
    -P registered_model="dyag-qa-$name" "${extra[@]}"
done
