"""The package's import layers (pyproject.toml, [tool.importlinter]): a
module imports only from the layers below it, so no import cycle can come back."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_modules_import_only_from_the_layers_below(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_a_module_importing_from_a_layer_above_breaks_the_contract(tmp_path, monkeypatch):
    import shutil
    import sys

    from importlinter.cli import lint_imports

    package = tmp_path / "dyag_mlops"
    shutil.copytree(ROOT / "dyag_mlops", package, ignore=shutil.ignore_patterns("__pycache__", "resources"))
    (package / "data" / "text.py").write_text((package / "data" / "text.py").read_text() + "\nfrom dyag_mlops.retrieval import rag  # noqa\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "dyag_mlops" or m.startswith("dyag_mlops.")]:
        monkeypatch.delitem(sys.modules, name)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 1
