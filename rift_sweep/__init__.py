"""rift-sweep: RiFT (Robust Critical Fine-Tuning) as a distributed hyperparameter sweep.

The core modules (data, corruptions, models, attacks, evaluate, mrc, finetune,
interpolate, selection, adversarial_training, rift) are plain PyTorch and never import
Ray or MLflow; orchestration (mrc_pool, sweep, tracking) builds on them.
"""

__version__ = "0.1.0"
