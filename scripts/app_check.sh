#!/usr/bin/env bash
# The web app end to end in headless Chromium (tests/test_app.py): a
# tiny-model pipeline, then the page loaded, a question of the eval set asked
# to two candidates, both answers read, the comparison tab opened. Installs
# Debian's chromium and the playwright client if missing. (The screenshot of
# the app on a real pipeline comes from scripts/ui_check.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/browser_setup.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_app.py -q -rs
