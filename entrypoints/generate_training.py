"""MLproject entry point `generate_training`:

    mlflow run . -e generate_training --env-manager local -P name=value ...

Parameters and defaults: dyag_mlops.config.GenerateConfig (MLproject mirrors it).
"""

from dyag_mlops.config import GenerateConfig
from dyag_mlops.entry import run_entrypoint
from dyag_mlops.train import generate

if __name__ == "__main__":
    run_entrypoint("generate_training", GenerateConfig, lambda config, tracker: generate.run(config, tracker))
