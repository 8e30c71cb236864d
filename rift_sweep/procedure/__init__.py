"""Procedure: the RiFT steps driven by a config in one process (the Experiment bundle, the paper's procedure,
train-at, the fine-tune cache, the records every layer above reads). No Ray, Optuna or MLflow."""
