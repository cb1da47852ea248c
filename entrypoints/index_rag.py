"""MLproject entry point `index_rag`:

    mlflow run . -e index_rag --env-manager local -P name=value ...

Parameters and defaults: dyag_mlops.config.IndexConfig (MLproject mirrors it).
"""

from dyag_mlops.config import IndexConfig
from dyag_mlops.entry import run_entrypoint
from dyag_mlops.retrieval import rag

if __name__ == "__main__":
    run_entrypoint("index_rag", IndexConfig, lambda config, tracker: rag.run(config, tracker))
