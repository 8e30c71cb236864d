"""Orchestration: Ray actors for stage 1, Tune + Optuna for the sweep, MLflow tracking, resources, the front.
Moves weights and results between procedure calls; holds no tensor math."""
