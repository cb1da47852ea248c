import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dyag_mlops.config import STAGE_CONFIGS, FinetuneConfig, GenerateConfig, from_strings

ROOT = Path(__file__).resolve().parents[1]


def test_every_mlproject_parameter_is_a_config_field_with_the_same_default():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert set(project["entry_points"]) == set(STAGE_CONFIGS)
    for entry_point, spec in project["entry_points"].items():
        fields = {f.name: f.default for f in dataclasses.fields(STAGE_CONFIGS[entry_point])}
        assert set(spec["parameters"]) == set(fields), entry_point
        for name, param in spec["parameters"].items():
            default = fields[name]
            if isinstance(default, bool):
                assert param["default"] == ("true" if default else "false"), (entry_point, name)
            else:
                assert param["default"] == default, (entry_point, name)
            assert f"{{{name}}}" in spec["command"], (entry_point, name)


def test_from_strings_converts_types_and_rejects_unknown_names():
    config = from_strings(FinetuneConfig, {"lr": "2e-4", "epochs": "1", "dora": "true", "batch_size": "4.0"})
    assert config.lr == 2e-4 and config.dora is True and config.batch_size == 4
    with pytest.raises(ValueError, match="unknown parameter"):
        from_strings(GenerateConfig, {"nope": "1"})
    with pytest.raises(ValueError, match="expected true or false"):
        from_strings(GenerateConfig, {"split": "maybe"})


def test_config_validates_itself():
    with pytest.raises(ValueError, match="--method"):
        GenerateConfig(method="magic")
    with pytest.raises(ValueError, match="--quantize"):
        FinetuneConfig(quantize="8bit")


def test_cli_help_imports_no_heavy_library():
    code = "import sys, dyag_mlops.cli; heavy = {'torch', 'transformers', 'mlflow', 'chromadb'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dyag_models_lists_shortcuts():
    from click.testing import CliRunner

    from dyag_mlops.cli import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for shortcut in ("smollm2:135m", "qwen2.5:1.5b", "tinyllama", "llama3.2:1b", "llama3.1:8b", "phi3", "qwen2.5:0.5b"):
        assert shortcut in result.output
    assert "gated" in result.output


def test_model_resolution_errors_name_the_way_out(tmp_path, monkeypatch):
    from dyag_mlops.errors import DyagError
    from dyag_mlops.systems.models import resolve

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(DyagError, match="known:"):
        resolve("mistral:7b")
    with pytest.raises(DyagError, match="gated.*HF_TOKEN"):
        resolve("llama3.2:1b")
    with pytest.raises(DyagError, match="no such model directory"):
        resolve(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DyagError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(DyagError, match="missing.gguf: no such GGUF file"):
        resolve(str(tmp_path / "missing.gguf"))
    monkeypatch.setenv("DYAG_HOME", str(tmp_path / "home"))
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(DyagError, match="notes.gguf: cannot be read as a GGUF model"):
        resolve(str(tmp_path / "notes.gguf"))
    assert not list((tmp_path / "home" / "models").iterdir())  # nothing half-built left behind


def test_secrets_never_become_params():
    from dyag_mlops.tracking import config_params

    @dataclasses.dataclass(frozen=True)
    class WithSecret:
        api_key: str = "sk-123"
        hf_token: str = "hf_abc"
        llm_api_key_env: str = "OPENAI_API_KEY"

    params = config_params(WithSecret())
    assert "api_key" not in params and "hf_token" not in params
    assert params["llm_api_key_env"] == "OPENAI_API_KEY"
