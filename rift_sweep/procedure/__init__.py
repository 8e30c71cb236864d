"""Procedure: the RiFT steps driven by a config in one process (the Experiment bundle, the paper's procedure,
train-at, the fine-tune cache, the printed tables and pictures). No Ray, Optuna or MLflow."""
