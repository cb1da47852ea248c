"""dyag-mlops: build small LLMs that answer questions about a corpus, by LoRA
fine-tuning, RAG or both, and decide with evidence which is best (MLflow-tracked).

Nothing heavy is imported here so that `dyag --help` stays instant.
"""

__version__ = "0.1.0"
