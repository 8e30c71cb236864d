"""Core: the RiFT steps in plain PyTorch / numpy (data, corruptions, models, attacks, evaluate, mrc, finetune,
interpolate, selection, adversarial training). Imports only the core itself; never Ray, Optuna or MLflow."""
