"""fairtune: fairness-aware fine-tuning on the Hugging Face Trainer."""
