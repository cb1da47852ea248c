"""The four systems that answer (base, finetuned, rag, hybrid): models and
adapters, prompts, grounded decoding, the predictor that logs as an MLflow
model, and its export for serving."""
