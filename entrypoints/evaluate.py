"""MLproject entry point `evaluate`:

    mlflow run . -e evaluate --env-manager local -P name=value ...

Parameters and defaults: dyag_mlops.config.EvaluateConfig (MLproject mirrors it).
"""

from dyag_mlops.config import EvaluateConfig
from dyag_mlops.entry import run_entrypoint
from dyag_mlops.evaluation import evaluate

if __name__ == "__main__":
    run_entrypoint("evaluate", EvaluateConfig, lambda config, tracker: evaluate.run(config, tracker))
