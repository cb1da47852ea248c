"""MLproject entry point `export`:

    mlflow run . -e export --env-manager local -P model=models:/dyag-qa@champion -P gguf=q8_0 -P ollama=true

Parameters and defaults: dyag_mlops.config.ExportConfig (MLproject mirrors it).
"""

from dyag_mlops.config import ExportConfig
from dyag_mlops.entry import run_entrypoint
from dyag_mlops.systems import export

if __name__ == "__main__":
    run_entrypoint("export", ExportConfig, lambda config, tracker: export.run(config, tracker))
