"""Architectures (with the module names of published checkpoints), the RobustBench table, user models, checkpoint I/O."""
