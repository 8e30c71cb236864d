"""Core: RiFT in plain PyTorch. The method's steps sit here (mrc, finetune, interpolate, selection,
adversarial_training); what they stand on lives below: data/, models/, robustness/. Imports only the core itself and
the leaf rift_sweep.names; never Ray, Optuna or MLflow."""
