"""MLproject entry point `main`:

    mlflow run . -e main --env-manager local -P name=value ...

Parameters and defaults: dyag_mlops.config.PipelineConfig (MLproject mirrors it).
"""

from dyag_mlops import pipeline
from dyag_mlops.config import PipelineConfig
from dyag_mlops.entry import run_entrypoint

if __name__ == "__main__":
    run_entrypoint("main", PipelineConfig, lambda config, tracker: pipeline.run(config))
