#!/usr/bin/env bash
# Packs what a GPU check on the lent device machine needs into .devsite/
# (git-ignored; ~27 MB, under the 64 MiB a device call may carry):
#   site.tar.xz  the Python packages the device image lacks (mlflow-skinny,
#                trl, datasets, bitsandbytes with only its CUDA 13 libraries, ...),
#                as cp312 wheels unpacked; the image has torch, transformers,
#                peft, accelerate, sentence-transformers
#   smol/        SmolLM2-135M's config and tokenizer (its weights do not fit:
#                the check trains a model of the same shape from random weights)
#   minilm/      MiniLM's config and tokenizer (random weights made there)
#   data/        the pipeline's training set (run scripts/main.sh first)
# Then, with the device tool: run `bash scripts/device/gpu_check.sh`, carry [".devsite"].
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
grep -qx "/.devsite/" .git/info/exclude 2>/dev/null || echo "/.devsite/" >> .git/info/exclude
rm -rf .devsite && mkdir -p .devsite/{wheels,site,smol,minilm,data}
version() { $PY -m pip show "$1" 2>/dev/null | awk '/^Version/{print $2}' || true; }
specs=()
for name in mlflow-skinny mlflow-tracing trl datasets dill multiprocess bitsandbytes orjson rank-bm25 gguf \
    sqlalchemy alembic mako cryptography cffi pycparser cachetools databricks-sdk google-auth pyasn1-modules rsa \
    pyasn1 fastapi gitpython gitdb smmap importlib-metadata opentelemetry-api opentelemetry-proto opentelemetry-sdk \
    opentelemetry-semantic-conventions pydantic pydantic-core annotated-types typing-inspection python-dotenv \
    sqlparse starlette uvicorn nltk; do
  v=$(version "$name"); specs+=("$name${v:+==$v}")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .devsite/wheels "${specs[@]}"
for wheel in .devsite/wheels/*.whl; do (cd .devsite/site && unzip -q -o "../../$wheel"); done
# bitsandbytes ships one library per CUDA version (129 MB); the image has CUDA 13.
find .devsite/site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*_cpu.so' -delete
site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp -r "$site/rouge_score" .devsite/site/  # sdist only on PyPI; pure Python
tar -C .devsite/site -cJf .devsite/site.tar.xz . && rm -rf .devsite/site .devsite/wheels
smol=$(HF_HUB_OFFLINE=1 $PY -c "from dyag_mlops.systems.models import resolve; print(resolve('smollm2:135m'))")
cp "$smol"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .devsite/smol/
minilm=$($PY -c "from dyag_mlops.retrieval.rag import resolve_embedding_model; print(resolve_embedding_model(''))")
(cd "$minilm" && tar cf - --exclude=model.safetensors --exclude=README.md --exclude=.gitattributes .) | tar -C .devsite/minilm -xf -
cp outputs/pipeline/data/dataset_train.jsonl .devsite/data/
du -sh .devsite
