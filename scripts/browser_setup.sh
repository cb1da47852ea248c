# Sourced by the scripts that drive a headless browser: Debian's chromium and
# the playwright client in .venv (it drives that browser; it downloads none).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null
  else echo "Error: chromium is not installed: sudo apt-get install chromium" >&2; exit 2; fi
fi
.venv/bin/python -c "import playwright" 2>/dev/null || .venv/bin/pip install -q "playwright==1.65.2"
