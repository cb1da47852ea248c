"""MLproject entry point `finetune`:

    mlflow run . -e finetune --env-manager local -P name=value ...

Parameters and defaults: dyag_mlops.config.FinetuneConfig (MLproject mirrors it).
"""

from dyag_mlops.config import FinetuneConfig
from dyag_mlops.entry import run_entrypoint
from dyag_mlops.train import finetune

if __name__ == "__main__":
    run_entrypoint("finetune", FinetuneConfig, lambda config, tracker: finetune.run(config, tracker))
