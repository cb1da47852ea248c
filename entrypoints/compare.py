"""MLproject entry point `compare`:

    mlflow run . -e compare --env-manager local -P name=value ...

Parameters and defaults: dyag_mlops.config.CompareConfig (MLproject mirrors it).
"""

from dyag_mlops.config import CompareConfig
from dyag_mlops.entry import run_entrypoint
from dyag_mlops.evaluation import compare

if __name__ == "__main__":
    run_entrypoint("compare", CompareConfig, lambda config, tracker: compare.run(config, tracker))
