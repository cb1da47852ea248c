"""Training an adapter on the corpus: the questions a field is asked with,
the generated chat datasets, and LoRA fine-tuning."""
